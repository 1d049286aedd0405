package oauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// tokenResult is one successful token response.
type tokenResult struct {
	access   string
	lifetime time.Duration
	// expiry, when set, is the token's expiry as the shared store has it
	// (otherwise the request's start plus lifetime).
	expiry time.Time
}

// deadRefresh remembers (as a hash) the refresh token the provider rejected
// and why, so that logins do not send it again and again: it is only retried
// when the store holds a different one.
type deadRefresh struct {
	sum [32]byte
	err *Error
}

// fetch performs one token request for the configured grant.
func (s *Source) fetch(ctx context.Context) (tokenResult, *Error) {
	switch s.grant {
	case grantClientCredentials:
		return s.result(s.request(ctx, url.Values{"grant_type": {"client_credentials"}}, true))
	case grantPassword:
		return s.result(s.request(ctx, passwordParams(s.acct.Mailbox, s.acct.Password), true))
	default:
		if s.cluster != nil {
			return s.fetchShared(ctx)
		}
		return s.fetchRefresh(ctx)
	}
}

func passwordParams(user, password string) url.Values {
	return url.Values{"grant_type": {"password"}, "username": {user}, "password": {password}}
}

// clientAuth reports whether token requests carry the app's credentials.
// Device code sign-ins are public client flows: Entra rejects a secret on
// their refresh (AADSTS700025).
func (s *Source) clientAuth() bool { return s.grant != grantDeviceCode }

// request sends one token request. clientcredentials.Config is used for every
// grant because it lets grant_type be overridden while adding the client's
// credentials (secret or assertion) and the scopes uniformly: x/oauth2's
// refresh TokenSource sends no scope (Entra may then answer AADSTS90009 or
// issue a token for another resource) and PasswordCredentialsToken cannot
// carry a client assertion. AuthStyleInParams: auto-detection would send a
// failing request twice.
func (s *Source) request(ctx context.Context, params url.Values, auth bool) (*oauth2.Token, error) {
	cfg := clientcredentials.Config{
		ClientID:       s.prov.ClientID,
		TokenURL:       s.prov.TokenURL,
		Scopes:         s.scopes,
		EndpointParams: params,
		AuthStyle:      oauth2.AuthStyleInParams,
	}
	if auth {
		ap, err := s.authParams()
		if err != nil {
			return nil, err
		}
		for k, v := range ap {
			params[k] = v
		}
		if s.signer == nil {
			cfg.ClientSecret = s.prov.ClientSecret
		}
	}
	return cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, s.client))
}

// authParams are the client assertion parameters for certificate apps.
func (s *Source) authParams() (url.Values, error) {
	if s.signer == nil {
		return nil, nil
	}
	jwt, err := s.signer.sign(s.prov.ClientID, s.prov.TokenURL, time.Now())
	if err != nil {
		return nil, &Error{Class: NeedsSignIn, Reason: "cannot sign the client assertion", Fix: "check client_key_file", Err: err}
	}
	return url.Values{"client_assertion_type": {clientAssertionType}, "client_assertion": {jwt}}, nil
}

func (s *Source) result(tok *oauth2.Token, err error) (tokenResult, *Error) {
	if err != nil {
		return tokenResult{}, classify(err, s.grant, s.now())
	}
	return tokenResult{access: tok.AccessToken, lifetime: lifetimeOf(tok)}, nil
}

// fetchRefresh redeems the refresh token (authorization_code and device_code
// accounts). A rotated refresh token is saved before the new access token is
// used: if the relay crashed after using it, the store would hold a token
// the provider may already have retired.
func (s *Source) fetchRefresh(ctx context.Context) (tokenResult, *Error) {
	rt, e := s.loadRefresh()
	if e != nil {
		return tokenResult{}, e
	}
	tok, err := s.request(ctx, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}, s.clientAuth())
	if err != nil {
		e := classify(err, s.grant, s.now())
		if e.Class == NeedsSignIn {
			s.mu.Lock()
			if s.refresh == rt {
				s.refresh = ""
			}
			s.dead = &deadRefresh{sum: sha256.Sum256([]byte(rt)), err: e}
			s.mu.Unlock()
		}
		return tokenResult{}, e
	}
	if nrt := tok.RefreshToken; nrt != "" && nrt != rt {
		s.mu.Lock()
		base := s.refreshRec
		s.mu.Unlock()
		rec := tokenstore.Record{RefreshToken: nrt, Scopes: s.prov.Scopes, Updated: s.now(), SignedIn: base.SignedIn, Generation: base.Generation + 1}
		// The grant's consented scopes are the provider's (see
		// Options.Scopes): a Graph source saves them too.
		if err := s.store.Save(s.acct.Name, rec); err != nil {
			// The old refresh token is still in the store and in memory;
			// Entra keeps it valid after rotation, so the next attempt can
			// redeem it again.
			return tokenResult{}, &Error{Class: Transient, Reason: "cannot save the rotated refresh token", Fix: "check free space and permissions of state_dir/tokens", Err: err}
		}
		s.mu.Lock()
		s.refresh = nrt
		s.mu.Unlock()
		s.log.Info("refresh token rotated and saved")
	}
	return tokenResult{access: tok.AccessToken, lifetime: lifetimeOf(tok)}, nil
}

// loadRefresh returns the refresh token to redeem. The store is the source
// of truth and is read before every refresh: a sign-in done meanwhile by
// `oauthrelay login` in another process must win over the token this
// process holds, or the next rotation would overwrite it. The copy in
// memory only bridges a store that cannot be read for a moment.
func (s *Source) loadRefresh() (string, *Error) {
	rec, err := s.store.Load(s.acct.Name)
	switch {
	case errors.Is(err, tokenstore.ErrNotFound) || err == nil && rec.RefreshToken == "":
		return "", &Error{Class: NeedsSignIn, Reason: "not signed in yet (no refresh token in the store)", Fix: "run `oauthrelay login -config FILE " + s.acct.Name + "` (or sign in on the status page)"}
	case errors.Is(err, tokenstore.ErrDecrypt):
		return "", classify(err, s.grant, s.now())
	case err != nil:
		s.mu.Lock()
		rt := s.refresh
		s.mu.Unlock()
		if rt != "" {
			s.log.Warn("cannot read the token store; using the refresh token in memory", slog.String("err", err.Error()))
			return rt, nil
		}
		return "", &Error{Class: Transient, Reason: "cannot read the token store", Fix: "check permissions of state_dir/tokens", Err: err}
	}
	sum := sha256.Sum256([]byte(rec.RefreshToken))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead != nil && subtle.ConstantTimeCompare(sum[:], s.dead.sum[:]) == 1 {
		return "", s.dead.err
	}
	s.refresh, s.refreshRec = rec.RefreshToken, rec
	return rec.RefreshToken, nil
}

// lifetimeOf reads expires_in from the response (Entra v2 sends a number,
// v1 a string), falling back to x/oauth2's Expiry (computed with the real
// clock) and then to an hour.
func lifetimeOf(tok *oauth2.Token) time.Duration {
	var secs int64
	switch v := tok.Extra("expires_in").(type) {
	case float64:
		secs = int64(v)
	case json.Number:
		secs, _ = v.Int64()
	case string:
		secs, _ = strconv.ParseInt(v, 10, 64)
	}
	if secs > 0 {
		return time.Duration(secs) * time.Second
	}
	if !tok.Expiry.IsZero() {
		if d := time.Until(tok.Expiry); d > 0 {
			return d
		}
		return 0
	}
	return defaultLifetime
}

// jitter returns a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}
