package oauth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"

	"golang.org/x/oauth2"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// AuthCodeFlow is one authorization code sign-in with PKCE (RFC 7636, S256):
// URL gives the address to open in a browser, Exchange (or Callback) redeems
// the code that comes back on the redirect URI and saves the refresh token.
// The state and the PKCE verifier live only inside the flow. `oauthrelay
// login` (LoginAuthCode) and the admin page's /oauth2/callback both use it.
// A flow redeems at most one code.
type AuthCodeFlow struct {
	src      *Source
	cfg      oauth2.Config
	state    string
	verifier string

	mu   sync.Mutex
	used bool
}

// errStateMismatch: a redirect that does not belong to this flow (forged or
// stale). It does not end the flow.
var errStateMismatch = errors.New("oauth: the redirect's state does not match this sign-in")

// NewAuthCodeFlow starts a sign-in for acct (grant authorization_code) with
// redirectURL, which must be registered in the app registration. opts.Store
// receives the refresh token.
func NewAuthCodeFlow(acct *config.Account, redirectURL string, opts Options) (*AuthCodeFlow, error) {
	src, err := NewSource(acct, opts)
	if err != nil {
		return nil, err
	}
	if src.grant != grantAuthCode {
		return nil, fmt.Errorf("oauth: account %s uses grant %s, not authorization_code", acct.Name, src.grant)
	}
	if src.prov.AuthorizeURL == "" {
		return nil, fmt.Errorf("oauth: provider %s has no authorize_url", src.prov.Name)
	}
	if redirectURL == "" {
		return nil, errors.New("oauth: no redirect URL")
	}
	state := make([]byte, 16)
	if _, err := rand.Read(state); err != nil {
		return nil, fmt.Errorf("oauth: %w", err)
	}
	f := &AuthCodeFlow{
		src: src,
		cfg: oauth2.Config{
			ClientID:    src.prov.ClientID,
			RedirectURL: redirectURL,
			Scopes:      src.prov.Scopes,
			Endpoint: oauth2.Endpoint{
				AuthURL:   src.prov.AuthorizeURL,
				TokenURL:  src.prov.TokenURL,
				AuthStyle: oauth2.AuthStyleInParams,
			},
		},
		state:    hex.EncodeToString(state),
		verifier: oauth2.GenerateVerifier(),
	}
	if src.signer == nil {
		f.cfg.ClientSecret = src.prov.ClientSecret // confidential (web) apps
	}
	return f, nil
}

// URL is the authorization address: PKCE S256 challenge, state, and
// login_hint set to the mailbox so the right account is preselected. It
// asks consent for every scope the account will redeem its refresh token
// for (consentScopes), while the code is redeemed for the mail scopes
// alone: Entra issues a token for one resource at a time (AADSTS28000).
func (f *AuthCodeFlow) URL() string {
	opts := []oauth2.AuthCodeOption{
		oauth2.S256ChallengeOption(f.verifier),
		oauth2.SetAuthURLParam("scope", strings.Join(consentScopes(f.src.acct), " ")),
	}
	if mb := f.src.acct.Mailbox; mb != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", mb))
	}
	return f.cfg.AuthCodeURL(f.state, opts...)
}

// consentScopes are the scopes a delegated sign-in asks consent for: the
// provider's mail scopes and, for an account that sends through Graph
// (upstream graph or auto), Graph's, which a user can consent to at the
// same sign-in instead of an administrator granting them in Entra
// (without either, the Graph token request fails with AADSTS65001).
func consentScopes(acct *config.Account) []string {
	scopes := slices.Clone(acct.ProviderRef.Scopes)
	if !acct.SendsThroughGraph() {
		return scopes
	}
	for _, sc := range acct.ProviderRef.Graph.Scopes {
		if !slices.Contains(scopes, sc) {
			scopes = append(scopes, sc)
		}
	}
	return scopes
}

// State is the flow's state parameter, for a web handler that keeps several
// flows and must find the one a callback belongs to.
func (f *AuthCodeFlow) State() string { return f.state }

// Callback handles the query of the redirect: an error the provider sent
// (consent declined, AADSTS…) as an *Error, else Exchange of code and state.
func (f *AuthCodeFlow) Callback(ctx context.Context, query url.Values) error {
	get := query.Get
	if code := get("error"); code != "" {
		if subtle.ConstantTimeCompare([]byte(get("state")), []byte(f.state)) != 1 {
			return errStateMismatch
		}
		desc := get("error_description")
		eb := errorBody{Code: code, Description: desc, AADSTS: aadstsPrefix(desc)}
		return classifyBody(eb, 0, f.src.now(), grantAuthCode, fmt.Errorf("authorization redirect: %s", code))
	}
	return f.Exchange(ctx, get("code"), get("state"))
}

// Exchange checks state, redeems code with the PKCE verifier (and the
// client secret or assertion of a confidential app) and saves the refresh
// token. After it succeeds, a running Source for the account should be told
// with Reload.
func (f *AuthCodeFlow) Exchange(ctx context.Context, code, state string) error {
	if subtle.ConstantTimeCompare([]byte(state), []byte(f.state)) != 1 {
		return errStateMismatch
	}
	if code == "" {
		return &Error{Class: NeedsSignIn, Reason: "the redirect carries no authorization code", Fix: "run the sign-in again"}
	}
	f.mu.Lock()
	if f.used {
		f.mu.Unlock()
		return &Error{Class: NeedsSignIn, Reason: "this sign-in was already completed", Fix: "start a new sign-in"}
	}
	f.used = true
	f.mu.Unlock()

	opts := []oauth2.AuthCodeOption{
		oauth2.VerifierOption(f.verifier),
		oauth2.SetAuthURLParam("scope", strings.Join(f.cfg.Scopes, " ")),
	}
	ap, err := f.src.authParams()
	if err != nil {
		return err
	}
	for k, v := range ap {
		opts = append(opts, oauth2.SetAuthURLParam(k, v[0]))
	}
	tok, err := f.cfg.Exchange(context.WithValue(ctx, oauth2.HTTPClient, f.src.client), code, opts...)
	if err != nil {
		e := classify(err, grantAuthCode, f.src.now())
		f.src.logFailure(e)
		return e
	}
	return f.src.saveSignIn(tok)
}

// saveSignIn stores the refresh token of a fresh sign-in.
func (s *Source) saveSignIn(tok *oauth2.Token) error {
	if tok.RefreshToken == "" {
		return &Error{Class: NeedsSignIn, Reason: "the sign-in returned no refresh token", Fix: "add offline_access to the provider's scopes"}
	}
	// A sign-in starts a new chain of rotations, newer than any other
	// record of the account (tokenstore.Record.Newer).
	rec := tokenstore.Record{RefreshToken: tok.RefreshToken, Scopes: s.prov.Scopes, Updated: s.now(), SignedIn: s.now()}
	if err := s.store.Save(s.acct.Name, rec); err != nil {
		return &Error{Class: Transient, Reason: "cannot save the refresh token", Fix: "check state_dir; a token file written with another key must be deleted first", Err: err}
	}
	s.log.Info("signed in; refresh token saved", slog.String("mailbox", s.acct.Mailbox))
	return nil
}
