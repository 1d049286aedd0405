package oauth

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// urlWriter collects what LoginAuthCode prints and hands out the first
// authorization URL it sees.
type urlWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	urls chan string
	sent bool
}

var authURLRE = regexp.MustCompile(`https?://\S+/authorize\?\S+`)

func newURLWriter() *urlWriter { return &urlWriter{urls: make(chan string, 1)} }

func (w *urlWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if m := authURLRE.FindString(w.buf.String()); m != "" && !w.sent {
		w.sent = true
		w.urls <- m
	}
	return len(p), nil
}

func (w *urlWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestLoginAuthCodeLoopback(t *testing.T) {
	f := newFakeIdP(t)
	store := newMemStore()
	acct := testAccount(f, "authorization_code")
	out := newURLWriter()
	errc := startLogin(t, func(ctx context.Context) error {
		return LoginAuthCode(ctx, acct, Options{Store: store, Logger: testLogger(t)}, LoginAuthCodeOptions{Out: out})
	})
	var authURL string
	select {
	case authURL = <-out.urls:
	case err := <-errc:
		t.Fatalf("LoginAuthCode returned early: %v", err)
	}
	u, _ := url.Parse(authURL)
	q := u.Query()
	if q.Get("login_hint") != "invoices@contoso.com" || q.Get("code_challenge_method") != "S256" || q.Get("state") == "" ||
		!strings.HasPrefix(q.Get("redirect_uri"), "http://localhost:") || q.Get("client_id") != "client-1" {
		t.Fatalf("authorization URL %s", authURL)
	}

	// A stray request with a wrong state does not end the sign-in.
	bad := strings.Replace(q.Get("redirect_uri"), "localhost", "127.0.0.1", 1) + "?code=x&state=forged"
	if resp, err := http.Get(bad); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("forged state answered %d", resp.StatusCode)
		}
	}

	// The "browser": follows the fake's redirect to the loopback listener.
	resp, err := http.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "Signed in") {
		t.Fatalf("callback page: %d %s", resp.StatusCode, body)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if store.rt("invoices") == "" {
		t.Fatal("no refresh token saved")
	}
	form := f.lastForm()
	if form.Get("client_secret") != "s3cret" || form.Get("code_verifier") == "" {
		t.Fatalf("exchange form %v", form)
	}

	// The saved token works for a Source.
	s := mustSource(t, acct, Options{Store: store})
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestLoginAuthCodePaste(t *testing.T) {
	t.Parallel()
	f := newFakeIdP(t)
	store := newMemStore()
	acct := testAccount(f, "authorization_code")
	out := newURLWriter()
	pr, pw := io.Pipe()
	defer pw.Close()
	errc := startLogin(t, func(ctx context.Context) error {
		return LoginAuthCode(ctx, acct, Options{Store: store, Logger: testLogger(t)},
			LoginAuthCodeOptions{RedirectURL: "https://relay.example.com/oauth2/callback", Out: out, Paste: pr})
	})
	authURL := <-out.urls
	// The browser is elsewhere: get the redirect location without following it.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "https://relay.example.com/oauth2/callback?") {
		t.Fatalf("redirect to %q", loc)
	}
	io.WriteString(pw, "not a url\n")
	io.WriteString(pw, strings.Replace(loc, "state=", "state=x", 1)+"\n") // wrong state: ignored
	io.WriteString(pw, "  "+loc+"  \n")
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if store.rt("invoices") == "" {
		t.Fatal("no refresh token saved")
	}
	if !strings.Contains(out.String(), "try again") {
		t.Errorf("no hint for bad pastes in %q", out.String())
	}
}

func TestLoginAuthCodeNeedsPasteForRemoteRedirect(t *testing.T) {
	f := newFakeIdP(t)
	err := LoginAuthCode(context.Background(), testAccount(f, "authorization_code"), Options{Store: newMemStore()},
		LoginAuthCodeOptions{RedirectURL: "https://relay.example.com/cb"})
	if err == nil {
		t.Fatal("no error without Paste for a non-loopback redirect")
	}
}

func TestLoginAuthCodeContextEnds(t *testing.T) {
	f := newFakeIdP(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := LoginAuthCode(ctx, testAccount(f, "authorization_code"), Options{Store: newMemStore()}, LoginAuthCodeOptions{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

func TestAuthCodeFlow(t *testing.T) {
	t.Parallel()
	f := newFakeIdP(t)
	store := newMemStore()
	acct := testAccount(f, "authorization_code")
	flow, err := NewAuthCodeFlow(acct, "http://127.0.0.1:8025/oauth2/callback", Options{Store: store, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(flow.URL())
	if u.Query().Get("state") != flow.State() || u.Query().Get("redirect_uri") != "http://127.0.0.1:8025/oauth2/callback" {
		t.Fatalf("URL %s", u)
	}
	ctx := context.Background()
	if err := flow.Exchange(ctx, "code-x", "wrong"); !errors.Is(err, errStateMismatch) {
		t.Fatalf("wrong state: %v", err)
	}

	// An error sent on the redirect is classified.
	err = flow.Callback(ctx, url.Values{"error": {"access_denied"}, "error_description": {"AADSTS65004: User declined to consent to access the app."}, "state": {flow.State()}})
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 65004 {
		t.Fatalf("declined: %v", err)
	}

	// The real code, as the admin page would get it.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(flow.URL())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if err := flow.Callback(ctx, loc.Query()); err != nil {
		t.Fatal(err)
	}
	if store.rt("invoices") == "" {
		t.Fatal("not saved")
	}
	// Single use.
	if err := flow.Exchange(ctx, loc.Query().Get("code"), flow.State()); err == nil {
		t.Fatal("flow redeemed twice")
	}
}

func TestAuthCodeFlowBadCodeAndNoRefreshToken(t *testing.T) {
	f := newFakeIdP(t)
	acct := testAccount(f, "authorization_code")
	flow, err := NewAuthCodeFlow(acct, "http://localhost:1/", Options{Store: newMemStore()})
	if err != nil {
		t.Fatal(err)
	}
	err = flow.Exchange(context.Background(), "bogus", flow.State())
	if e := asError(t, err); e.Class != NeedsSignIn || e.Code != "invalid_grant" {
		t.Fatalf("bad code: %v", err)
	}

	f.set(func(f *fakeIdP) {
		f.respond = func(url.Values) (int, any, http.Header) {
			return 200, map[string]any{"access_token": "at-x", "token_type": "Bearer", "expires_in": 3600}, nil
		}
	})
	flow, _ = NewAuthCodeFlow(acct, "http://localhost:1/", Options{Store: newMemStore()})
	err = flow.Exchange(context.Background(), "any", flow.State())
	if e := asError(t, err); !strings.Contains(e.Fix, "offline_access") {
		t.Fatalf("no refresh token: %v", err)
	}

	if _, err := NewAuthCodeFlow(testAccount(f, "device_code"), "http://localhost:1/", Options{Store: newMemStore()}); err == nil {
		t.Fatal("auth code flow for a device_code account")
	}
}

func TestLoginDevice(t *testing.T) {
	t.Parallel()
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.pending = 1 })
	store := newMemStore()
	var out strings.Builder
	if err := LoginDevice(context.Background(), testAccount(f, "device_code"), Options{Store: store, Logger: testLogger(t)}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "enter the code ABCD-EFGH") {
		t.Fatalf("message not printed: %q", out.String())
	}
	if store.rt("invoices") == "" {
		t.Fatal("not saved")
	}
	form := f.lastForm()
	if form.Get("device_code") != "dc-1" || form.Has("client_secret") {
		t.Fatalf("poll form %v", form)
	}
}

func TestLoginDeviceFailures(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		body   map[string]any
		status int
		want   string
	}{
		"declined": {oauthErr("authorization_declined", 70000, "declined"), 400, "declined"},
		"denied":   {map[string]any{"error": "access_denied"}, 400, "declined"},
		"expired":  {oauthErr("expired_token", 70019, "expired"), 400, "expired"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFakeIdP(t)
			f.set(func(f *fakeIdP) {
				f.respond = func(url.Values) (int, any, http.Header) { return c.status, c.body, nil }
			})
			err := LoginDevice(context.Background(), testAccount(f, "device_code"), Options{Store: newMemStore()}, io.Discard)
			e := asError(t, err)
			if e.Class != NeedsSignIn || !strings.Contains(e.Reason, c.want) {
				t.Fatalf("err = %v", err)
			}
		})
	}

	t.Run("transient while polling", func(t *testing.T) {
		f := newFakeIdP(t)
		fails := 1
		f.set(func(f *fakeIdP) {
			f.respond = func(url.Values) (int, any, http.Header) {
				if fails > 0 {
					fails--
					return 503, map[string]any{}, nil
				}
				return 0, nil, nil
			}
		})
		store := newMemStore()
		if err := LoginDevice(context.Background(), testAccount(f, "device_code"), Options{Store: store}, io.Discard); err != nil {
			t.Fatal(err)
		}
		if store.rt("invoices") == "" {
			t.Fatal("not saved")
		}
	})

	t.Run("save refused", func(t *testing.T) {
		f := newFakeIdP(t)
		store := newMemStore()
		store.saveErr = tokenstore.ErrDecrypt
		err := LoginDevice(context.Background(), testAccount(f, "device_code"), Options{Store: store}, io.Discard)
		if e := asError(t, err); !errors.Is(e, tokenstore.ErrDecrypt) {
			t.Fatalf("err = %v", err)
		}
	})
}

// An account that sends through Graph asks consent for Graph's delegated
// scopes at the same sign-in, and redeems the code for the mail scopes
// alone (Entra issues a token for one resource at a time).
func TestAuthCodeFlowAsksGraphConsent(t *testing.T) {
	t.Parallel()
	f := newFakeIdP(t)
	for _, upstream := range []string{config.UpstreamSMTP, config.UpstreamGraph, config.UpstreamAuto} {
		acct := testAccount(f, "authorization_code")
		acct.Upstream = upstream
		acct.ProviderRef.Graph.Scopes = []string{"https://graph.microsoft.com/Mail.Send", "offline_access"}
		flow, err := NewAuthCodeFlow(acct, "http://127.0.0.1:8025/oauth2/callback", Options{Store: newMemStore(), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(flow.URL())
		scope := strings.Fields(u.Query().Get("scope"))
		hasGraph := slices.Contains(scope, "https://graph.microsoft.com/Mail.Send")
		if hasGraph != acct.SendsThroughGraph() {
			t.Errorf("upstream %s: consent asked for %q", upstream, scope)
		}
		for _, s := range acct.ProviderRef.Scopes {
			if !slices.Contains(scope, s) {
				t.Errorf("upstream %s: consent lacks the mail scope %s: %q", upstream, s, scope)
			}
		}
		if n := strings.Count(u.Query().Get("scope"), "offline_access"); n > 1 {
			t.Errorf("upstream %s: offline_access asked %d times", upstream, n)
		}
		if !slices.Equal(flow.cfg.Scopes, acct.ProviderRef.Scopes) {
			t.Errorf("upstream %s: the code is redeemed for %q, want the mail scopes %q", upstream, flow.cfg.Scopes, acct.ProviderRef.Scopes)
		}
	}
}
