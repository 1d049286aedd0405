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
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// Login checks a local username and password from a client at addr. The
// password is checked against the account's bcrypt hash (or the memo of the
// last one verified, see memoHit); accounts with password_passthrough are
// checked by the identity provider when the token is fetched (Token), so
// Login accepts any password for them. The Throttle decides the rest: a
// remote range over its failure cap is refused without a check, a check
// waits for a verification slot, and a failure is held before it is
// returned; a correct password is never held.
//
// A failure is a *LoginError with Failure BadCredentials; a ctx that ends
// while waiting for a slot or while a failure is held gives Unavailable.
//
// A user name that is no account's username but a mailbox address that an
// account opens (a domain-wide account's, or one of an account's mailboxes
// list) logs in to that account with that mailbox: the result is the
// account's view for the mailbox (see mailbox.go), and failures are
// counted by the normalised address, so that case and a trailing dot do
// not give a guesser fresh counters.
func (r *Relay) Login(ctx context.Context, addr netip.Addr, username, password string) (*Account, error) {
	t := r.throttle
	snap := r.current.Load()
	name := username
	a := snap.byUsername[strings.ToLower(username)]
	mailbox := ""
	if a == nil {
		if a, mailbox = snap.byMailbox(username); a != nil {
			name = mailbox
		}
	}
	a, err := r.login(ctx, t, t.keyFor(addr, name), a, password)
	if err != nil || mailbox == "" {
		return a, err
	}
	return a.view(mailbox), nil
}

// login checks password for a (nil: an unknown name) under the throttle's
// key.
func (r *Relay) login(ctx context.Context, t *Throttle, key throttleKey, a *Account, password string) (*Account, error) {
	if t.Blocked(key) {
		return nil, &LoginError{Failure: BadCredentials, Reason: reasonRangeBlocked, Account: a}
	}
	if a != nil && a.PasswordPassthrough {
		return a, nil
	}
	if a != nil && a.memoHit(password) {
		t.Succeed(key)
		return a, nil
	}
	ok, err := t.Verify(ctx, r.hashFor(a), password)
	if err != nil {
		return nil, &LoginError{Failure: Unavailable, Reason: "client went away while waiting to check the password", Account: a, Err: err}
	}
	if ok && a != nil {
		a.remember(password)
		t.Succeed(key)
		return a, nil
	}
	le := &LoginError{Failure: BadCredentials, Reason: "wrong password", Account: a}
	if a == nil {
		le.Reason = "unknown username"
	}
	return nil, r.held(ctx, t.Fail(key), le)
}

// reasonRangeBlocked is the log reason of a login refused unchecked.
const reasonRangeBlocked = "too many failures from this address range"

// held holds the failure le for d and returns it, or an Unavailable error
// if ctx ends first.
func (r *Relay) held(ctx context.Context, d time.Duration, le *LoginError) error {
	if err := r.throttle.Hold(ctx, d); err != nil {
		return &LoginError{Failure: Unavailable, Reason: "client went away while a failed login was held", Account: le.Account, Err: err}
	}
	return le
}

// hashFor is the bcrypt hash a's password is checked against. A name that
// is no account's is checked against a hash that matches nothing, of the
// cost most accounts' hashes have: an unknown name then costs what a wrong
// password costs, so timing does not tell which names exist.
func (r *Relay) hashFor(a *Account) []byte {
	if a != nil {
		return []byte(a.PasswordHash)
	}
	return dummyHash(commonCost(r.Accounts()))
}

// commonCost is the bcrypt cost most of accounts' hashes have (the higher
// on a tie; bcrypt.DefaultCost if none has a hash).
func commonCost(accounts []*Account) int {
	count := map[int]int{}
	best := bcrypt.DefaultCost
	for _, a := range accounts {
		c, err := bcrypt.Cost([]byte(a.PasswordHash))
		if err != nil {
			continue
		}
		count[c]++
		if count[c] > count[best] || count[c] == count[best] && c > best {
			best = c
		}
	}
	return best
}

// bcryptAlphabet is bcrypt's base64 alphabet.
const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// dummyHash returns a well-formed bcrypt hash of the given cost with a
// random salt and digest: comparing a password against it costs what a real
// comparison costs and never matches. Building it costs no hashing, so the
// first unknown name is not slower than the next.
func dummyHash(cost int) []byte {
	b := make([]byte, 53) // 22 characters of salt, 31 of digest
	rand.Read(b)
	for i := range b {
		b[i] = bcryptAlphabet[b[i]%64]
	}
	return fmt.Appendf(nil, "$2a$%02d$%s", cost, b)
}

// memoHit reports whether password is the last one verified for a. A
// bcrypt comparison costs tens of milliseconds by design; legacy apps log in
// for every message, so a verified password is remembered as an HMAC under a
// key that lives only in this process's memory, and the next login with the
// same password costs one HMAC. The memo dies with the Account (a reload
// builds new ones). See Throttle for why it may answer even for a name
// under attack.
func (a *Account) memoHit(password string) bool {
	sum := a.memoSum(password)
	a.memoMu.Lock()
	memo := a.memo
	a.memoMu.Unlock()
	return memo != nil && hmac.Equal(memo, sum)
}

// remember makes password, just verified by bcrypt, a's memo.
func (a *Account) remember(password string) {
	sum := a.memoSum(password)
	a.memoMu.Lock()
	a.memo = sum
	a.memoMu.Unlock()
}

func (a *Account) memoSum(password string) []byte {
	a.memoOnce.Do(func() {
		a.memoKey = make([]byte, 32)
		rand.Read(a.memoKey)
	})
	m := hmac.New(sha256.New, a.memoKey)
	m.Write([]byte(password))
	return m.Sum(nil)
}

// Token returns an access token for a, after Login succeeded with password.
// Failures are *LoginError: Unavailable for transient ones (the client
// should retry), NeedsAttention when an administrator must act, and
// BadCredentials when the identity provider refused a passthrough password
// (AADSTS50126), which counts as a failure of the client's key and is held
// like one (Unavailable if ctx ends meanwhile).
func (r *Relay) Token(ctx context.Context, addr netip.Addr, a *Account, password string) (string, error) {
	var tok string
	var err error
	if a.PasswordPassthrough {
		tok, err = a.Source.TokenForPassword(ctx, password)
	} else {
		tok, err = a.Source.Token(ctx)
	}
	key := r.throttle.keyFor(addr, a.Username)
	if err == nil {
		if a.PasswordPassthrough {
			r.throttle.Succeed(key)
		}
		return tok, nil
	}
	le := &LoginError{Failure: Unavailable, Account: a, Err: err, Reason: "token request failed"}
	var oe *oauth.Error
	if !errors.As(err, &oe) {
		return "", le
	}
	le.Reason = oe.Reason
	if oe.Class != oauth.NeedsSignIn {
		return "", le
	}
	le.Failure = NeedsAttention
	if a.PasswordPassthrough && oe.AADSTS == 50126 {
		// The identity provider refused the password: a failed login
		// like a wrong local password, counted and held the same way.
		le.Failure = BadCredentials
		return "", r.held(ctx, r.throttle.Fail(key), le)
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

// Result is the failure as events name it (a metric label value).
func (f Failure) Result() events.LoginResult {
	switch f {
	case BadCredentials:
		return events.LoginBadCredentials
	case NeedsAttention:
		return events.LoginNeedsAttention
	case UpstreamRejected:
		return events.LoginUpstreamRejected
	}
	return events.LoginUnavailable
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
