package oauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// fakeIdP is a small Entra-like token service for unit tests: /token (all
// grants, refresh-token rotation), /authorize (redirects at once with a code
// bound to the PKCE challenge) and /devicecode. Tests override answers with
// respond.
type fakeIdP struct {
	*httptest.Server
	t *testing.T

	requests atomic.Int64

	mu       sync.Mutex
	forms    []url.Values
	delay    time.Duration
	lifetime int                                           // expires_in, seconds
	respond  func(form url.Values) (int, any, http.Header) // nil: default behaviour
	validRT  map[string]bool
	codes    map[string]codeGrant
	pending  int // device: authorization_pending answers before success
	issued   int
	password string
}

type codeGrant struct{ challenge, redirect string }

func newFakeIdP(t *testing.T) *fakeIdP {
	f := &fakeIdP{t: t, lifetime: 3600, validRT: map[string]bool{}, codes: map[string]codeGrant{}, password: "mailbox-pw"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", f.token)
	mux.HandleFunc("GET /authorize", f.authorize)
	mux.HandleFunc("POST /devicecode", f.devicecode)
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

func (f *fakeIdP) lastForm() url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.forms) == 0 {
		return nil
	}
	return f.forms[len(f.forms)-1]
}

func (f *fakeIdP) set(fn func(f *fakeIdP)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// issueRT makes a refresh token the fake accepts.
func (f *fakeIdP) issueRT() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.newRTLocked()
}

func (f *fakeIdP) newRTLocked() string {
	f.issued++
	rt := fmt.Sprintf("rt-%d", f.issued)
	f.validRT[rt] = true
	return rt
}

func writeJSON(w http.ResponseWriter, status int, v any, hdr http.Header) {
	for k, vv := range hdr {
		w.Header()[k] = vv
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func oauthErr(code string, aadsts int, desc string) map[string]any {
	return map[string]any{
		"error":             code,
		"error_description": fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: 0000\r\nCorrelation ID: 1111\r\nTimestamp: 2026-01-01 00:00:00Z", aadsts, desc),
		"error_codes":       []int{aadsts},
	}
}

func (f *fakeIdP) token(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	form := r.PostForm
	f.requests.Add(1)
	f.mu.Lock()
	f.forms = append(f.forms, form)
	delay, respond := f.delay, f.respond
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if respond != nil {
		status, body, hdr := respond(form)
		if status != 0 {
			writeJSON(w, status, body, hdr)
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.forms)
	ok := func(extra map[string]any) {
		body := map[string]any{"token_type": "Bearer", "expires_in": f.lifetime, "ext_expires_in": f.lifetime, "access_token": fmt.Sprintf("at-%d", n)}
		for k, v := range extra {
			body[k] = v
		}
		writeJSON(w, 200, body, nil)
	}
	switch form.Get("grant_type") {
	case "client_credentials":
		ok(nil)
	case "password":
		if form.Get("password") != f.password {
			writeJSON(w, 400, oauthErr("invalid_grant", 50126, "Error validating credentials due to invalid username or password."), nil)
			return
		}
		ok(nil)
	case "refresh_token":
		if !f.validRT[form.Get("refresh_token")] {
			writeJSON(w, 400, oauthErr("invalid_grant", 700082, "The refresh token has expired due to inactivity."), nil)
			return
		}
		ok(map[string]any{"refresh_token": f.newRTLocked()})
	case "authorization_code":
		g, found := f.codes[form.Get("code")]
		delete(f.codes, form.Get("code"))
		sum := sha256.Sum256([]byte(form.Get("code_verifier")))
		if !found || base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge || form.Get("redirect_uri") != g.redirect {
			writeJSON(w, 400, oauthErr("invalid_grant", 70000, "The provided value for the 'code' parameter is not valid."), nil)
			return
		}
		ok(map[string]any{"refresh_token": f.newRTLocked()})
	case "urn:ietf:params:oauth:grant-type:device_code":
		if f.pending > 0 {
			f.pending--
			writeJSON(w, 400, oauthErr("authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending."), nil)
			return
		}
		ok(map[string]any{"refresh_token": f.newRTLocked()})
	default:
		writeJSON(w, 400, oauthErr("unsupported_grant_type", 70003, "unsupported grant"), nil)
	}
}

func (f *fakeIdP) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("response_type") != "code" {
		http.Error(w, "bad authorize request", 400)
		return
	}
	f.mu.Lock()
	f.issued++
	code := fmt.Sprintf("code-%d", f.issued)
	f.codes[code] = codeGrant{challenge: q.Get("code_challenge"), redirect: q.Get("redirect_uri")}
	f.mu.Unlock()
	u, _ := url.Parse(q.Get("redirect_uri"))
	rq := url.Values{"code": {code}, "state": {q.Get("state")}}
	u.RawQuery = rq.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (f *fakeIdP) devicecode(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	writeJSON(w, 200, map[string]any{
		"device_code":      "dc-1",
		"user_code":        "ABCD-EFGH",
		"verification_uri": "https://microsoft.com/devicelogin",
		"expires_in":       "900",
		"interval":         1,
		"message":          "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate.",
	}, nil)
}

func testAccount(f *fakeIdP, grant string) *config.Account {
	p := &config.Provider{
		Name:         "contoso",
		Type:         "microsoft",
		ClientID:     "client-1",
		ClientSecret: "s3cret",
		Grant:        grant,
		TokenURL:     f.URL + "/token",
		AuthorizeURL: f.URL + "/authorize",
		DeviceURL:    f.URL + "/devicecode",
		Scopes:       []string{"https://outlook.office.com/SMTP.Send", "offline_access"},
	}
	if grant == grantClientCredentials {
		p.Scopes = []string{"https://outlook.office365.com/.default"}
	}
	return &config.Account{Name: "invoices", Provider: "contoso", Mailbox: "invoices@contoso.com", ProviderRef: p}
}

// memStore is an in-memory Store with hooks.
type memStore struct {
	mu      sync.Mutex
	recs    map[string]tokenstore.Record
	saveErr error
	saves   int
	onSave  func(tokenstore.Record)
}

func newMemStore() *memStore { return &memStore{recs: map[string]tokenstore.Record{}} }

func (m *memStore) Load(a string) (tokenstore.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[a]
	if !ok {
		return r, tokenstore.ErrNotFound
	}
	return r, nil
}

func (m *memStore) Save(a string, r tokenstore.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.onSave != nil {
		m.onSave(r)
	}
	if m.saveErr != nil {
		return m.saveErr
	}
	m.saves++
	m.recs[a] = r
	return nil
}

func (m *memStore) rt(a string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recs[a].RefreshToken
}

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testLogger captures logs; at the end of the test it checks that no token,
// secret or password reached them, and shows them if the test failed.
func testLogger(t *testing.T) *slog.Logger {
	b := &testutil.Buf{}
	t.Cleanup(func() {
		out := b.String()
		if m := secretRE.FindString(out); m != "" {
			t.Errorf("log contains %q:\n%s", m, out)
		}
		if t.Failed() {
			t.Log(out)
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

var secretRE = regexp.MustCompile(`s3cret|mailbox-pw|wrong-pw|\b(at|rt|code)-\d|client_assertion=|eyJ`)

// loginLimit bounds an interactive sign-in run by startLogin.
const loginLimit = 10 * time.Second

// startLogin runs login on a goroutine under a context bounded by
// loginLimit and returns its result; at the test's end (on a failure too)
// the context is cancelled and the goroutine waited for.
func startLogin(t *testing.T, login func(ctx context.Context) error) <-chan error {
	ctx, cancel := context.WithTimeout(context.Background(), loginLimit)
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		errc <- login(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return errc
}
