// Package events names what the relay's front ends, deliveries and upstream
// logins report, so that the metrics, the status page and the logs that
// read them agree on one vocabulary: typed protocols and results, and the
// Observer that receives them.
//
// It is a leaf: it imports nothing of the relay, so every package may
// import it (proxy, the front ends, internal/delivery, internal/upstream,
// internal/admin) without an arrow pointing upward. An event carries an
// account's public facts (Account: names and the mailbox address), never a
// value through which a password, a token or a client secret can be
// reached.
//
// The String values of the results are metric label values and appear on
// dashboards: they are a contract, like the configuration keys.
package events

import "time"

// Proto is a protocol the relay speaks to apps and upstream.
type Proto string

const (
	SMTP Proto = "smtp"
	IMAP Proto = "imap"
	POP3 Proto = "pop3"
)

// Account is what an event says about an account: public facts only.
type Account struct {
	Name     string // the account's name in the configuration
	Mailbox  string // the mailbox it logs in upstream as
	Provider string // the provider's name in the configuration
}

// LoginResult is the outcome of an app's login to the relay.
type LoginResult string

const (
	LoginOK LoginResult = "ok"
	// LoginBadCredentials: wrong local user name or password.
	LoginBadCredentials LoginResult = "bad_credentials"
	// LoginUnavailable: the token endpoint or the upstream failed for
	// now; the app was told to retry.
	LoginUnavailable LoginResult = "unavailable"
	// LoginNeedsAttention: the grant needs a new sign-in or the app
	// registration is wrong; an administrator must act.
	LoginNeedsAttention LoginResult = "needs_attention"
	// LoginUpstreamRejected: the upstream refused the XOAUTH2 login.
	LoginUpstreamRejected LoginResult = "upstream_rejected"
)

// UpstreamResult is the outcome of one upstream connect and XOAUTH2 login.
type UpstreamResult string

const (
	UpstreamOK UpstreamResult = "ok"
	// UpstreamRejected: the server answered and refused the login.
	UpstreamRejected UpstreamResult = "rejected"
	// UpstreamUnavailable: the server could not be reached, the TLS
	// handshake failed, or it said it is unavailable.
	UpstreamUnavailable UpstreamResult = "unavailable"
)

// TokenResult is the outcome of one request to the identity provider, by
// the token source's own classification.
type TokenResult string

const (
	TokenOK          TokenResult = "ok"
	TokenTransient   TokenResult = "transient"
	TokenNeedsSignIn TokenResult = "needs_sign_in"
)

// PreAuthReason says why a connection that had not logged in was refused.
type PreAuthReason string

const (
	// PreAuthListenerCap: the listener holds as many unauthenticated
	// connections as it allows.
	PreAuthListenerCap PreAuthReason = "listener_cap"
	// PreAuthAddressCap: the client's address holds as many as it may.
	PreAuthAddressCap PreAuthReason = "address_cap"
)

// Observer is told what the relay does. Implementations must be safe for
// concurrent use and must not block: they are called on session paths.
type Observer interface {
	// Connection is called with +1 when an app connects and -1 when it
	// leaves.
	Connection(p Proto, delta int)
	// Login reports an app's login. a is the zero Account when the user
	// name is no account's.
	Login(p Proto, a Account, r LoginResult)
	// Upstream reports an upstream connect + XOAUTH2 login.
	Upstream(p Proto, a Account, r UpstreamResult, took time.Duration)
	// Message reports a message the upstream accepted, with its size.
	Message(a Account, bytes int64)
	// Transferred reports bytes copied after login by a proxied (IMAP,
	// POP3) session of protocol p: in from the app, out to it.
	Transferred(p Proto, a Account, in, out int64)
	// TokenRequest reports a request to the identity provider.
	TokenRequest(a Account, r TokenResult, took time.Duration)
	// Unauthenticated is called with +1 when a listener hands out a
	// connection that has not logged in, and -1 when it logs in or ends.
	Unauthenticated(p Proto, delta int)
	// PreAuthRejected reports a connection refused before login.
	PreAuthRejected(p Proto, r PreAuthReason)
	// PreAuthLimits reports a listener's caps on unauthenticated
	// connections (0: no cap), once when it starts accepting.
	PreAuthLimits(p Proto, perListener, perAddr int)
}

// Nop is an Observer that records nothing.
type Nop struct{}

func (Nop) Connection(Proto, int)                                  {}
func (Nop) Login(Proto, Account, LoginResult)                      {}
func (Nop) Upstream(Proto, Account, UpstreamResult, time.Duration) {}
func (Nop) Message(Account, int64)                                 {}
func (Nop) Transferred(Proto, Account, int64, int64)               {}
func (Nop) TokenRequest(Account, TokenResult, time.Duration)       {}
func (Nop) Unauthenticated(Proto, int)                             {}
func (Nop) PreAuthRejected(Proto, PreAuthReason)                   {}
func (Nop) PreAuthLimits(Proto, int, int)                          {}

var _ Observer = Nop{}
