package config

import (
	"crypto/tls"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// The ranges of the limits and queue keys. The upper bounds are far above
// what a provider allows (they catch a value with a digit too many, not a
// tenant's raised limit), except recipients_per_message, where Exchange
// allows 1 to 1,000.
const (
	maxConnections          = 100
	maxMessagesPerMinute    = 1_000_000
	maxRecipientsPerDay     = 1_000_000
	maxRecipientsPerMessage = 1000
	maxMaxWait              = time.Hour
	minMaxAge               = time.Hour
	maxMaxAge               = 30 * day
	maxKeepFailed           = 90 * day
)

// validate reports every problem of a decoded, defaulted Config. It fills
// the derived RelayNets and the accounts' normalised mailbox sets; it
// changes nothing else.
func validate(c *Config, r *report) {
	oneOf(r, "log.level", c.Log.Level, "log level", "debug", "info", "warn", "error")
	oneOf(r, "log.format", c.Log.Format, "log format", "text", "json")
	validateListener(r, "listen.smtp", &c.Listen.SMTP)
	validateListener(r, "listen.imap", &c.Listen.IMAP)
	validateListener(r, "listen.pop3", &c.Listen.POP3)
	validateAdmin(r, &c.Listen.Admin)
	validateLimits(r, "limits", limitsOverride(c.Limits))
	checkDuration(r, "queue.max_age", c.Queue.MaxAge, minMaxAge, maxMaxAge)
	checkDuration(r, "queue.keep_failed", c.Queue.KeepFailed, 0, maxKeepFailed)
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		validateProvider(r, "providers."+name, c.Providers[name])
	}
	if len(c.Accounts) == 0 {
		r.add("accounts", "at least one account is required")
	}
	names, usernames := map[string]string{}, map[string]string{}
	for i, a := range c.Accounts {
		path := fmt.Sprintf("accounts[%d]", i)
		validateAccount(r, path, a, c)
		if other, dup := names[a.Name]; dup && a.Name != "" {
			r.add(path+".name", "%q is also the name of %s", a.Name, other)
		}
		names[a.Name] = path
		lower := strings.ToLower(a.Username)
		if other, dup := usernames[lower]; dup && a.Username != "" {
			r.add(path+".username", "%q is also the username of %s (usernames ignore case)", a.Username, other)
		}
		usernames[lower] = path
	}
	validateLoginNames(r, c)
	validateCluster(r, &c.Cluster)
}

// oneOf checks an enumerated key; empty means it is required.
func oneOf(r *report, key, value, what string, have ...string) bool {
	if slices.Contains(have, value) {
		return true
	}
	list := strings.Join(have, ", ")
	if list == "" {
		list = "none"
	}
	if value == "" {
		r.add(key, "required (have: %s)", list)
	} else {
		r.add(key, "%q is not a %s (have: %s)", value, what, list)
	}
	return false
}

// validateLimits checks the keys o sets, at path (limits, or an account's
// limits). An account's override is checked only for what it sets, so a bad
// top-level value is reported once, where it is written.
func validateLimits(r *report, path string, o *LimitsOverride) {
	if o == nil {
		return
	}
	ints := []struct {
		key string
		v   *int
		max int
	}{
		{"connections", o.Connections, maxConnections},
		{"messages_per_minute", o.MessagesPerMinute, maxMessagesPerMinute},
		{"recipients_per_day", o.RecipientsPerDay, maxRecipientsPerDay},
		{"recipients_per_message", o.RecipientsPerMessage, maxRecipientsPerMessage},
	}
	for _, k := range ints {
		if k.v != nil && (*k.v < 1 || *k.v > k.max) {
			r.add(path+"."+k.key, "want 1 to %d, not %d", k.max, *k.v)
		}
	}
	if o.MaxWait != nil {
		checkDuration(r, path+".max_wait", *o.MaxWait, 0, maxMaxWait)
	}
}

// limitsOverride is l with every key set, for validateLimits.
func limitsOverride(l Limits) *LimitsOverride {
	return &LimitsOverride{&l.Connections, &l.MessagesPerMinute, &l.RecipientsPerDay, &l.RecipientsPerMessage, &l.MaxWait}
}

func checkDuration(r *report, key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		r.add(key, "want %s to %s, not %s", formatDuration(lo), formatDuration(hi), formatDuration(d))
	}
}

// formatDuration writes d as the file would: whole days as "5d", and no
// zero units ("1h", not "1h0m0s").
func formatDuration(d time.Duration) string {
	if d < 0 {
		return "-" + formatDuration(-d)
	}
	var b strings.Builder
	if days := d / day; days > 0 {
		fmt.Fprintf(&b, "%dd", days)
		d -= days * day
		if d == 0 {
			return b.String()
		}
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return b.String() + s
}

func validateListener(r *report, path string, l *Listener) {
	if l.Addr == AddrOff {
		return
	}
	host, err := splitAddr(l.Addr, 0)
	if err != nil {
		r.add(path+".addr", "%w", err)
	}
	if !oneOf(r, path+".tls", l.TLS, "listener tls mode", TLSNone, TLSStartTLS, TLSImplicit) {
		return
	}
	if l.TLS == TLSNone {
		if err == nil && !IsLoopbackHost(host) && !l.AllowInsecure {
			r.add(path+".addr", "%q is not a loopback address and tls is none: "+
				"set tls (starttls or implicit, with cert_file and key_file) or allow_insecure: true", l.Addr)
		}
		return
	}
	switch {
	case l.CertFile == "":
		r.add(path+".cert_file", "required for tls %s", l.TLS)
	case l.KeyFile == "":
		r.add(path+".key_file", "required for tls %s", l.TLS)
	default:
		if _, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile); err != nil {
			r.add(path+".cert_file", "cannot load with key_file: %w", err)
		}
	}
}

func validateAdmin(r *report, a *Admin) {
	if a.Addr == AddrOff {
		return
	}
	host, err := splitAddr(a.Addr, 0)
	if err != nil {
		r.add("listen.admin.addr", "%w", err)
	}
	switch {
	case err == nil && !IsLoopbackHost(host) && (a.Username == "" || a.PasswordHash == ""):
		r.add("listen.admin.addr", "%q is not a loopback address: username and password_hash are required", a.Addr)
	case a.Username != "" && a.PasswordHash == "":
		r.add("listen.admin.password_hash", "required with username")
	case a.Username == "" && a.PasswordHash != "":
		r.add("listen.admin.username", "required with password_hash")
	}
	if a.PasswordHash != "" {
		checkHash(r, "listen.admin.password_hash", a.PasswordHash)
	}
	switch {
	case a.CertFile == "" && a.KeyFile == "":
	case a.CertFile == "":
		r.add("listen.admin.cert_file", "required with key_file")
	case a.KeyFile == "":
		r.add("listen.admin.key_file", "required with cert_file")
	default:
		if _, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile); err != nil {
			r.add("listen.admin.cert_file", "cannot load with key_file: %w", err)
		}
	}
}

func checkHash(r *report, key, hash string) {
	if _, err := bcrypt.Cost([]byte(hash)); err != nil {
		r.add(key, "not a bcrypt hash (make one with `oauthrelay hash-password`): %w", err)
	}
}

func validateProvider(r *report, path string, p *Provider) {
	oneOf(r, path+".type", p.Type, "provider type", TypeMicrosoft, TypeGoogle, TypeGeneric)
	if p.ClientID == "" {
		r.add(path+".client_id", "required")
	}
	switch p.Type {
	case TypeMicrosoft:
		oneOf(r, path+".cloud", p.Cloud, "cloud", CloudGlobal, CloudUSGov, CloudChina)
		oneOf(r, path+".grant", p.Grant, "grant", GrantClientCredentials, GrantAuthorizationCode, GrantDeviceCode, GrantPassword)
		validateTenant(r, path, p)
	case TypeGoogle:
		oneOf(r, path+".grant", p.Grant, "grant Google offers for mail", GrantAuthorizationCode, GrantDeviceCode)
	default:
		oneOf(r, path+".grant", p.Grant, "grant", GrantClientCredentials, GrantAuthorizationCode, GrantDeviceCode, GrantPassword)
	}
	if p.Type != TypeMicrosoft {
		if p.Cloud != "" {
			r.add(path+".cloud", "only for type microsoft")
		}
		if p.Tenant != "" {
			r.add(path+".tenant", "only for type microsoft")
		}
	}
	validateCredential(r, path, p)

	checkURL(r, path+".token_url", p.TokenURL, p.Type == TypeGeneric)
	checkURL(r, path+".authorize_url", p.AuthorizeURL, p.Type == TypeGeneric && p.Grant == GrantAuthorizationCode)
	checkURL(r, path+".device_url", p.DeviceURL, p.Type == TypeGeneric && p.Grant == GrantDeviceCode)
	if p.RedirectURL != "" {
		if u, err := url.Parse(p.RedirectURL); err != nil || !u.IsAbs() || u.Host == "" {
			r.add(path+".redirect_url", "want an absolute URL, not %q", p.RedirectURL)
		}
	}
	if p.Type == TypeGeneric && p.SMTP.Addr == "" && p.IMAP.Addr == "" && p.POP3.Addr == "" {
		r.add(path+".smtp.addr", "required for type generic (smtp.addr, imap.addr or pop3.addr)")
	}
	validateUpstream(r, path+".smtp", p.SMTP)
	validateUpstream(r, path+".imap", p.IMAP)
	validateUpstream(r, path+".pop3", p.POP3)
	checkURL(r, path+".graph.url", p.Graph.URL, false)
	if p.CAFile != "" {
		if err := checkCAFile(p.CAFile); err != nil {
			r.add(path+".ca_file", "%w", err)
		}
	}
}

// validateTenant: app-only tokens are issued by one tenant, so the
// multi-tenant aliases that delegated sign-in accepts do not work there.
func validateTenant(r *report, path string, p *Provider) {
	key := path + ".tenant"
	switch {
	case p.Tenant == "":
		r.add(key, "required for grant client_credentials (the tenant id or a domain of the tenant)")
	case strings.Trim(strings.ToLower(p.Tenant), "abcdefghijklmnopqrstuvwxyz0123456789.-") != "":
		r.add(key, "%q is not a tenant id or domain", p.Tenant)
	case p.Grant == GrantClientCredentials && slices.Contains([]string{"organizations", "common", "consumers"}, p.Tenant):
		r.add(key, "%q does not work with grant client_credentials: give the tenant id or a domain of the tenant", p.Tenant)
	}
}

// validateCredential checks how the client authenticates: a secret or a
// certificate, never both; one of them for client credentials.
func validateCredential(r *report, path string, p *Provider) {
	hasCert := p.ClientCertificateFile != "" || p.ClientKeyFile != ""
	switch {
	case p.ClientSecret != "" && hasCert:
		r.add(path+".client_secret", "set client_secret or client_certificate_file and client_key_file, not both")
	case p.ClientSecret == "" && !hasCert && p.Grant == GrantClientCredentials:
		r.add(path+".client_secret", "required for grant client_credentials (or client_certificate_file and client_key_file)")
	}
	switch {
	case !hasCert:
	case p.ClientKeyFile == "":
		r.add(path+".client_key_file", "required with client_certificate_file")
	case p.ClientCertificateFile == "":
		r.add(path+".client_certificate_file", "required with client_key_file")
	default:
		if err := checkClientCert(p.ClientCertificateFile, p.ClientKeyFile); err != nil {
			r.add(path+".client_certificate_file", "%w", err)
		}
	}
}

// checkURL checks an endpoint: https, or http to a loopback host (the fake
// Microsoft 365 of the tests, a local proxy).
func checkURL(r *report, key, raw string, required bool) {
	if raw == "" {
		if required {
			r.add(key, "required for type generic")
		}
		return
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || !(u.Scheme == "https" || u.Scheme == "http" && IsLoopbackHost(u.Hostname())) {
		r.add(key, "want an https:// URL (http:// only to a loopback host), not %q", raw)
	}
}

// validateUpstream: TLS to the provider is mandatory except to a loopback
// host (a local tunnel or test server), where there is no wire to protect.
func validateUpstream(r *report, path string, u Upstream) {
	if u.Addr == "" {
		return
	}
	host, err := splitAddr(u.Addr, 1)
	if err == nil && host == "" {
		err = fmt.Errorf("want host:port, not %q", u.Addr)
	}
	if err != nil {
		r.add(path+".addr", "%w", err)
	}
	if oneOf(r, path+".tls", u.TLS, "tls mode for upstream servers", TLSStartTLS, TLSImplicit, TLSNone) &&
		u.TLS == TLSNone && err == nil && !IsLoopbackHost(host) {
		r.add(path+".tls", "none is allowed only to a loopback host, not %q", host)
	}
}

func validateAccount(r *report, path string, a *Account, c *Config) {
	switch {
	case a.Name == "":
		r.add(path+".name", "required")
	case strings.Trim(strings.ToLower(a.Name), "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" || a.Name[0] == '.':
		// The name is a file name in the token store and a log field.
		r.add(path+".name", "%q: use letters, digits, '.', '_' and '-' (not first '.')", a.Name)
	}
	if oneOf(r, path+".provider", a.Provider, "provider", slices.Sorted(maps.Keys(c.Providers))...) {
		validateGrantUse(r, path, a)
	}
	if oneOf(r, path+".delivery", a.Delivery, "delivery mode", DeliveryDirect, DeliveryQueue) &&
		a.Delivery == DeliveryQueue && a.PasswordPassthrough {
		r.add(path+".delivery", "queue is not possible with password_passthrough: "+
			"a queued message is delivered after the session that brought the password has ended")
	}
	validateUpstreamMode(r, path, a)
	validateLimits(r, path+".limits", a.Limits)
	validateMailboxes(r, path, a)
	switch {
	case a.DomainWide():
		if a.PasswordHash == "" && len(a.RelayFrom) == 0 {
			r.add(path+".password_hash", "required (apps log in with a mailbox address and this password), or relay_from")
		} else if a.PasswordHash != "" {
			checkHash(r, path+".password_hash", a.PasswordHash)
		}
	case a.Username == "" && len(a.RelayFrom) == 0:
		r.add(path+".username", "required (or relay_from, for an account that only relays)")
	case a.Username == "" && a.PasswordHash != "":
		r.add(path+".password_hash", "set, but username is not")
	case a.PasswordPassthrough && a.PasswordHash != "":
		r.add(path+".password_hash", "not used with password_passthrough: remove one")
	case a.Username != "" && !a.PasswordPassthrough && a.PasswordHash == "":
		r.add(path+".password_hash", "required (make one with `oauthrelay hash-password`)")
	case a.PasswordHash != "":
		checkHash(r, path+".password_hash", a.PasswordHash)
	}
	for i, pat := range a.AllowedFrom {
		if !isAllowedFrom(pat) {
			r.add(fmt.Sprintf("%s.allowed_from[%d]", path, i), `%q is not an address, "*@domain", "*" or "<>"`, pat)
		}
	}
	a.RelayNets = nil
	for i, s := range a.RelayFrom {
		p, err := netip.ParsePrefix(s)
		if ip, ipErr := netip.ParseAddr(s); ipErr == nil && ip.Zone() == "" {
			ip = ip.Unmap() // clients are matched unmapped
			p, err = ip.Prefix(ip.BitLen())
		}
		if err != nil {
			r.add(fmt.Sprintf("%s.relay_from[%d]", path, i), "%q is not an IP address or CIDR prefix", s)
			continue
		}
		a.RelayNets = append(a.RelayNets, p.Masked())
	}
}

// validateUpstreamMode checks upstream and what Graph needs: its URL, and
// credentials of the account's own (a passthrough password arrives with an
// SMTP session and is not Graph's).
func validateUpstreamMode(r *report, path string, a *Account) {
	if !oneOf(r, path+".upstream", a.Upstream, "sending path", UpstreamSMTP, UpstreamGraph, UpstreamAuto) || !a.SendsThroughGraph() {
		if a.SaveToSentItems != nil && a.Upstream == UpstreamSMTP {
			r.add(path+".save_to_sent_items", "only for upstream graph or auto (SMTP submission always saves to Sent Items)")
		}
		return
	}
	switch {
	case a.ProviderRef == nil:
	case a.ProviderRef.Graph.URL == "":
		r.add(path+".upstream", "%s needs Microsoft Graph: provider %s has no graph.url (set it, or use type microsoft)", a.Upstream, a.Provider)
	case a.PasswordPassthrough:
		r.add(path+".upstream", "%s is not possible with password_passthrough: Graph tokens are the account's own, not the app session's", a.Upstream)
	case a.DomainWide() || len(a.Mailboxes) > 0 || a.SendAs == SendAsSender:
		r.add(path+".upstream", "%s sends as the account's one mailbox: not with a domain-wide mailbox, mailboxes or send_as: sender (use one account per mailbox)", a.Upstream)
	}
}

// validateGrantUse checks the account's keys that depend on its provider's
// grant: the mailbox password belongs to the password (ROPC) grant only.
func validateGrantUse(r *report, path string, a *Account) {
	grant := a.ProviderRef.Grant
	pwKey := path + ".password"
	if a.PasswordFile != "" {
		pwKey += "_file"
	}
	switch {
	case a.PasswordPassthrough && grant != GrantPassword:
		r.add(path+".password_passthrough", "only for grant password (provider %s has %s)", a.Provider, grant)
	case a.PasswordPassthrough && len(a.RelayFrom) > 0:
		r.add(path+".relay_from", "not possible with password_passthrough: mail relayed without AUTH brings no password")
	case a.Password != "" && grant != GrantPassword:
		r.add(pwKey, "only for grant password (provider %s has %s)", a.Provider, grant)
	case a.Password != "" && a.PasswordPassthrough:
		r.add(pwKey, "not used with password_passthrough: remove one")
	case a.Password == "" && !a.PasswordPassthrough && grant == GrantPassword:
		r.add(path+".password", "required for grant password (or password_file, or password_passthrough: true)")
	}
}
