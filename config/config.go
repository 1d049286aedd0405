// Package config reads oauthrelay's YAML configuration: the schema of the
// design card, defaults filled in from provider type and cloud, ${ENV}
// expansion, *_file secrets, and validation whose errors name the file, the
// line and the key.
//
// The keys are a public contract (users' automation relies on them): add keys,
// rename none without a migration.
//
// The pipeline is Parse: YAML nodes → typed values (unknown keys, wrong types
// and ${ENV} are handled per scalar so each problem keeps its line) → file
// names made absolute and *_file secrets read → defaults → validation. Every
// problem of every stage is reported, not just the first. Non-goals: watching
// the file (a reload is a new Load) and templating beyond ${NAME}.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"time"
)

// The values of the enumerated keys, for the packages that switch on them.
const (
	TypeMicrosoft = "microsoft"
	TypeGoogle    = "google"
	TypeGeneric   = "generic"

	CloudGlobal = "global"
	CloudUSGov  = "usgov"
	CloudChina  = "china"

	GrantClientCredentials = "client_credentials"
	GrantAuthorizationCode = "authorization_code"
	GrantDeviceCode        = "device_code"
	GrantPassword          = "password"

	TLSNone     = "none"
	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"

	// AddrOff as a listener's addr disables that listener.
	AddrOff = "off"

	// DeliveryDirect relays each command of the app's transaction upstream
	// as it comes, so the app sees the upstream's verdict; DeliveryQueue
	// spools the message to state_dir before answering 250 and delivers it
	// later.
	DeliveryDirect = "direct"
	DeliveryQueue  = "queue"

	// UpstreamSMTP sends over SMTP AUTH (XOAUTH2), UpstreamGraph through
	// Microsoft Graph's sendMail, UpstreamAuto over SMTP until Exchange
	// says SMTP AUTH is disabled (535 5.7.139), then through Graph.
	UpstreamSMTP  = "smtp"
	UpstreamGraph = "graph"
	UpstreamAuto  = "auto"
)

// Load reads the configuration file at path; see Parse. Environment
// variables come from the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Account returns the account called name, or nil if there is none.
func (c *Config) Account(name string) *Account {
	for _, a := range c.Accounts {
		if a.Name == name {
			return a
		}
	}
	return nil
}

// Config is one loaded, validated configuration. It is never mutated after
// Load returns; a reload builds a new one.
type Config struct {
	// File is the path the configuration was read from (for messages).
	File string `yaml:"-"`

	// StateDir holds the token store, its key and the spool of delivery:
	// queue. Load always sets it (the file's value, or the default of
	// defaultStateDir), so every account may use delivery: queue.
	StateDir  string               `yaml:"state_dir"`
	Log       Log                  `yaml:"log"`
	Listen    Listen               `yaml:"listen"`
	Limits    Limits               `yaml:"limits"`
	Queue     Queue                `yaml:"queue"`
	Providers map[string]*Provider `yaml:"providers"`
	Accounts  []*Account           `yaml:"accounts"`
	// Cluster shares limits and token state with other instances (see
	// Cluster); the zero value is one relay on its own.
	Cluster Cluster `yaml:"cluster"`
}

// Limits are what one mailbox may do upstream, shared by every account that
// sends as it. The defaults are Exchange Online's own limits (Microsoft's
// "Exchange Online limits", sending limits), so that the relay keeps them
// rather than trips them; tenants that raised a limit raise it here.
// DefaultLimits has the values; Load fills every key the file leaves out.
type Limits struct {
	// Connections caps the authenticated upstream SMTP sessions at once
	// (Exchange: 3; a 4th gets 432 4.3.2). 1 to 100.
	Connections int `yaml:"connections"`
	// MessagesPerMinute paces messages (Exchange: 30). 1 to 10,000.
	MessagesPerMinute int `yaml:"messages_per_minute"`
	// RecipientsPerDay is the rolling 24-hour recipient quota (Exchange:
	// 10,000; then 554 5.2.0 ...SubmissionQuotaExceededException).
	// 1 to 1,000,000.
	RecipientsPerDay int `yaml:"recipients_per_day"`
	// RecipientsPerMessage caps RCPT TO per message (Exchange: 500,
	// configurable from 1 to 1,000). 1 to 1,000.
	RecipientsPerMessage int `yaml:"recipients_per_message"`
	// MaxWait bounds how long a message of direct delivery may wait for a
	// connection or its slot in the pace before the app gets 451 4.7.0.
	// Unlike the others it limits one app session, not the mailbox: an
	// app with a short timeout wants a short wait. 0 (never wait) to 1h.
	MaxWait time.Duration `yaml:"max_wait"`
}

// LimitsOverride is an account's limits key: the keys it sets replace the
// top-level limits for that account; nil is a key not set.
type LimitsOverride struct {
	Connections          *int           `yaml:"connections"`
	MessagesPerMinute    *int           `yaml:"messages_per_minute"`
	RecipientsPerDay     *int           `yaml:"recipients_per_day"`
	RecipientsPerMessage *int           `yaml:"recipients_per_message"`
	MaxWait              *time.Duration `yaml:"max_wait"`
}

// Queue configures delivery: queue. DefaultQueue has the defaults.
type Queue struct {
	// MaxAge is how long a queued message is retried (after 4xx replies
	// and lost connections) before it is bounced to its sender: 5 days by
	// default, Postfix's maximal_queue_lifetime. 1h to 30d.
	MaxAge time.Duration `yaml:"max_age"`
	// KeepFailed is how long a message that failed (5xx, or MaxAge) stays
	// in the failed area for `oauthrelay queue` (default 7 days); 0 keeps
	// none. 0 to 90d.
	KeepFailed time.Duration `yaml:"keep_failed"`
}

// MailboxLimits returns the limits in force for mailbox (compared without
// regard to case): when several accounts send as it (Account.SendsAs: a
// domain-wide account sends as each mailbox of its pattern, each with
// limits of its own), each field is the
// minimum of their EffectiveLimits, the most restrictive, because the
// upstream counts the mailbox's traffic whichever account it came through.
// MaxWait is the minimum too; a delivery serving one account's session
// should take that account's own EffectiveLimits.MaxWait. A mailbox that no
// account sends as gets the top-level Limits.
func (c *Config) MailboxLimits(mailbox string) Limits {
	var l Limits
	found := false
	for _, a := range c.Accounts {
		if !a.SendsAs(mailbox) {
			continue
		}
		if !found {
			l, found = a.EffectiveLimits, true
			continue
		}
		e := a.EffectiveLimits
		l = Limits{
			Connections:          min(l.Connections, e.Connections),
			MessagesPerMinute:    min(l.MessagesPerMinute, e.MessagesPerMinute),
			RecipientsPerDay:     min(l.RecipientsPerDay, e.RecipientsPerDay),
			RecipientsPerMessage: min(l.RecipientsPerMessage, e.RecipientsPerMessage),
			MaxWait:              min(l.MaxWait, e.MaxWait),
		}
	}
	if !found {
		return c.Limits
	}
	return l
}

// SavesToSentItems reports save_to_sent_items (default true).
func (a *Account) SavesToSentItems() bool { return a.SaveToSentItems == nil || *a.SaveToSentItems }

// SendsThroughGraph reports whether the account may send through Graph
// (upstream graph or auto).
func (a *Account) SendsThroughGraph() bool {
	return a.Upstream == UpstreamGraph || a.Upstream == UpstreamAuto
}

// Log selects the slog handler.
type Log struct {
	Level  string `yaml:"level"`  // debug|info|warn|error (default info)
	Format string `yaml:"format"` // text|json (default text)
}

// Listen holds the local listeners.
type Listen struct {
	SMTP Listener `yaml:"smtp"`
	IMAP Listener `yaml:"imap"`
	// POP3 is the POP3 front end (RFC 1939): default 127.0.0.1:1110.
	POP3  Listener `yaml:"pop3"`
	Admin Admin    `yaml:"admin"`
}

// Listener is a local SMTP, IMAP or POP3 listener.
type Listener struct {
	// Addr is host:port; "off" disables the listener. Default
	// 127.0.0.1:2525 (SMTP), 127.0.0.1:1143 (IMAP), 127.0.0.1:1110 (POP3).
	Addr string `yaml:"addr"`
	// TLS is none|starttls|implicit (default none). starttls and implicit
	// need CertFile and KeyFile.
	TLS      string `yaml:"tls"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// AllowInsecure permits binding a non-loopback address with tls: none.
	// Plaintext logins are then accepted from any client: only for networks
	// the administrator trusts.
	AllowInsecure bool `yaml:"allow_insecure"`
}

// Admin is the HTTP admin listener.
type Admin struct {
	Addr string `yaml:"addr"` // default 127.0.0.1:8025; "off" disables
	// Username and PasswordHash (bcrypt) protect the admin pages with
	// HTTP basic auth; required when Addr is not a loopback address.
	Username     string `yaml:"username"`
	PasswordHash string `yaml:"password_hash"`
	// CertFile and KeyFile (PEM), both or neither, serve the admin pages
	// over HTTPS; without them it is plain HTTP, which the relay warns
	// about on a non-loopback address (the basic auth password would cross
	// the network in clear).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Provider is one identity provider app registration.
type Provider struct {
	// Name is the key in the providers map.
	Name string `yaml:"-"`

	Type   string `yaml:"type"`   // microsoft|google|generic
	Cloud  string `yaml:"cloud"`  // microsoft: global|usgov|china
	Tenant string `yaml:"tenant"` // microsoft: tenant id or domain (default "organizations" for delegated grants)

	ClientID string `yaml:"client_id"`
	// ClientSecret holds the secret after ${ENV} expansion or after
	// ClientSecretFile was read (Load fills it in).
	ClientSecret          string `yaml:"client_secret"`
	ClientSecretFile      string `yaml:"client_secret_file"`
	ClientCertificateFile string `yaml:"client_certificate_file"`
	ClientKeyFile         string `yaml:"client_key_file"`

	Grant string `yaml:"grant"` // client_credentials|authorization_code|device_code|password

	// Endpoints and scopes: filled in from Type and Cloud when empty.
	TokenURL     string   `yaml:"token_url"`
	AuthorizeURL string   `yaml:"authorize_url"`
	DeviceURL    string   `yaml:"device_url"`
	Scopes       []string `yaml:"scopes"`
	// RedirectURL is the redirect URI registered for the authorization code
	// grant. Empty: a loopback http://localhost:PORT/ chosen by `login`, or
	// the admin listener's /oauth2/callback.
	RedirectURL string `yaml:"redirect_url"`

	SMTP Upstream `yaml:"smtp"`
	IMAP Upstream `yaml:"imap"`
	// POP3 is the provider's POP3 server (Microsoft: port 995 of the IMAP
	// host, implicit TLS, AUTH XOAUTH2).
	POP3 Upstream `yaml:"pop3"`
	// Graph is Microsoft Graph, for accounts with upstream graph or auto;
	// filled in from Type, Cloud and Grant when empty.
	Graph GraphAPI `yaml:"graph"`

	// CAFile adds a PEM CA bundle to the system roots for upstream TLS.
	CAFile string `yaml:"ca_file"`
}

// GraphAPI is a provider's Microsoft Graph endpoint and the scopes of its
// tokens (a token is for one resource: Graph's are not Exchange's).
type GraphAPI struct {
	// URL is Graph's root: https://graph.microsoft.com (usgov
	// https://graph.microsoft.us; DoD https://dod-graph.microsoft.us,
	// set here; china https://microsoftgraph.chinacloudapi.cn).
	URL string `yaml:"url"`
	// Scopes of Graph tokens: app-only {URL}/.default, delegated
	// {URL}/Mail.Send, {URL}/Mail.ReadWrite and offline_access.
	Scopes []string `yaml:"scopes"`
}

// Upstream is a provider's mail server.
type Upstream struct {
	Addr string `yaml:"addr"`
	TLS  string `yaml:"tls"` // starttls|implicit|none (none: loopback addresses only)
}

// Account maps a local login to a mailbox.
type Account struct {
	Name     string `yaml:"name"`
	Provider string `yaml:"provider"`
	// Mailbox is the XOAUTH2 user, or for an app-only grant a pattern
	// "*@domain": a domain-wide account, whose apps log in with a mailbox
	// address as their user name (see OpensMailbox).
	Mailbox string `yaml:"mailbox"`
	// Mailboxes restricts a domain-wide account to these addresses; on an
	// account with one mailbox it lists further mailboxes (shared ones)
	// that an app opens by logging in with that address: IMAP logs in as
	// it with the account's token (a delegate's, or the app's).
	Mailboxes []string `yaml:"mailboxes"`
	// SendAs is SendAsMailbox (the default) or SendAsSender: which
	// identity logs in upstream over SMTP for a MAIL FROM that is not one
	// of the account's mailboxes (see SMTPMailbox).
	SendAs string `yaml:"send_as"`

	Username     string `yaml:"username"`      // what the legacy app logs in with
	PasswordHash string `yaml:"password_hash"` // bcrypt

	// Password / PasswordFile: the mailbox's own password, for the
	// password (ROPC) grant. Load fills Password from PasswordFile.
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// PasswordPassthrough (password grant only): the app's login password is
	// the mailbox password and is exchanged for the token; PasswordHash is
	// then not needed.
	PasswordPassthrough bool `yaml:"password_passthrough"`

	// AllowedFrom are the MAIL FROM patterns: "a@b.c", "*@b.c", "*", and
	// "<>" for the null sender. Load sets [Mailbox] when it is empty.
	AllowedFrom []string `yaml:"allowed_from"`
	// EnforceHeaderFrom: a message is refused unless every address of its
	// From header matches AllowedFrom too (as MAIL FROM does); without it
	// only the envelope sender is checked.
	EnforceHeaderFrom bool     `yaml:"enforce_header_from"`
	RelayFrom         []string `yaml:"relay_from"` // CIDRs allowed to send without AUTH

	// Delivery is DeliveryDirect (the default) or DeliveryQueue. An Account
	// built in Go rather than by Load may leave it empty: that means direct.
	Delivery string `yaml:"delivery"`
	// Upstream is how the account sends: UpstreamSMTP (the default),
	// UpstreamGraph or UpstreamAuto. IMAP is IMAP whatever it says. An
	// Account built in Go may leave it empty: that means smtp.
	Upstream string `yaml:"upstream"`
	// SaveToSentItems keeps a copy of what is sent through Graph in the
	// mailbox's Sent Items; nil (not set) is true, as SMTP submission
	// does. See SavesToSentItems.
	SaveToSentItems *bool `yaml:"save_to_sent_items"`
	// Limits overrides the top-level limits for this account's mailbox;
	// nil when the file has no limits key here. Read EffectiveLimits, or
	// Config.MailboxLimits for what the mailbox as a whole may do.
	Limits *LimitsOverride `yaml:"limits"`

	// Filled in by Load.
	ProviderRef *Provider      `yaml:"-"`
	RelayNets   []netip.Prefix `yaml:"-"`
	// EffectiveLimits are the top-level limits with this account's
	// overrides applied.
	EffectiveLimits Limits `yaml:"-"`
	// mailboxSet holds Mailboxes normalised (validation fills it; nil
	// for an Account built in Go, which OpensMailbox then reads as a list).
	mailboxSet map[string]bool
}
