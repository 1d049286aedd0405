package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// The sign-in from the status page.
//
// CSRF: Sign in is a POST form carrying a random per-process token that
// only a page served by this process contains (another site cannot read it).
// A plain GET link would let any web page the administrator visits start a
// sign-in; an identity provider that signs the browser in silently (SSO)
// would then bind the account to whoever is signed in to that browser. The
// callback needs no token of its own: the flow's random state parameter,
// kept here, is the proof that this server started the sign-in, and it is
// used once.

const (
	flowTTL  = 10 * time.Minute // Entra's authorization codes live 10 minutes too
	maxFlows = 32               // pending sign-ins kept at once; the oldest go first
)

// pendingFlow is a sign-in between the redirect to the identity provider
// and the callback.
type pendingFlow struct {
	account string
	flow    *oauth.AuthCodeFlow
	expires time.Time
}

// flows are the pending sign-ins by state; bounded in number and age.
type flows struct {
	mu sync.Mutex
	m  map[string]*pendingFlow
}

func (f *flows) add(state string, p *pendingFlow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	for k, v := range f.m {
		if now.After(v.expires) {
			delete(f.m, k)
		}
	}
	for len(f.m) >= maxFlows {
		var oldest string
		for k, v := range f.m {
			if oldest == "" || v.expires.Before(f.m[oldest].expires) {
				oldest = k
			}
		}
		delete(f.m, oldest)
	}
	f.m[state] = p
}

// take removes and returns the unexpired flow with this state, or nil.
func (f *flows) take(state string) *pendingFlow {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.m[state]
	delete(f.m, state)
	if p == nil || time.Now().After(p.expires) {
		return nil
	}
	return p
}

// account returns the account in force called name, or nil.
func (s *Server) account(name string) *account {
	for _, a := range accounts(s.relay) {
		if a.Name == name {
			return &a
		}
	}
	return nil
}

// canSignIn: the status page offers Sign in for this account (the
// authorization code grant, or the device code grant).
func (s *Server) canSignIn(a *account) bool {
	if s.opts.Store == nil {
		return false
	}
	switch p := a.ProviderRef; p.Grant {
	case config.GrantAuthorizationCode:
		return p.AuthorizeURL != ""
	case config.GrantDeviceCode:
		return p.DeviceURL != ""
	}
	return false
}

// redirectURL is the provider's configured redirect URI, else this
// listener's /oauth2/callback at the host the page was reached on (https
// when the listener has TLS).
func redirectURL(p *config.Provider, r *http.Request) string {
	if p.RedirectURL != "" {
		return p.RedirectURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return (&url.URL{Scheme: scheme, Host: r.Host, Path: "/oauth2/callback"}).String()
}

// signin starts the authorization code flow of the posted account and sends
// the browser to the identity provider.
func (s *Server) signin(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" ||
		subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf)) != 1 {
		s.renderStatus(w, r, http.StatusForbidden, &notice{Error: true,
			Text: "The sign-in request did not come from this page. Start it again with the Sign in button."})
		return
	}
	name := r.PostFormValue("account")
	a := s.account(name)
	if a == nil || !s.canSignIn(a) {
		s.renderStatus(w, r, http.StatusBadRequest, &notice{Error: true,
			Text: "There is no account " + quote(name) + " that signs in with the authorization code or device code grant."})
		return
	}
	if a.ProviderRef.Grant == config.GrantDeviceCode {
		s.signinDevice(w, r, a)
		return
	}
	flow, err := oauth.NewAuthCodeFlow(a.Account, redirectURL(a.ProviderRef, r), oauth.Options{
		Store:      s.opts.Store,
		HTTPClient: s.opts.HTTPClient,
		Logger:     s.log,
	})
	if err != nil {
		s.log.Error("sign-in cannot start", "account", a.Name, "err", err)
		s.renderStatus(w, r, http.StatusInternalServerError, &notice{Error: true,
			Text: "The sign-in for " + a.Name + " cannot start: " + err.Error()})
		return
	}
	s.flows.add(flow.State(), &pendingFlow{account: a.Name, flow: flow, expires: time.Now().Add(flowTTL)})
	s.log.Info("sign-in started", "account", a.Name)
	http.Redirect(w, r, flow.URL(), http.StatusSeeOther)
}

// callback finishes a sign-in: it redeems the code, tells the account's
// token source to read the new refresh token, gets a first access token so
// the page shows the outcome, and sends the browser back to the page.
func (s *Server) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := s.flows.take(q.Get("state"))
	if p == nil {
		s.renderStatus(w, r, http.StatusBadRequest, &notice{Error: true,
			Text: "This sign-in is unknown or older than 10 minutes (or the relay restarted). Start it again with the Sign in button."})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callbackTimeout)
	defer cancel()
	if err := p.flow.Callback(ctx, q); err != nil {
		words := failureWords(err)
		s.log.Warn("sign-in failed", "account", p.account, "err", err)
		s.metrics.recordError(p.account, "sign-in from the status page failed: "+words, fixFor(err, config.GrantAuthorizationCode))
		s.renderStatus(w, r, http.StatusBadGateway, &notice{Error: true,
			Text: "The sign-in for " + p.account + " failed: " + words})
		return
	}
	a := s.account(p.account)
	if a == nil {
		s.renderStatus(w, r, http.StatusOK, &notice{Text: "Signed in, but the account " + quote(p.account) + " is no longer configured."})
		return
	}
	a.Source.Reload()
	if _, err := a.Source.Token(ctx); err != nil {
		s.log.Warn("first token after sign-in failed", "account", a.Name, "err", err)
	}
	s.log.Info("signed in from the status page", "account", a.Name)
	http.Redirect(w, r, "/?signed_in="+url.QueryEscape(a.Name), http.StatusSeeOther)
}

// failureWords is an error in plain words for the page: an *oauth.Error's
// reason and fix, whose fields are safe to show; anything else generically
// (its text may come from anywhere and goes to the log only).
func failureWords(err error) string {
	var oe *oauth.Error
	if !errors.As(err, &oe) {
		return "the redirect from the identity provider was not accepted (the log has the details)"
	}
	words := oe.Reason
	if ref := errorRef(oe); ref != "" {
		words += " (" + ref + ")"
	}
	if oe.Fix != "" {
		words += ". Fix: " + oe.Fix
	}
	return words
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return "“" + s + "”"
}
