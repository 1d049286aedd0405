package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// dummyHash is compared against when the username is unknown, so that an
// unknown user costs as much time as a wrong password (no user enumeration
// by timing). It is the bcrypt hash of a random string.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("oauthrelay-no-such-user"), bcrypt.DefaultCost)

// Login checks a local username and password from a client at addr. It
// waits first if addr has failed too often (see Throttle). The password is
// checked against the account's bcrypt hash; accounts with
// password_passthrough are checked by the identity provider when the token
// is fetched (Token), so Login accepts any password for them.
//
// A failure is a *LoginError with Failure BadCredentials.
func (r *Relay) Login(ctx context.Context, addr netip.Addr, username, password string) (*Account, error) {
	a := r.current.Load().byUsername[strings.ToLower(username)]
	key := throttleKey{addr: addr}
	if a != nil {
		key.user = strings.ToLower(a.Username)
	}
	if err := r.throttle.Wait(ctx, key); err != nil {
		return nil, &LoginError{Failure: Unavailable, Reason: "client went away while throttled", Err: err}
	}
	if a == nil {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		r.throttle.Fail(key)
		return nil, &LoginError{Failure: BadCredentials, Reason: "unknown username"}
	}
	if a.PasswordPassthrough {
		return a, nil
	}
	if !a.checkPassword(password) {
		r.throttle.Fail(key)
		return nil, &LoginError{Failure: BadCredentials, Reason: "wrong password", Account: a}
	}
	r.throttle.Succeed(key)
	return a, nil
}

// checkPassword compares against the bcrypt hash. A bcrypt comparison costs
// tens of milliseconds by design; legacy apps log in for every message, so
// a verified password is remembered as an HMAC under a key that lives only
// in this process's memory, and the next login with the same password costs
// one HMAC. The memo dies with the Account (a reload builds new ones).
func (a *Account) checkPassword(password string) bool {
	a.memoOnce.Do(func() {
		a.memoKey = make([]byte, 32)
		rand.Read(a.memoKey)
	})
	m := hmac.New(sha256.New, a.memoKey)
	m.Write([]byte(password))
	sum := m.Sum(nil)
	a.memoMu.Lock()
	memo := a.memo
	a.memoMu.Unlock()
	if memo != nil && hmac.Equal(memo, sum) {
		return true
	}
	if bcrypt.CompareHashAndPassword([]byte(a.PasswordHash), []byte(password)) != nil {
		return false
	}
	a.memoMu.Lock()
	a.memo = sum
	a.memoMu.Unlock()
	return true
}

// Token returns an access token for a, after Login succeeded with password.
// Failures are *LoginError: Unavailable for transient ones (the client
// should retry), NeedsAttention when an administrator must act, and
// BadCredentials when the identity provider refused a passthrough password.
func (r *Relay) Token(ctx context.Context, addr netip.Addr, a *Account, password string) (string, error) {
	var tok string
	var err error
	if a.PasswordPassthrough {
		tok, err = a.Source.TokenForPassword(ctx, password)
	} else {
		tok, err = a.Source.Token(ctx)
	}
	key := throttleKey{addr: addr, user: strings.ToLower(a.Username)}
	if err == nil {
		if a.PasswordPassthrough {
			r.throttle.Succeed(key)
		}
		return tok, nil
	}
	le := &LoginError{Failure: Unavailable, Account: a, Err: err, Reason: "token request failed"}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		le.Reason = oe.Reason
		if oe.Class == oauth.NeedsSignIn {
			le.Failure = NeedsAttention
			if a.PasswordPassthrough && oe.AADSTS == 50126 {
				le.Failure = BadCredentials
				r.throttle.Fail(key)
			}
		}
	}
	return "", le
}

// Failure says why a login failed; each protocol maps it to its reply.
type Failure int

const (
	// BadCredentials: wrong local username or password (SMTP 535 5.7.8,
	// IMAP NO [AUTHENTICATIONFAILED]).
	BadCredentials Failure = iota + 1
	// Unavailable: a transient failure of the token endpoint or the
	// upstream (SMTP 454 4.7.0, IMAP NO [UNAVAILABLE]): the app retries.
	Unavailable
	// NeedsAttention: the grant needs a new sign-in or the app
	// registration is wrong; retrying will not help (SMTP 535 5.7.8, IMAP
	// NO [AUTHENTICATIONFAILED]), and the reason goes to the log.
	NeedsAttention
	// UpstreamRejected: the upstream refused the XOAUTH2 login; its reply
	// is passed to the client.
	UpstreamRejected
)

func (f Failure) String() string {
	switch f {
	case BadCredentials:
		return "bad_credentials"
	case Unavailable:
		return "unavailable"
	case NeedsAttention:
		return "needs_attention"
	case UpstreamRejected:
		return "upstream_rejected"
	}
	return fmt.Sprintf("failure(%d)", int(f))
}

// LoginError is a failed login. Reason is plain words for the log; it is
// never sent to the client, which gets the protocol's fixed reply.
type LoginError struct {
	Failure Failure
	Reason  string
	Account *Account // nil when the username is unknown
	Err     error
}

func (e *LoginError) Error() string {
	s := e.Failure.String() + ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *LoginError) Unwrap() error { return e.Err }
