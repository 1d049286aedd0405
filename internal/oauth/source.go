// Package oauth gets OAuth 2.0 access tokens for the relay's accounts: one
// Source per account caches the access token, refreshes it before it expires,
// shares one request between concurrent callers, persists rotated refresh
// tokens before using them, and classifies every failure as Transient or
// NeedsSignIn with plain-words advice for the administrator.
//
// Grants: client credentials (secret or certificate assertion), refresh token
// (after an authorization code or device code sign-in, see login.go), and
// password (ROPC, also as per-login passthrough). golang.org/x/oauth2 does the
// HTTP of every grant.
//
// Several relay instances share a delegated grant through a ClusterStore
// (cluster.go, shared.go): one refresher per account under a lease,
// rotations written with compare-and-swap, access tokens shared.
//
// Out of scope: the CLI and the admin pages (they call LoginAuthCode,
// LoginDevice and AuthCodeFlow), token introspection and id tokens.
package oauth

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// Store persists refresh tokens; *tokenstore.Store implements it, and
// *ClusterStore shares them with other relay instances.
type Store interface {
	Load(account string) (tokenstore.Record, error)
	Save(account string, r tokenstore.Record) error
}

// Options are a Source's dependencies.
type Options struct {
	// Store holds refresh tokens. Required for the authorization_code and
	// device_code grants; unused otherwise. A *ClusterStore shares them
	// (and the access tokens) with other relay instances.
	Store Store
	// HTTPClient makes the token requests. Nil: a client with timeouts,
	// TLS 1.2 minimum and the proxy from the environment (HTTPS_PROXY).
	HTTPClient *http.Client
	// Logger receives structured events (never tokens or secrets). Nil:
	// discard.
	Logger *slog.Logger
	// Now is the clock for expiry decisions. Nil: time.Now. Client
	// assertions are always stamped with the real time: Entra checks them.
	Now func() time.Time
	// OnRequest, when set, is told about every token request a Source
	// makes for the relay (refreshes and passthrough sign-ins, not the
	// interactive logins): err is nil on success. For metrics; it must not
	// block.
	OnRequest func(err *Error, took time.Duration)
	// Scopes, when set, replace the provider's scopes in token requests:
	// a second Source of the same account for another resource
	// (Microsoft Graph's scopes, the provider's graph.scopes). Both read
	// and save the account's one refresh token in Store, so a rotation by
	// one is what the other redeems next; interactive sign-ins keep
	// asking for the provider's scopes.
	Scopes []string
	// Resource names the resource in the log ("graph"); "" for the mail
	// servers'.
	Resource string
	// RefreshMargin is how long before expiry Run refreshes the access
	// token. Zero: 5 minutes. For short-lived tokens at most half the
	// lifetime is used.
	RefreshMargin time.Duration
}

const (
	defaultRefreshMargin = 5 * time.Minute
	// minValidity: Token returns the cached access token only while it has
	// at least this much left (or a quarter of its lifetime, if shorter),
	// so that a session started with it does not fail halfway through
	// authentication upstream.
	minValidity = time.Minute
	// usableSlack: when a refresh fails, a cached token with this much left
	// is still handed out rather than failing the login.
	usableSlack = 15 * time.Second
	// flightTimeout bounds the shared token request, which is detached from
	// the callers' contexts: one caller giving up must not fail the others.
	flightTimeout = 45 * time.Second
	// defaultLifetime is assumed when the provider gives no expires_in.
	defaultLifetime = time.Hour
	// httpTimeout bounds one token request in the default HTTP client.
	httpTimeout = 30 * time.Second
)

// Source gets access tokens for one account. It is safe for concurrent use.
type Source struct {
	acct   *config.Account
	prov   *config.Provider
	grant  string
	scopes []string // of the token requests (Options.Scopes or the provider's)
	store  Store
	client *http.Client
	log    *slog.Logger
	now    func() time.Time
	margin time.Duration
	// onRequest is Options.OnRequest (nil: none).
	onRequest func(*Error, time.Duration)
	signer    *assertionSigner // nil unless a client certificate is configured
	pwKey     []byte           // HMAC key for the passthrough password cache
	sf        singleflight.Group
	wake      chan struct{} // tells Run that the token or the store changed
	// cluster is Options.Store when it is a ClusterStore and the grant
	// keeps a refresh token (nil otherwise); holder names this source in
	// the account's refresh lease.
	cluster *ClusterStore
	holder  string

	// flights counts the goroutines of shared (one per caller that found
	// no fresh token, waiting on the request it shares); flightsIdle (L:
	// &flightMu) is broadcast when it drops to zero. Run waits for zero
	// before it returns, so that no token request, nor the save of a
	// rotated refresh token, outlives the refresher; flightTimeout bounds
	// the wait.
	flightMu    sync.Mutex
	flights     int
	flightsIdle sync.Cond

	mu          sync.Mutex
	access      string
	expiry      time.Time
	lifetime    time.Duration
	jitter      time.Duration // how much earlier than the margin Run refreshes this token
	gen         uint64        // bumped whenever access changes
	refresh     string        // last refresh token read or saved (fallback when the store cannot be read)
	refreshRec  tokenstore.Record
	rejected    string       // the access token the upstream rejected (Invalidate): never taken from the shared store again
	dead        *deadRefresh // the refresh token the provider rejected
	inFlight    int
	lastErr     *Error
	lastSuccess time.Time
	retryAt     time.Time
	holdUntil   time.Time // from Retry-After: Token fails fast until then
	pw          []pwEntry
}

// NewSource checks acct's provider settings and returns its token source.
// acct.ProviderRef must be set (config.Load does it). A client certificate is
// loaded here so that a wrong path or a key that does not match fails at
// start-up rather than at the first login.
func NewSource(acct *config.Account, opts Options) (*Source, error) {
	if acct == nil || acct.ProviderRef == nil {
		return nil, errors.New("oauth: account has no provider")
	}
	p := acct.ProviderRef
	s := &Source{
		acct:      acct,
		prov:      p,
		grant:     p.Grant,
		scopes:    p.Scopes,
		store:     opts.Store,
		client:    opts.HTTPClient,
		log:       opts.Logger,
		now:       opts.Now,
		margin:    opts.RefreshMargin,
		wake:      make(chan struct{}, 1),
		onRequest: opts.OnRequest,
		pwKey:     make([]byte, 32),
	}
	s.flightsIdle.L = &s.flightMu
	if s.client == nil {
		s.client = DefaultHTTPClient()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With(slog.String("account", acct.Name), slog.String("grant", p.Grant))
	if len(opts.Scopes) > 0 {
		s.scopes = opts.Scopes
	}
	if opts.Resource != "" {
		s.log = s.log.With(slog.String("resource", opts.Resource))
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.margin <= 0 {
		s.margin = defaultRefreshMargin
	}
	if _, err := rand.Read(s.pwKey); err != nil {
		return nil, fmt.Errorf("oauth: %w", err)
	}
	if p.ClientID == "" {
		return nil, fmt.Errorf("oauth: account %s: provider %s has no client_id", acct.Name, p.Name)
	}
	if p.TokenURL == "" {
		return nil, fmt.Errorf("oauth: account %s: provider %s has no token_url", acct.Name, p.Name)
	}
	if p.ClientCertificateFile != "" {
		signer, err := loadAssertionSigner(p.ClientCertificateFile, p.ClientKeyFile)
		if err != nil {
			return nil, fmt.Errorf("oauth: provider %s: %w", p.Name, err)
		}
		s.signer = signer
	}
	switch p.Grant {
	case grantClientCredentials:
		if p.ClientSecret == "" && s.signer == nil {
			return nil, fmt.Errorf("oauth: provider %s: client_credentials needs client_secret or client_certificate_file", p.Name)
		}
	case grantAuthCode, grantDeviceCode:
		if s.store == nil {
			return nil, fmt.Errorf("oauth: account %s: grant %s needs a token store", acct.Name, p.Grant)
		}
		if cs, ok := s.store.(*ClusterStore); ok {
			id := make([]byte, 6)
			if _, err := rand.Read(id); err != nil {
				return nil, fmt.Errorf("oauth: %w", err)
			}
			s.cluster, s.holder = cs, cs.shared.Instance()+"/"+hex.EncodeToString(id)
		}
	case grantPassword:
		if acct.Password == "" && !acct.PasswordPassthrough {
			return nil, fmt.Errorf("oauth: account %s: grant password needs the mailbox password or password_passthrough", acct.Name)
		}
	default:
		return nil, fmt.Errorf("oauth: provider %s: unknown grant %q", p.Name, p.Grant)
	}
	return s, nil
}

// DefaultHTTPClient is the client used when Options.HTTPClient is nil:
// bounded timeouts (a hung identity provider must not hang logins), TLS 1.2
// minimum, and HTTPS_PROXY/NO_PROXY from the environment, which corporate
// networks need to reach login.microsoftonline.com.
func DefaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: httpTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: httpTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   2,
			ForceAttemptHTTP2:     true,
		},
	}
}

// Token returns an access token: the cached one while it has more than a
// minute left, otherwise a new one from a request shared by all concurrent
// callers. If that request fails but the cached token has not expired yet,
// the cached token is returned: a refresh failure must not fail a login the
// old token can still serve.
func (s *Source) Token(ctx context.Context) (string, error) {
	if s.grant == grantPassword && s.acct.Password == "" {
		return "", &Error{Class: NeedsSignIn, Reason: "this account uses password passthrough: tokens are only obtained with the app's password", Fix: "use TokenForPassword, or set the mailbox password for the account"}
	}
	s.mu.Lock()
	now := s.now()
	if s.freshLocked(now) {
		tok := s.access
		s.mu.Unlock()
		return tok, nil
	}
	if now.Before(s.holdUntil) && s.lastErr != nil {
		err := s.lastErr
		tok, ok := s.usableLocked(now)
		s.mu.Unlock()
		if ok {
			return tok, nil
		}
		return "", err
	}
	gen := s.gen
	s.mu.Unlock()

	tok, err := s.shared(ctx, "token", func(ctx context.Context) (string, *Error) { return s.refreshToken(ctx, gen) })
	if err != nil {
		s.mu.Lock()
		old, ok := s.usableLocked(s.now())
		s.mu.Unlock()
		if ok {
			return old, nil
		}
		return "", err
	}
	return tok, nil
}

// Invalidate drops the cached access token; the next Token call gets a new
// one. The proxy calls it when the upstream server rejects a token.
func (s *Source) Invalidate() {
	s.mu.Lock()
	if s.access != "" {
		s.rejected = s.access
	}
	s.access, s.expiry, s.lifetime = "", time.Time{}, 0
	s.gen++
	s.mu.Unlock()
	s.log.Info("access token invalidated")
}

// Reload drops the cached access token and forgets the last failure, so the
// next Token (and Run, at once) redeems the refresh token now in the store:
// call it after a sign-in in this process (the admin page). Every refresh
// reads the store anyway, so a sign-in by another process (`oauthrelay
// login`) is picked up at the next refresh without Reload.
func (s *Source) Reload() {
	s.mu.Lock()
	s.refresh = ""
	s.dead = nil
	s.access, s.expiry, s.lifetime = "", time.Time{}, 0
	s.gen++
	s.lastErr = nil
	s.holdUntil, s.retryAt = time.Time{}, time.Time{}
	s.mu.Unlock()
	s.signal()
}

// shared runs fn once for all concurrent callers with the same key. fn gets a
// context detached from the callers' (values kept, cancellation dropped) with
// flightTimeout: a caller whose context ends gets its ctx error at once while
// the request continues for the others. The wait is on a goroutine counted
// in flights (counted here, before it starts, so waitFlights cannot miss
// it), which singleflight's DoChan would not let us count.
func (s *Source) shared(ctx context.Context, key string, fn func(context.Context) (string, *Error)) (string, error) {
	ch := make(chan singleflight.Result, 1)
	s.flightMu.Lock()
	s.flights++
	s.flightMu.Unlock()
	go func() {
		defer s.flightDone()
		v, err, shared := s.sf.Do(key, func() (any, error) {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flightTimeout)
			defer cancel()
			tok, err := fn(fctx)
			if err != nil {
				return "", err
			}
			return tok, nil
		})
		ch <- singleflight.Result{Val: v, Err: err, Shared: shared}
	}()
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", classify(ctx.Err(), s.grant, s.now())
	}
}

// flightDone uncounts a goroutine of shared that has its result.
func (s *Source) flightDone() {
	s.flightMu.Lock()
	defer s.flightMu.Unlock()
	s.flights--
	if s.flights == 0 {
		s.flightsIdle.Broadcast()
	}
}

// waitFlights returns when no goroutine of shared is running.
func (s *Source) waitFlights() {
	s.flightMu.Lock()
	defer s.flightMu.Unlock()
	for s.flights > 0 {
		s.flightsIdle.Wait()
	}
}

// refreshToken is the shared request behind Token and Run. gen is the
// generation the first caller saw: if the token changed since, that caller
// raced with a request that just finished and the new token is used.
func (s *Source) refreshToken(ctx context.Context, gen uint64) (string, *Error) {
	s.mu.Lock()
	if s.gen != gen && s.freshLocked(s.now()) {
		tok := s.access
		s.mu.Unlock()
		return tok, nil
	}
	s.inFlight++
	s.mu.Unlock()

	start := s.now()
	res, err := s.fetch(ctx)
	if err == nil || !err.quiet {
		s.observe(err, start)
	}

	s.mu.Lock()
	s.inFlight--
	if err != nil {
		s.lastErr = err
		if !err.RetryAt.IsZero() {
			s.holdUntil, s.retryAt = err.RetryAt, err.RetryAt
		}
		s.mu.Unlock()
		if !err.quiet {
			s.logFailure(err)
		}
		return "", err
	}
	s.setTokenLocked(res, start)
	exp := s.expiry
	s.mu.Unlock()
	s.signal()
	s.log.Debug("access token obtained", slog.Time("expiry", exp))
	return res.access, nil
}

// observe reports a finished token request to Options.OnRequest.
func (s *Source) observe(err *Error, start time.Time) {
	if s.onRequest != nil {
		s.onRequest(err, s.now().Sub(start))
	}
}

func (s *Source) setTokenLocked(res tokenResult, start time.Time) {
	s.access = res.access
	s.lifetime = res.lifetime
	s.expiry = start.Add(res.lifetime)
	if !res.expiry.IsZero() {
		s.expiry = res.expiry // taken from the shared store, or stamped there
	}
	s.jitter = jitter(s.effectiveMarginLocked() / 10)
	s.gen++
	s.lastErr = nil
	s.lastSuccess = s.now()
	s.holdUntil, s.retryAt = time.Time{}, time.Time{}
}

// freshLocked: the cached token may be handed out without a request.
func (s *Source) freshLocked(now time.Time) bool {
	return s.access != "" && s.expiry.Sub(now) > min(minValidity, s.lifetime/4)
}

// usableLocked: the cached token has not expired yet (fallback after a
// failed refresh).
func (s *Source) usableLocked(now time.Time) (string, bool) {
	if s.access != "" && s.expiry.Sub(now) > min(usableSlack, s.lifetime/4) {
		return s.access, true
	}
	return "", false
}

func (s *Source) effectiveMarginLocked() time.Duration {
	return min(s.margin, s.lifetime/2)
}

func (s *Source) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Source) logFailure(e *Error) {
	attrs := []any{
		slog.String("class", e.Class.String()),
		slog.String("reason", e.Reason),
	}
	if e.Code != "" {
		attrs = append(attrs, slog.String("code", e.Code))
	}
	if e.AADSTS != 0 {
		attrs = append(attrs, slog.Int("aadsts", e.AADSTS))
	}
	if e.Fix != "" {
		attrs = append(attrs, slog.String("fix", e.Fix))
	}
	if e.Err != nil && e.Code == "" {
		attrs = append(attrs, slog.String("err", e.Err.Error()))
	}
	if e.Class == NeedsSignIn {
		s.log.Error("token request failed", attrs...)
		return
	}
	s.log.Warn("token request failed", attrs...)
}
