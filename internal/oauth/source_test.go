package oauth

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

func mustSource(t *testing.T, acct *config.Account, opts Options) *Source {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s, err := NewSource(acct, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *oauth.Error", err, err)
	}
	return e
}

func TestClientCredentialsSecret(t *testing.T) {
	f := newFakeIdP(t)
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})
	ctx := context.Background()
	tok, err := s.Token(ctx)
	if err != nil || tok == "" {
		t.Fatalf("Token: %q, %v", tok, err)
	}
	form := f.lastForm()
	want := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {"client-1"},
		"client_secret": {"s3cret"},
		"scope":         {"https://outlook.office365.com/.default"},
	}
	for k, v := range want {
		if form.Get(k) != v[0] {
			t.Errorf("form %s = %q, want %q", k, form.Get(k), v[0])
		}
	}
	if tok2, _ := s.Token(ctx); tok2 != tok || f.requests.Load() != 1 {
		t.Fatalf("second Token: %q (want cached %q), %d requests", tok2, tok, f.requests.Load())
	}
	st := s.State()
	if st.Status != StatusOK || st.Err != nil || st.Grant != "client_credentials" || st.LastSuccess.IsZero() {
		t.Fatalf("State = %+v", st)
	}
	if d := time.Until(st.Expiry); d < 59*time.Minute || d > time.Hour {
		t.Errorf("Expiry in %v, want ~1h", d)
	}
}

func TestConcurrentTokenCallsShareOneRequest(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.delay = 100 * time.Millisecond })
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := s.Token(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("1000 concurrent Token calls made %d token requests, want 1", n)
	}
}

func TestCallerCancellationDoesNotCancelSharedRequest(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.delay = 300 * time.Millisecond })
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})

	ctx1, cancel1 := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel1()
	errc := make(chan error, 1)
	go func() { _, err := s.Token(ctx1); errc <- err }()
	time.Sleep(10 * time.Millisecond) // let the first caller start the flight
	tok, err := s.Token(context.Background())
	if err != nil || tok == "" {
		t.Fatalf("second caller: %q, %v", tok, err)
	}
	err1 := <-errc
	if e := asError(t, err1); e.Class != Transient || !errors.Is(err1, context.DeadlineExceeded) {
		t.Fatalf("first caller: %v", err1)
	}
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestRefreshTokenRotationSavedBeforeUse(t *testing.T) {
	f := newFakeIdP(t)
	store := newMemStore()
	rt := f.issueRT()
	store.recs["invoices"] = tokenstore.Record{RefreshToken: rt}
	s := mustSource(t, testAccount(f, "authorization_code"), Options{Store: store})

	var savedBeforeReturn string
	store.onSave = func(r tokenstore.Record) { savedBeforeReturn = r.RefreshToken }
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	form := f.lastForm()
	if form.Get("grant_type") != "refresh_token" || form.Get("refresh_token") != rt || form.Get("client_secret") != "s3cret" ||
		form.Get("scope") != "https://outlook.office.com/SMTP.Send offline_access" {
		t.Fatalf("refresh form: %v", form)
	}
	newRT := store.rt("invoices")
	if newRT == rt || newRT == "" || savedBeforeReturn != newRT {
		t.Fatalf("rotated refresh token not saved: store %q, old %q", newRT, rt)
	}
	_ = tok

	// The next refresh uses the rotated token from memory.
	s.Invalidate()
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastForm().Get("refresh_token"); got != newRT {
		t.Fatalf("second refresh used %q, want rotated %q", got, newRT)
	}

	// A new Source over the same store (a restart) uses the latest one.
	latest := store.rt("invoices")
	s2 := mustSource(t, testAccount(f, "authorization_code"), Options{Store: store})
	if _, err := s2.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastForm().Get("refresh_token"); got != latest {
		t.Fatalf("after restart refresh used %q, want %q", got, latest)
	}
}

func TestDeviceCodeRefreshSendsNoSecret(t *testing.T) {
	f := newFakeIdP(t)
	store := newMemStore()
	store.recs["invoices"] = tokenstore.Record{RefreshToken: f.issueRT()}
	s := mustSource(t, testAccount(f, "device_code"), Options{Store: store})
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.lastForm().Has("client_secret") {
		t.Fatal("device_code refresh sent the client secret (Entra: AADSTS700025)")
	}
}

func TestRotationSaveFailureKeepsOldState(t *testing.T) {
	f := newFakeIdP(t)
	clk := newClock()
	store := newMemStore()
	rt := f.issueRT()
	store.recs["invoices"] = tokenstore.Record{RefreshToken: rt}
	s := mustSource(t, testAccount(f, "authorization_code"), Options{Store: store, Now: clk.Now})
	first, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rotated := store.rt("invoices")

	// 50 s before expiry: due for a refresh, still usable.
	clk.Advance(time.Hour - 50*time.Second)
	store.mu.Lock()
	store.saveErr = errors.New("disk full")
	store.mu.Unlock()
	tok, err := s.Token(context.Background())
	if err != nil || tok != first {
		t.Fatalf("Token with failing Save: %q, %v; want the still-valid %q", tok, err, first)
	}
	st := s.State()
	if st.Status != StatusTransient || st.Err == nil || !strings.Contains(st.Err.Reason, "save") {
		t.Fatalf("State after failed save: %+v", st)
	}
	if got := store.rt("invoices"); got != rotated {
		t.Fatalf("store changed to %q", got)
	}

	// Past expiry: the error is returned, not a new unsaved token.
	clk.Advance(time.Minute)
	if _, err := s.Token(context.Background()); err == nil {
		t.Fatal("Token returned a token whose refresh token could not be saved")
	} else if e := asError(t, err); e.Class != Transient {
		t.Fatalf("class %v", e.Class)
	}
	// The next attempt redeems the old (still saved) refresh token again.
	store.mu.Lock()
	store.saveErr = nil
	store.mu.Unlock()
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastForm().Get("refresh_token"); got != rotated {
		t.Fatalf("refresh after failed save used %q, want the saved %q", got, rotated)
	}
}

func TestNotSignedIn(t *testing.T) {
	f := newFakeIdP(t)
	s := mustSource(t, testAccount(f, "authorization_code"), Options{Store: newMemStore()})
	_, err := s.Token(context.Background())
	e := asError(t, err)
	if e.Class != NeedsSignIn || !strings.Contains(e.Reason, "not signed in") {
		t.Fatalf("err = %v", err)
	}
	if f.requests.Load() != 0 {
		t.Fatal("made a token request without a refresh token")
	}
	if s.State().Status != StatusNeedsSignIn {
		t.Fatalf("State = %+v", s.State())
	}
}

func TestExpiredRefreshTokenIsNotRetriedUntilNewSignIn(t *testing.T) {
	f := newFakeIdP(t)
	store := newMemStore()
	store.recs["invoices"] = tokenstore.Record{RefreshToken: "rt-dead"}
	s := mustSource(t, testAccount(f, "authorization_code"), Options{Store: store})

	_, err := s.Token(context.Background())
	e := asError(t, err)
	if e.Class != NeedsSignIn || e.AADSTS != 700082 || e.Code != "invalid_grant" || !strings.Contains(e.Fix, "oauthrelay login") {
		t.Fatalf("err = %#v", e)
	}
	if strings.Contains(e.Description, "Trace ID") {
		t.Errorf("Description keeps trace lines: %q", e.Description)
	}
	for range 5 {
		s.Token(context.Background())
	}
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("dead refresh token sent %d times, want 1", n)
	}

	// `oauthrelay login` in another process writes a new one: picked up
	// without Reload.
	store.Save("invoices", tokenstore.Record{RefreshToken: f.issueRT()})
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.State().Status != StatusOK {
		t.Fatalf("State = %+v", s.State())
	}
}

func TestReload(t *testing.T) {
	f := newFakeIdP(t)
	store := newMemStore()
	store.recs["invoices"] = tokenstore.Record{RefreshToken: f.issueRT()}
	s := mustSource(t, testAccount(f, "authorization_code"), Options{Store: store})
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A sign-in by another process wins over the token in memory at the
	// next refresh, even though that one still works.
	external := f.issueRT()
	store.Save("invoices", tokenstore.Record{RefreshToken: external})
	s.Invalidate()
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastForm().Get("refresh_token"); got != external {
		t.Fatalf("refresh used %q, want the externally saved %q", got, external)
	}

	fresh := f.issueRT()
	store.Save("invoices", tokenstore.Record{RefreshToken: fresh})
	s.Reload()
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastForm().Get("refresh_token"); got != fresh {
		t.Fatalf("after Reload refresh used %q, want %q", got, fresh)
	}
}

func TestTransientThenRecover(t *testing.T) {
	f := newFakeIdP(t)
	fails := 2
	f.set(func(f *fakeIdP) {
		f.respond = func(url.Values) (int, any, http.Header) {
			if fails > 0 {
				fails--
				return 503, map[string]any{"error": "temporarily_unavailable", "error_description": "AADSTS90033: try later"}, nil
			}
			return 0, nil, nil
		}
	})
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})
	for range 2 {
		_, err := s.Token(context.Background())
		if e := asError(t, err); e.Class != Transient {
			t.Fatalf("err = %v", err)
		}
		if s.State().Status != StatusTransient {
			t.Fatalf("State = %+v", s.State())
		}
	}
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.State(); st.Status != StatusOK || st.Err != nil {
		t.Fatalf("State = %+v", st)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	f := newFakeIdP(t)
	clk := newClock()
	throttle := true
	f.set(func(f *fakeIdP) {
		f.respond = func(url.Values) (int, any, http.Header) {
			if throttle {
				return 429, map[string]any{"error": "too_many_requests"}, http.Header{"Retry-After": {"30"}}
			}
			return 0, nil, nil
		}
	})
	s := mustSource(t, testAccount(f, "client_credentials"), Options{Now: clk.Now})
	_, err := s.Token(context.Background())
	e := asError(t, err)
	if e.Class != Transient || !e.RetryAt.Equal(clk.Now().Add(30*time.Second)) {
		t.Fatalf("err = %#v", e)
	}
	for range 3 {
		if _, err := s.Token(context.Background()); err == nil {
			t.Fatal("Token succeeded while throttled")
		}
	}
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("%d requests during Retry-After, want 1", n)
	}
	f.set(func(*fakeIdP) { throttle = false })
	clk.Advance(31 * time.Second)
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNetworkErrorIsTransient(t *testing.T) {
	f := newFakeIdP(t)
	acct := testAccount(f, "client_credentials")
	f.Close()
	s := mustSource(t, acct, Options{})
	_, err := s.Token(context.Background())
	if e := asError(t, err); e.Class != Transient || !strings.Contains(e.Reason, "cannot be reached") {
		t.Fatalf("err = %v", err)
	}
}

func TestPasswordGrant(t *testing.T) {
	f := newFakeIdP(t)
	acct := testAccount(f, "password")
	acct.Password = "mailbox-pw"
	s := mustSource(t, acct, Options{})
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	form := f.lastForm()
	if form.Get("grant_type") != "password" || form.Get("username") != "invoices@contoso.com" || form.Get("password") != "mailbox-pw" {
		t.Fatalf("form %v", form)
	}

	acct2 := testAccount(f, "password")
	acct2.Password = "wrong-pw"
	s2 := mustSource(t, acct2, Options{})
	_, err := s2.Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 50126 {
		t.Fatalf("err = %v", err)
	}
}

func TestTokenForPassword(t *testing.T) {
	f := newFakeIdP(t)
	acct := testAccount(f, "password")
	acct.PasswordPassthrough = true
	s := mustSource(t, acct, Options{})
	ctx := context.Background()

	if _, err := s.Token(ctx); err == nil {
		t.Fatal("Token without a configured password succeeded")
	}
	tok, err := s.TokenForPassword(ctx, "mailbox-pw")
	if err != nil || tok == "" {
		t.Fatalf("TokenForPassword: %q %v", tok, err)
	}
	if tok2, _ := s.TokenForPassword(ctx, "mailbox-pw"); tok2 != tok || f.requests.Load() != 1 {
		t.Fatalf("repeat login hit the IdP: %d requests", f.requests.Load())
	}

	_, err = s.TokenForPassword(ctx, "wrong-pw")
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 50126 {
		t.Fatalf("wrong password: %v", err)
	}
	_, err = s.TokenForPassword(ctx, "wrong-pw")
	if err == nil || f.requests.Load() != 2 {
		t.Fatalf("repeated wrong password: %v, %d requests (want 2: held locally)", err, f.requests.Load())
	}
	if st := s.State(); st.Status != StatusOK {
		t.Fatalf("a wrong app password changed the account state: %+v", st)
	}

	// Password change: the new one works, the old one must stop working.
	f.set(func(f *fakeIdP) { f.password = "new-pw" })
	if _, err := s.TokenForPassword(ctx, "new-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TokenForPassword(ctx, "mailbox-pw"); err == nil {
		t.Fatal("old password still served from the cache after a new one succeeded")
	}
}

func TestTokenForPasswordConcurrent(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.delay = 50 * time.Millisecond })
	acct := testAccount(f, "password")
	acct.PasswordPassthrough = true
	s := mustSource(t, acct, Options{})
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.TokenForPassword(context.Background(), "mailbox-pw"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestFallbackToValidTokenWhenRefreshFails(t *testing.T) {
	f := newFakeIdP(t)
	clk := newClock()
	s := mustSource(t, testAccount(f, "client_credentials"), Options{Now: clk.Now})
	first, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeIdP) {
		f.respond = func(url.Values) (int, any, http.Header) { return 500, map[string]any{}, nil }
	})
	clk.Advance(time.Hour - 40*time.Second)
	tok, err := s.Token(context.Background())
	if err != nil || tok != first {
		t.Fatalf("Token = %q, %v; want fallback to %q", tok, err, first)
	}
	if st := s.State(); st.Status != StatusTransient || st.Expiry.Sub(clk.Now()) != 40*time.Second {
		t.Fatalf("State = %+v", st)
	}
	clk.Advance(time.Minute)
	if _, err := s.Token(context.Background()); err == nil {
		t.Fatal("expired token handed out")
	}
}

func TestInvalidate(t *testing.T) {
	f := newFakeIdP(t)
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})
	a, _ := s.Token(context.Background())
	s.Invalidate()
	b, err := s.Token(context.Background())
	if err != nil || a == b || f.requests.Load() != 2 {
		t.Fatalf("after Invalidate: %q (was %q), %v, %d requests", b, a, err, f.requests.Load())
	}
}

func TestRunRefreshesBeforeExpiry(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.lifetime = 2 }) // margin becomes 1 s
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for f.requests.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	if n := f.requests.Load(); n < 3 {
		t.Fatalf("Run made %d requests in 5 s with 2 s tokens", n)
	}
	if n := f.requests.Load(); n > 8 {
		t.Fatalf("Run made %d requests: refreshing too eagerly", n)
	}
	// A refresh may still be in flight (it is detached from Run's ctx).
	if st := s.State(); st.Status != StatusOK && st.Status != StatusRefreshing {
		t.Fatalf("State = %+v", st)
	}
}

func TestRunBacksOffAndKeepsValidToken(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.lifetime = 4 }) // background refresh due after ~2 s
	s := mustSource(t, testAccount(f, "client_credentials"), Options{})
	first, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	expiry := s.State().Expiry
	f.set(func(f *fakeIdP) {
		f.respond = func(url.Values) (int, any, http.Header) { return 503, map[string]any{}, nil }
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	time.Sleep(200 * time.Millisecond)
	if n := f.requests.Load(); n != 1 {
		t.Fatalf("Run refreshed a fresh token: %d requests", n)
	}
	deadline := time.Now().Add(4 * time.Second)
	for s.State().Status != StatusTransient && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	st := s.State()
	if st.Status != StatusTransient || st.RetryAt.IsZero() || !st.Expiry.Equal(expiry) {
		t.Fatalf("State = %+v", st)
	}
	if d := time.Until(st.RetryAt); d <= 0 || d > 3*time.Second {
		t.Fatalf("first backoff %v", d)
	}
	n := f.requests.Load()
	if tok, err := s.Token(context.Background()); err != nil || tok != first {
		t.Fatalf("failing background refresh lost the valid token: %q, %v", tok, err)
	}
	time.Sleep(300 * time.Millisecond)
	if f.requests.Load() != n {
		t.Fatal("retried without backing off")
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	f := newFakeIdP(t)
	acct := testAccount(f, "password")
	acct.PasswordPassthrough = true
	for _, a := range []*config.Account{testAccount(f, "client_credentials"), acct} {
		s := mustSource(t, a, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		time.Sleep(50 * time.Millisecond)
		cancel()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
}

func TestNewSourceValidation(t *testing.T) {
	f := newFakeIdP(t)
	cases := map[string]func(a *config.Account){
		"no provider":  func(a *config.Account) { a.ProviderRef = nil },
		"no client id": func(a *config.Account) { a.ProviderRef.ClientID = "" },
		"no token url": func(a *config.Account) { a.ProviderRef.TokenURL = "" },
		"no secret":    func(a *config.Account) { a.ProviderRef.ClientSecret = "" },
		"bad grant":    func(a *config.Account) { a.ProviderRef.Grant = "implicit" },
		"missing cert": func(a *config.Account) { a.ProviderRef.ClientCertificateFile = "/nonexistent.pem" },
		"no store":     func(a *config.Account) { a.ProviderRef.Grant = "authorization_code" },
		"no password":  func(a *config.Account) { a.ProviderRef.Grant = "password" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			a := testAccount(f, "client_credentials")
			mutate(a)
			if _, err := NewSource(a, Options{}); err == nil {
				t.Fatal("NewSource accepted it")
			}
		})
	}
}
