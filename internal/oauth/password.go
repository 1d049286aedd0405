package oauth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"log/slog"
	"time"
)

const (
	// maxPasswordEntries bounds the passthrough cache.
	maxPasswordEntries = 4
	// badPasswordHold: a password the provider refused is refused locally
	// for this long, so that an app retrying in a loop does not trip
	// Entra's smart lockout for the mailbox.
	badPasswordHold = time.Minute
)

// pwEntry caches the result of one passthrough password. It holds an HMAC of
// the password under a per-Source random key, never the password.
type pwEntry struct {
	mac      [32]byte
	access   string
	expiry   time.Time
	lifetime time.Duration
	err      *Error
	errUntil time.Time
}

// TokenForPassword is the password_passthrough path: the legacy app's login
// password is the mailbox password, exchanged with the password grant (ROPC)
// for an access token. The token is cached per password (by HMAC, compared in
// constant time) until it nears expiry, so repeated logins do not reach the
// identity provider; a password the provider refuses (AADSTS50126, a
// NeedsSignIn error) is refused from the cache for a minute. When a new
// password succeeds, tokens cached for other passwords are dropped: after a
// password change the old one must stop working.
func (s *Source) TokenForPassword(ctx context.Context, password string) (string, error) {
	if s.grant != grantPassword {
		return "", &Error{Class: NeedsSignIn, Reason: "password passthrough needs grant: password", Fix: "set grant: password on the provider, or turn off password_passthrough"}
	}
	if password == "" {
		return "", &Error{Class: NeedsSignIn, AADSTS: 50126, Reason: "wrong username or password (empty password)", Fix: "check the password the app uses"}
	}
	mac := s.passwordMAC(password)
	s.mu.Lock()
	if tok, err, ok := s.cachedPasswordLocked(mac, s.now()); ok {
		s.mu.Unlock()
		if err != nil {
			return "", err
		}
		return tok, nil
	}
	s.mu.Unlock()
	return s.shared(ctx, "password:"+hex.EncodeToString(mac[:]), func(ctx context.Context) (string, *Error) {
		return s.passwordFlight(ctx, mac, password)
	})
}

func (s *Source) passwordMAC(password string) [32]byte {
	h := hmac.New(sha256.New, s.pwKey)
	h.Write([]byte(password))
	var mac [32]byte
	copy(mac[:], h.Sum(nil))
	return mac
}

// cachedPasswordLocked looks mac up, comparing every entry in constant time.
func (s *Source) cachedPasswordLocked(mac [32]byte, now time.Time) (string, *Error, bool) {
	var found *pwEntry
	for i := range s.pw {
		if subtle.ConstantTimeCompare(s.pw[i].mac[:], mac[:]) == 1 {
			found = &s.pw[i]
		}
	}
	switch {
	case found == nil:
		return "", nil, false
	case found.access != "" && found.expiry.Sub(now) > min(minValidity, found.lifetime/4):
		return found.access, nil, true
	case found.err != nil && now.Before(found.errUntil):
		return "", found.err, true
	}
	return "", nil, false
}

func (s *Source) passwordFlight(ctx context.Context, mac [32]byte, password string) (string, *Error) {
	s.mu.Lock()
	if tok, err, ok := s.cachedPasswordLocked(mac, s.now()); ok {
		s.mu.Unlock()
		return tok, err
	}
	s.inFlight++
	s.mu.Unlock()

	start := s.now()
	res, e := s.result(s.request(ctx, passwordParams(s.acct.Mailbox, password), true))
	s.observe(e, start)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight--
	if e != nil {
		if e.Class == NeedsSignIn {
			s.putPasswordLocked(pwEntry{mac: mac, err: e, errUntil: s.now().Add(badPasswordHold)}, false)
		}
		// A wrong password is the app's mistake, not the account's
		// health: keep it out of State.
		if e.AADSTS != 50126 {
			s.lastErr = e
		}
		s.log.Warn("password passthrough sign-in failed",
			slog.String("class", e.Class.String()), slog.String("reason", e.Reason), slog.Int("aadsts", e.AADSTS))
		return "", e
	}
	s.putPasswordLocked(pwEntry{mac: mac, access: res.access, lifetime: res.lifetime, expiry: start.Add(res.lifetime)}, true)
	s.lastErr = nil
	s.lastSuccess = s.now()
	s.expiry = start.Add(res.lifetime)
	return res.access, nil
}

// putPasswordLocked stores e, replacing an entry for the same password. A
// success drops the tokens of other passwords. The oldest entry goes when
// the cache is full.
func (s *Source) putPasswordLocked(e pwEntry, success bool) {
	kept := s.pw[:0]
	for _, old := range s.pw {
		if subtle.ConstantTimeCompare(old.mac[:], e.mac[:]) == 1 || success && old.access != "" {
			continue
		}
		kept = append(kept, old)
	}
	if len(kept) >= maxPasswordEntries {
		kept = kept[1:]
	}
	s.pw = append(kept, e)
}
