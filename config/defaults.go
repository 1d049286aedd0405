package config

import (
	"net/url"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Exchange Online's sending limits per mailbox, the defaults of Limits.
const (
	defaultConnections          = 3      // a 4th concurrent SMTP AUTH session gets 432 4.3.2
	defaultMessagesPerMinute    = 30     // message rate limit
	defaultRecipientsPerDay     = 10_000 // recipient rate limit (24 hours)
	defaultRecipientsPerMessage = 500    // recipient limit per message
	// defaultMaxWait is short of the 5 minutes an SMTP client waits for
	// the reply to MAIL (RFC 5321 §4.5.3.2.2), so the app hears 451 4.7.0
	// from the relay rather than timing out itself.
	defaultMaxWait = 2 * time.Minute

	defaultMaxAge     = 5 * day // Postfix's maximal_queue_lifetime
	defaultKeepFailed = 7 * day
)

// DefaultLimits returns the limits used for every key the file leaves out:
// Exchange Online's (3 connections, 30 messages a minute, 10,000 recipients
// a day, 500 recipients a message) and a wait of at most 2 minutes.
func DefaultLimits() Limits {
	return Limits{
		Connections:          defaultConnections,
		MessagesPerMinute:    defaultMessagesPerMinute,
		RecipientsPerDay:     defaultRecipientsPerDay,
		RecipientsPerMessage: defaultRecipientsPerMessage,
		MaxWait:              defaultMaxWait,
	}
}

// DefaultQueue returns the queue settings used for every key the file
// leaves out: retry for 5 days, keep failed messages for 7.
func DefaultQueue() Queue {
	return Queue{MaxAge: defaultMaxAge, KeepFailed: defaultKeepFailed}
}

// newConfig is the Config the file is decoded into. The numbers are filled
// in before decoding, not after as the strings are, because their zero is a
// value a user may write (max_wait: 0, keep_failed: 0) and must keep, or
// must hear is out of range (connections: 0); an absent or null key leaves
// the default.
func newConfig(file string) *Config {
	return &Config{File: file, Limits: DefaultLimits(), Queue: DefaultQueue()}
}

// applyDefaults fills every key the file left out; with newConfig it is the
// one place that knows the defaults. It runs before validation, so
// validation sees the values the daemon will use. Providers of an unknown
// type or cloud get no endpoint defaults (validation reports the type or
// cloud).
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
	setDefault(&c.Listen.POP3.Addr, "127.0.0.1:1110")
	setDefault(&c.Listen.POP3.TLS, TLSNone)
	setDefault(&c.Listen.Admin.Addr, "127.0.0.1:8025")

	for name, p := range c.Providers {
		p.Name = name
		providerDefaults(p)
	}
	for _, a := range c.Accounts {
		a.ProviderRef = c.Providers[a.Provider]
		switch {
		case len(a.AllowedFrom) > 0:
		case a.DomainWide() && len(a.Mailboxes) > 0:
			a.AllowedFrom = slices.Clone(a.Mailboxes)
		case a.DomainWide():
			a.AllowedFrom = []string{a.Mailbox}
		case isAddress(a.Mailbox):
			a.AllowedFrom = []string{a.Mailbox}
		}
		setDefault(&a.SendAs, SendAsMailbox)
		setDefault(&a.Delivery, DeliveryDirect)
		setDefault(&a.Upstream, UpstreamSMTP)
		a.EffectiveLimits = c.Limits.with(a.Limits)
	}
}

// with returns l with the keys o sets replaced.
func (l Limits) with(o *LimitsOverride) Limits {
	if o == nil {
		return l
	}
	set := func(dst *int, src *int) {
		if src != nil {
			*dst = *src
		}
	}
	set(&l.Connections, o.Connections)
	set(&l.MessagesPerMinute, o.MessagesPerMinute)
	set(&l.RecipientsPerDay, o.RecipientsPerDay)
	set(&l.RecipientsPerMessage, o.RecipientsPerMessage)
	if o.MaxWait != nil {
		l.MaxWait = *o.MaxWait
	}
	return l
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
			pop3:      "pop.gmail.com:995",
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
	setDefault(&p.POP3.Addr, d.pop3)
	setDefault(&p.POP3.TLS, TLSImplicit)
	setDefault(&p.Graph.URL, d.graph)
	if len(p.Graph.Scopes) == 0 && p.Graph.URL != "" {
		// The scopes name Graph's resource, not where requests go: a
		// graph.url through a proxy keeps the cloud's; one of Graph's
		// own hosts (DoD's) is its own resource.
		root := d.graph
		if graphHosts[strings.TrimRight(p.Graph.URL, "/")] || root == "" {
			root = p.Graph.URL
		}
		p.Graph.Scopes = graphScopes(root, p.Grant == GrantClientCredentials)
	}
}

// graphHosts are the Microsoft Graph roots of the national clouds.
var graphHosts = map[string]bool{
	"https://graph.microsoft.com": true, "https://graph.microsoft.us": true,
	"https://dod-graph.microsoft.us": true, "https://microsoftgraph.chinacloudapi.cn": true,
}

// graphScopes are the scopes of Graph tokens for the Graph at root:
// app-only the .default of the application permissions (Mail.Send, and
// Mail.ReadWrite for drafts and attachments over 3 MB); delegated the same
// permissions by name, and offline_access.
func graphScopes(root string, appOnly bool) []string {
	root = strings.TrimRight(root, "/")
	if appOnly {
		return []string{root + "/.default"}
	}
	return []string{root + "/Mail.Send", root + "/Mail.ReadWrite", "offline_access"}
}

// preset is what a provider type (and cloud) implies.
type preset struct {
	token, authorize, device string
	scopes                   []string
	smtp, imap, pop3         string
	graph                    string // Microsoft Graph's root
}

// microsoft returns the endpoints of a Microsoft cloud. Delegated scopes in
// the global cloud name outlook.office.com, app-only ones
// outlook.office365.com (as Microsoft documents); the national clouds use
// one host for both. POP3 is port 995 of the IMAP host in every cloud
// (implicit TLS). Delegated grants ask for POP.AccessAsUser.All beside IMAP
// and SMTP; app-only grants get POP.AccessAsApp through .default, like
// IMAP.AccessAsApp, once it is consented in Entra. A refresh keeps the
// scopes of the sign-in (golang.org/x/oauth2 sends none), so a grant signed
// in before POP3 was a default gets POP only after the next sign-in.
func microsoft(cloud, tenant string, appOnly bool) (preset, bool) {
	var login, smtp, mailHost, scopeHost, graph string
	switch cloud {
	case CloudGlobal:
		login, smtp, mailHost, scopeHost = "login.microsoftonline.com", "smtp.office365.com:587", "outlook.office365.com", "outlook.office.com"
		graph = "https://graph.microsoft.com"
		if appOnly {
			scopeHost = "outlook.office365.com"
		}
	case CloudUSGov:
		// GCC High; DoD tenants set graph.url to https://dod-graph.microsoft.us.
		login, smtp, mailHost, scopeHost = "login.microsoftonline.us", "smtp.office365.us:587", "outlook.office365.us", "outlook.office365.us"
		graph = "https://graph.microsoft.us"
	case CloudChina:
		login, smtp, mailHost, scopeHost = "login.partner.microsoftonline.cn", "smtp.partner.outlook.cn:587", "partner.outlook.cn", "partner.outlook.cn"
		graph = "https://microsoftgraph.chinacloudapi.cn"
	default:
		return preset{}, false
	}
	base := "https://" + login + "/" + url.PathEscape(tenant) + "/oauth2/v2.0/"
	scopes := []string{"https://" + scopeHost + "/.default"}
	if !appOnly {
		scopes = []string{
			"https://" + scopeHost + "/IMAP.AccessAsUser.All",
			"https://" + scopeHost + "/POP.AccessAsUser.All",
			"https://" + scopeHost + "/SMTP.Send",
			"offline_access",
		}
	}
	return preset{
		token: base + "token", authorize: base + "authorize", device: base + "devicecode",
		scopes: scopes, smtp: smtp, imap: mailHost + ":993", pop3: mailHost + ":995", graph: graph,
	}, true
}

func setDefault(s *string, value string) {
	if *s == "" {
		*s = value
	}
}
