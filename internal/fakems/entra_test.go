package fakems

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func TestClientCredentialsSecret(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	tok, err := daemonConfig(s).Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(tok.AccessToken); n < 1500 || n > 3000 {
		t.Errorf("access token is %d bytes, want a realistic 1.5–3 KB", n)
	}
	if strings.Count(tok.AccessToken, ".") != 2 {
		t.Errorf("access token does not look like a JWT")
	}
	if tok.RefreshToken != "" {
		t.Errorf("client credentials returned a refresh token")
	}
	if d := time.Until(tok.Expiry); d < 59*time.Minute || d > 91*time.Minute {
		t.Errorf("token lifetime %v, want 60–90 min", d)
	}
	if tok.Extra("ext_expires_in") == nil {
		t.Errorf("no ext_expires_in")
	}
	if got := s.TokenRequests(); got != 1 {
		t.Errorf("TokenRequests = %d, want 1", got)
	}
}

func TestClientCredentialsBasicAuth(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	cfg := daemonConfig(s)
	cfg.AuthStyle = oauth2.AuthStyleInHeader
	if _, err := cfg.Token(ctxWithClient(t, s)); err != nil {
		t.Fatal(err)
	}
}

func TestClientCredentialsErrors(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	ctx := ctxWithClient(t, s)

	cfg := daemonConfig(s)
	cfg.ClientSecret = "wrong"
	_, err := cfg.Token(ctx)
	wantAADError(t, err, 401, "invalid_client", 7000215)

	cfg = daemonConfig(s)
	cfg.ClientID = "99999999-0000-0000-0000-000000000000"
	_, err = cfg.Token(ctx)
	wantAADError(t, err, 400, "unauthorized_client", 700016)

	cfg = daemonConfig(s)
	cfg.Scopes = []string{"https://outlook.office.com/SMTP.Send"}
	_, err = cfg.Token(ctx)
	wantAADError(t, err, 400, "invalid_scope", 1002012)

	cfg = daemonConfig(s)
	cfg.ClientID, cfg.ClientSecret = publicID, ""
	_, err = cfg.Token(ctx)
	wantAADError(t, err, 401, "invalid_client", 7000218)

	cfg = daemonConfig(s)
	cfg.ClientID, cfg.ClientSecret = publicID, "a secret"
	_, err = cfg.Token(ctx)
	wantAADError(t, err, 401, "invalid_client", 700025)
}

func TestTenantInURL(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{Tenant: "fabrikam.onmicrosoft.com"})
	if !strings.HasSuffix(s.TokenURL, "/fabrikam.onmicrosoft.com/oauth2/v2.0/token") {
		t.Fatalf("TokenURL = %s", s.TokenURL)
	}
	cfg := daemonConfig(s)
	cfg.TokenURL = strings.Replace(s.TokenURL, "fabrikam", "contoso", 1)
	_, err := cfg.Token(ctxWithClient(t, s))
	wantAADError(t, err, 400, "invalid_request", 90002)
}

// assertionFor builds a client assertion as MSAL does.
func assertionFor(t *testing.T, key *rsa.PrivateKey, cert *x509.Certificate, aud, iss string, exp time.Time) string {
	t.Helper()
	sum := sha256.Sum256(cert.Raw)
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]any{"alg": "RS256", "typ": "JWT", "x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}) + "." +
		enc(map[string]any{"aud": aud, "iss": iss, "sub": iss, "jti": "x", "nbf": time.Now().Unix(), "exp": exp.Unix()})
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func selfSigned(t *testing.T) (*rsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "daemon"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func TestClientAssertion(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	key, cert := selfSigned(t)
	otherKey, _ := selfSigned(t)
	const certApp = "33333333-3333-3333-3333-333333333333"
	s.AddApp(App{ClientID: certApp, Certificate: cert})
	s.GrantApp(certApp, alice)
	ctx := ctxWithClient(t, s)

	token := func(assertion string) (*oauth2.Token, error) {
		cfg := daemonConfig(s)
		cfg.ClientID, cfg.ClientSecret = certApp, ""
		cfg.EndpointParams = url.Values{
			"client_assertion_type": {assertionType},
			"client_assertion":      {assertion},
		}
		return cfg.Token(ctx)
	}
	hour := time.Now().Add(time.Hour)
	if _, err := token(assertionFor(t, key, cert, s.TokenURL, certApp, hour)); err != nil {
		t.Fatalf("valid assertion: %v", err)
	}
	_, err := token(assertionFor(t, otherKey, cert, s.TokenURL, certApp, hour))
	wantAADError(t, err, 401, "invalid_client", 700027)
	_, err = token(assertionFor(t, key, cert, s.TokenURL, certApp, time.Now().Add(-time.Hour)))
	wantAADError(t, err, 401, "invalid_client", 700024)
	_, err = token(assertionFor(t, key, cert, "https://example.com/token", certApp, hour))
	wantAADError(t, err, 401, "invalid_client", 0)
	_, err = token("not.a.jwt")
	wantAADError(t, err, 400, "invalid_request", 50027)
}

// noRedirect is an HTTP client that shows the authorize redirect instead of
// following it to a callback nobody listens on.
func noRedirect(s *Server) *http.Client {
	c := s.HTTPClient()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

func authorize(t *testing.T, s *Server, cfg *oauth2.Config, opts ...oauth2.AuthCodeOption) url.Values {
	t.Helper()
	resp, err := noRedirect(s).Get(cfg.AuthCodeURL("state-123", opts...))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: HTTP %d", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(loc.String(), cfg.RedirectURL+"?") {
		t.Fatalf("redirected to %s", loc)
	}
	q := loc.Query()
	if q.Get("state") != "state-123" {
		t.Errorf("state = %q", q.Get("state"))
	}
	return q
}

func TestAuthCodePKCE(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	cfg := publicConfig(s)
	ctx := ctxWithClient(t, s)
	verifier := oauth2.GenerateVerifier()
	q := authorize(t, s, cfg, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", alice))
	code := q.Get("code")
	if code == "" {
		t.Fatalf("no code: %v", q)
	}

	_, err := cfg.Exchange(ctx, code, oauth2.VerifierOption("wrong-verifier-wrong-verifier-wrong-verifier"))
	wantAADError(t, err, 400, "invalid_grant", 50148)

	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" {
		t.Error("no refresh token despite offline_access")
	}
	if got := tok.Extra("scope"); !strings.Contains(got.(string), "SMTP.Send") {
		t.Errorf("scope = %v", got)
	}
	_, err = cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	wantAADError(t, err, 400, "invalid_grant", 54005)

	// A code redeemed with another redirect URI fails.
	q = authorize(t, s, cfg, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", alice))
	other := *cfg
	other.RedirectURL = "http://localhost:9999/cb"
	_, err = other.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	wantAADError(t, err, 400, "invalid_grant", 500112)

	// Without offline_access there is no refresh token.
	noOffline := *cfg
	noOffline.Scopes = delegatedScopes[:2]
	q = authorize(t, s, &noOffline, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", alice))
	tok, err = noOffline.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken != "" {
		t.Error("refresh token without offline_access")
	}
}

func TestAuthorizeErrors(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	cfg := publicConfig(s)
	// Three mailboxes and no login_hint: the fake cannot pick a user.
	q := authorize(t, s, cfg)
	if q.Get("error") != "login_required" {
		t.Errorf("error = %q, want login_required", q.Get("error"))
	}
	// Scopes of two resources in one request.
	two := *cfg
	two.Scopes = []string{"https://outlook.office.com/SMTP.Send", "https://graph.microsoft.com/Mail.Send"}
	q = authorize(t, s, &two, oauth2.SetAuthURLParam("login_hint", alice))
	if q.Get("error") != "invalid_scope" || !strings.HasPrefix(q.Get("error_description"), "AADSTS28000") {
		t.Errorf("got %v", q)
	}
	// An unregistered redirect URI is refused on Entra's own page.
	bad := *cfg
	bad.RedirectURL = "https://evil.example/cb"
	resp, err := noRedirect(s).Get(bad.AuthCodeURL("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unregistered redirect: HTTP %d", resp.StatusCode)
	}
}

func TestRefreshRotation(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{RefreshTokenGrace: -1})
	cfg := publicConfig(s)
	ctx := ctxWithClient(t, s)
	rt := s.IssueRefreshToken(publicID, alice)

	tok, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.RefreshToken == rt {
		t.Fatal("refresh token was not rotated")
	}
	// No grace: the old token is dead.
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	wantAADError(t, err, 400, "invalid_grant", 70008)

	// The new one works, and a revoked user's does not.
	tok2, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
	if err != nil {
		t.Fatal(err)
	}
	s.RevokeUser(alice)
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok2.RefreshToken}).Token()
	wantAADError(t, err, 400, "invalid_grant", 50173)

	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: "1.AQbogus"}).Token()
	wantAADError(t, err, 400, "invalid_grant", 9002313)

	rt = s.IssueRefreshToken(publicID, bob)
	s.ExpireRefreshTokens(bob)
	_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	wantAADError(t, err, 400, "invalid_grant", 700082)
}

func TestRefreshGrace(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	cfg := publicConfig(s)
	ctx := ctxWithClient(t, s)
	rt := s.IssueRefreshToken(publicID, alice)
	for i := range 2 {
		if _, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token(); err != nil {
			t.Fatalf("use %d within the grace period: %v", i, err)
		}
	}
}

func TestRefreshConfidentialNeedsSecret(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	ctx := ctxWithClient(t, s)
	rt := s.IssueRefreshToken(daemonID, alice)
	cfg := publicConfig(s)
	cfg.ClientID = daemonID
	_, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	wantAADError(t, err, 401, "invalid_client", 7000218)
	cfg.ClientSecret = daemonPass
	if _, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token(); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceCode(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	cfg := publicConfig(s)
	ctx := ctxWithClient(t, s)
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if da.VerificationURI != s.DeviceLoginURL || da.Interval != 1 || da.UserCode == "" {
		t.Errorf("device auth = %+v", da)
	}
	approved := make(chan struct{})
	go func() {
		defer close(approved)
		time.Sleep(1500 * time.Millisecond) // at least one authorization_pending
		if err := s.ApproveDevice(da.UserCode, alice); err != nil {
			t.Error(err)
		}
	}()
	defer func() { <-approved }()
	tok, err := cfg.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" {
		t.Error("no refresh token")
	}

	da, err = cfg.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DenyDevice(da.UserCode); err != nil {
		t.Fatal(err)
	}
	_, err = cfg.DeviceAccessToken(ctx, da)
	wantAADError(t, err, 400, "access_denied", 0)
}

func TestDeviceCodeSlowDown(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{DeviceCodeInterval: 5})
	ctx := ctxWithClient(t, s)
	da, err := publicConfig(s).DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	poll := func() error {
		_, err := publicConfig(s).Exchange(ctx, "",
			oauth2.SetAuthURLParam("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
			oauth2.SetAuthURLParam("device_code", da.DeviceCode))
		return err
	}
	wantAADError(t, poll(), 400, "authorization_pending", 70016)
	wantAADError(t, poll(), 400, "slow_down", 0)
}

func TestPasswordGrant(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	cfg := publicConfig(s)
	ctx := ctxWithClient(t, s)
	tok, err := cfg.PasswordCredentialsToken(ctx, alice, alicePass)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Errorf("token = %+v", tok)
	}
	_, err = cfg.PasswordCredentialsToken(ctx, alice, "wrong")
	wantAADError(t, err, 400, "invalid_grant", 50126)

	s.RequireMFA(alice)
	_, err = cfg.PasswordCredentialsToken(ctx, alice, alicePass)
	wantAADError(t, err, 400, "invalid_grant", 50076)

	conf := publicConfig(s)
	conf.ClientID = daemonID
	_, err = conf.PasswordCredentialsToken(ctx, bob, "bob's password")
	wantAADError(t, err, 401, "invalid_client", 7000218)
}

func TestInjectedFailuresAndDelay(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	ctx := ctxWithClient(t, s)
	s.FailTokenRequests(2, TokenFailure{Status: 503, Error: "temporarily_unavailable", AADSTS: 90033, Description: "A transient error has occurred. Please try again."})
	for range 2 {
		_, err := daemonConfig(s).Token(ctx)
		wantAADError(t, err, 503, "temporarily_unavailable", 90033)
	}
	if _, err := daemonConfig(s).Token(ctx); err != nil {
		t.Fatalf("after the injected failures: %v", err)
	}

	s.FailTokenRequests(1, TokenFailure{Status: 502, Body: "<html>Bad Gateway</html>"})
	if _, err := daemonConfig(s).Token(ctx); err == nil {
		t.Fatal("gateway page: no error")
	}

	s.SetTokenDelay(300 * time.Millisecond)
	start := time.Now()
	if _, err := daemonConfig(s).Token(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("answer after %v, want the 300ms delay", d)
	}
	if got := s.TokenRequests(); got != 5 {
		t.Errorf("TokenRequests = %d, want 5", got)
	}
}

func TestShortTokenLifetime(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{TokenLifetime: 3 * time.Second})
	tok, err := daemonConfig(s).Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Extra("expires_in"); got != float64(3) {
		t.Errorf("expires_in = %v, want 3", got)
	}
}

func TestIntrospection(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	introspect := func(token string) map[string]any {
		t.Helper()
		resp, err := s.HTTPClient().PostForm(s.IntrospectURL, url.Values{"token": {token}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := introspect(s.IssueAccessToken(publicID, alice)); got["active"] != true || got["username"] != alice {
		t.Errorf("delegated: %v", got)
	}
	if got := introspect(s.IssueAccessToken(daemonID, "")); got["active"] != true || got["username"] != alice {
		t.Errorf("app-only granted one mailbox: %v", got)
	}
	if got := introspect("nope"); got["active"] != false {
		t.Errorf("unknown: %v", got)
	}
	tok := s.IssueAccessToken(publicID, bob)
	s.ExpireAccessTokens(bob)
	if got := introspect(tok); got["active"] != false {
		t.Errorf("expired: %v", got)
	}
}

func TestHTTPS(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{HTTPS: true})
	if !strings.HasPrefix(s.TokenURL, "https://127.0.0.1:") {
		t.Fatalf("TokenURL = %s", s.TokenURL)
	}
	if _, err := daemonConfig(s).Token(ctxWithClient(t, s)); err != nil {
		t.Fatal(err)
	}
}
