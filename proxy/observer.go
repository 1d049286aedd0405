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
}

type nopObserver struct{}

func (nopObserver) Connection(string, int)                           {}
func (nopObserver) Login(string, *Account, string)                   {}
func (nopObserver) Upstream(string, *Account, string, time.Duration) {}
func (nopObserver) Message(*Account, int64)                          {}
func (nopObserver) Transferred(*Account, int64, int64)               {}
func (nopObserver) TokenRequest(*Account, string, time.Duration)     {}
