package config

import (
	"net/url"
	"runtime"
	"strings"
)

// applyDefaults fills every key the file left out; it is the one place that
// knows the defaults. It runs before validation, so validation sees the
// values the daemon will use. Providers of an unknown type or cloud get no
// endpoint defaults (validation reports the type or cloud).
func applyDefaults(c *Config, getenv func(string) (string, bool)) {
	if c.StateDir == "" {
		c.StateDir = defaultStateDir(runtime.GOOS, getenv)
	}
	setDefault(&c.Log.Level, "info")
	setDefault(&c.Log.Format, "text")
	setDefault(&c.Listen.SMTP.Addr, "127.0.0.1:2525")
	setDefault(&c.Listen.SMTP.TLS, TLSNone)
	setDefault(&c.Listen.IMAP.Addr, "127.0.0.1:1143")
	setDefault(&c.Listen.IMAP.TLS, TLSNone)
	setDefault(&c.Listen.Admin.Addr, "127.0.0.1:8025")

	for name, p := range c.Providers {
		p.Name = name
		providerDefaults(p)
	}
	for _, a := range c.Accounts {
		a.ProviderRef = c.Providers[a.Provider]
		if len(a.AllowedFrom) == 0 && isAddress(a.Mailbox) {
			a.AllowedFrom = []string{a.Mailbox}
		}
	}
}

// defaultStateDir is systemd's StateDirectory= when it is set (a
// colon-separated list), %ProgramData%\oauthrelay on Windows (where the
// service runs as LocalSystem), and /var/lib/oauthrelay elsewhere.
func defaultStateDir(goos string, getenv func(string) (string, bool)) string {
	if dir, ok := getenv("STATE_DIRECTORY"); ok && dir != "" {
		dir, _, _ = strings.Cut(dir, ":")
		return dir
	}
	if goos == "windows" {
		if pd, ok := getenv("ProgramData"); ok && pd != "" {
			return pd + `\oauthrelay`
		}
		return `C:\ProgramData\oauthrelay`
	}
	return "/var/lib/oauthrelay"
}

// providerDefaults fills grant, tenant, endpoints, scopes and upstream
// servers from the provider's type and cloud. Type generic gets none: there
// is nothing sensible to guess.
func providerDefaults(p *Provider) {
	if p.Grant == "" {
		p.Grant = GrantClientCredentials
		if p.Type == TypeGoogle {
			p.Grant = GrantAuthorizationCode // Gmail has no app-only grant
		}
	}
	var d preset
	switch p.Type {
	case TypeMicrosoft:
		setDefault(&p.Cloud, CloudGlobal)
		if p.Grant != GrantClientCredentials {
			// Any work or school account; app-only needs the real tenant.
			setDefault(&p.Tenant, "organizations")
		}
		var ok bool
		if d, ok = microsoft(p.Cloud, p.Tenant, p.Grant == GrantClientCredentials); !ok {
			return
		}
	case TypeGoogle:
		d = preset{
			token:     "https://oauth2.googleapis.com/token",
			authorize: "https://accounts.google.com/o/oauth2/v2/auth",
			device:    "https://oauth2.googleapis.com/device/code",
			scopes:    []string{"https://mail.google.com/"},
			smtp:      "smtp.gmail.com:587",
			imap:      "imap.gmail.com:993",
		}
	default:
		return
	}
	setDefault(&p.TokenURL, d.token)
	setDefault(&p.AuthorizeURL, d.authorize)
	setDefault(&p.DeviceURL, d.device)
	if len(p.Scopes) == 0 {
		p.Scopes = d.scopes
	}
	setDefault(&p.SMTP.Addr, d.smtp)
	setDefault(&p.SMTP.TLS, TLSStartTLS)
	setDefault(&p.IMAP.Addr, d.imap)
	setDefault(&p.IMAP.TLS, TLSImplicit)
}

// preset is what a provider type (and cloud) implies.
type preset struct {
	token, authorize, device string
	scopes                   []string
	smtp, imap               string
}

// microsoft returns the endpoints of a Microsoft cloud. Delegated scopes in
// the global cloud name outlook.office.com, app-only ones
// outlook.office365.com (as Microsoft documents); the national clouds use
// one host for both.
func microsoft(cloud, tenant string, appOnly bool) (preset, bool) {
	var login, smtp, imap, scopeHost string
	switch cloud {
	case CloudGlobal:
		login, smtp, imap, scopeHost = "login.microsoftonline.com", "smtp.office365.com:587", "outlook.office365.com:993", "outlook.office.com"
		if appOnly {
			scopeHost = "outlook.office365.com"
		}
	case CloudUSGov:
		login, smtp, imap, scopeHost = "login.microsoftonline.us", "smtp.office365.us:587", "outlook.office365.us:993", "outlook.office365.us"
	case CloudChina:
		login, smtp, imap, scopeHost = "login.partner.microsoftonline.cn", "smtp.partner.outlook.cn:587", "partner.outlook.cn:993", "partner.outlook.cn"
	default:
		return preset{}, false
	}
	base := "https://" + login + "/" + url.PathEscape(tenant) + "/oauth2/v2.0/"
	scopes := []string{"https://" + scopeHost + "/.default"}
	if !appOnly {
		scopes = []string{
			"https://" + scopeHost + "/IMAP.AccessAsUser.All",
			"https://" + scopeHost + "/SMTP.Send",
			"offline_access",
		}
	}
	return preset{
		token: base + "token", authorize: base + "authorize", device: base + "devicecode",
		scopes: scopes, smtp: smtp, imap: imap,
	}, true
}

func setDefault(s *string, value string) {
	if *s == "" {
		*s = value
	}
}
