package proxy

import "time"

// Observer is told what the sessions do, for metrics and the status page.
// Implementations must be safe for concurrent use and must not block.
type Observer interface {
	// Connection is called with +1 when a client connects and -1 when it
	// leaves; proto is "smtp" or "imap".
	Connection(proto string, delta int)
	// Login reports a client login's outcome: result is "ok" or a
	// Failure's String. a is nil when the username is unknown.
	Login(proto string, a *Account, result string)
	// Upstream reports an upstream connect + XOAUTH2 login: result is "ok",
	// "rejected" or "unavailable".
	Upstream(proto string, a *Account, result string, took time.Duration)
	// Message reports a message the upstream accepted (SMTP) with its size.
	Message(a *Account, bytes int64)
	// Transferred reports bytes copied by an IMAP session after login.
	Transferred(a *Account, in, out int64)
	// TokenRequest reports a request to the identity provider for a's
	// token: result is "ok", "transient" or "needs_sign_in" (oauth's error
	// classes).
	TokenRequest(a *Account, result string, took time.Duration)
	// Unauthenticated is called by a Listener with +1 when it admits a
	// connection and -1 when that connection logs in or closes: the
	// connections of proto that have not logged in yet.
	Unauthenticated(proto string, delta int)
	// PreAuthRejected reports a connection a Listener refused at once
	// because too many had not logged in: reason is RejectListenerCap
	// ("listener_cap") or RejectAddressCap ("address_cap").
	PreAuthRejected(proto, reason string)
	// PreAuthLimits reports a Listener's caps on connections that have not
	// logged in, when it starts accepting: per listener and per client
	// address, 0 for no cap.
	PreAuthLimits(proto string, perListener, perAddr int)
}

type nopObserver struct{}

func (nopObserver) Connection(string, int)                           {}
func (nopObserver) Login(string, *Account, string)                   {}
func (nopObserver) Upstream(string, *Account, string, time.Duration) {}
func (nopObserver) Message(*Account, int64)                          {}
func (nopObserver) Transferred(*Account, int64, int64)               {}
func (nopObserver) TokenRequest(*Account, string, time.Duration)     {}
func (nopObserver) Unauthenticated(string, int)                      {}
func (nopObserver) PreAuthRejected(string, string)                   {}
func (nopObserver) PreAuthLimits(string, int, int)                   {}
