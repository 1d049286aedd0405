package oauth

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// End-to-end tests against the fake Microsoft 365 (internal/fakems).

const (
	msMailbox  = "invoices@contoso.com"
	msPassword = "mailbox-pw"
	appSecret  = "conf-app"   // confidential app with a secret
	appCert    = "cert-app"   // confidential app with a certificate
	appPublic  = "public-app" // public client flows enabled
)

var delegatedScopes = []string{
	"https://outlook.office.com/IMAP.AccessAsUser.All",
	"https://outlook.office.com/SMTP.Send",
	"offline_access",
}

type msWorld struct {
	ms       *fakems.Server
	certFile string
	keyFile  string
}

func newMSWorld(t *testing.T, opts fakems.Options) *msWorld {
	t.Helper()
	ms, err := fakems.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	certFile, keyFile, cert, _ := writeCert(t, t.TempDir(), false)
	ms.AddApp(fakems.App{ClientID: appSecret, Secret: "s3cret"})
	ms.AddApp(fakems.App{ClientID: appCert, Certificate: cert})
	ms.AddApp(fakems.App{ClientID: appPublic, PublicClient: true})
	ms.AddMailbox(msMailbox, msPassword)
	for _, app := range []string{appSecret, appCert} {
		ms.GrantApp(app, msMailbox)
	}
	return &msWorld{ms: ms, certFile: certFile, keyFile: keyFile}
}

// account builds an account for clientID and grant against the fake.
func (w *msWorld) account(clientID, grant string) *config.Account {
	p := &config.Provider{
		Name:         "contoso",
		Type:         "microsoft",
		Tenant:       w.ms.Tenant,
		ClientID:     clientID,
		Grant:        grant,
		TokenURL:     w.ms.TokenURL,
		AuthorizeURL: w.ms.AuthorizeURL,
		DeviceURL:    w.ms.DeviceURL,
		Scopes:       delegatedScopes,
	}
	switch clientID {
	case appSecret:
		p.ClientSecret = "s3cret"
	case appCert:
		p.ClientCertificateFile, p.ClientKeyFile = w.certFile, w.keyFile
	}
	if grant == grantClientCredentials {
		p.Scopes = []string{"https://outlook.office365.com/.default"}
	}
	return &config.Account{Name: "invoices", Provider: "contoso", Mailbox: msMailbox, ProviderRef: p}
}

func (w *msWorld) opts(t *testing.T, store Store) Options {
	return Options{Store: store, HTTPClient: w.ms.HTTPClient(), Logger: testLogger(t)}
}

func openStore(t *testing.T, dir string, key byte) *tokenstore.Store {
	t.Helper()
	s, err := tokenstore.Open(dir, bytes.Repeat([]byte{key}, tokenstore.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFakeMSClientCredentials(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	for _, app := range []string{appSecret, appCert} {
		t.Run(app, func(t *testing.T) {
			s := mustSource(t, w.account(app, grantClientCredentials), w.opts(t, nil))
			before := w.ms.TokenRequests()
			tok, err := s.Token(context.Background())
			if err != nil || tok == "" {
				t.Fatalf("Token: %v", err)
			}
			if again, _ := s.Token(context.Background()); again != tok {
				t.Fatal("second Token not cached")
			}
			if n := w.ms.TokenRequests() - before; n != 1 {
				t.Fatalf("%d token requests, want 1", n)
			}
			if d := time.Until(s.State().Expiry); d < 59*time.Minute || d > 91*time.Minute {
				t.Fatalf("expiry in %v", d)
			}
		})
	}
}

func TestFakeMSThousandConcurrentCalls(t *testing.T) {
	w := newMSWorld(t, fakems.Options{})
	w.ms.SetTokenDelay(100 * time.Millisecond)
	s := mustSource(t, w.account(appSecret, grantClientCredentials), w.opts(t, nil))
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Token(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := w.ms.TokenRequests(); n != 1 {
		t.Fatalf("1000 concurrent Token calls: %d token requests, want 1", n)
	}
}

func TestFakeMSRefreshRotationAcrossRestart(t *testing.T) {
	t.Parallel()
	// No grace: a rotated-away refresh token dies at once, so every
	// success below proves the latest one was saved and used.
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1})
	dir := t.TempDir()
	store := openStore(t, dir, 1)
	rt := w.ms.IssueRefreshToken(appSecret, msMailbox)
	if err := store.Save("invoices", tokenstore.Record{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
	acct := w.account(appSecret, grantAuthCode)
	s := mustSource(t, acct, w.opts(t, store))
	for range 3 {
		if _, err := s.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.Invalidate()
	}
	rec, err := store.Load("invoices")
	if err != nil || rec.RefreshToken == rt {
		t.Fatalf("rotation not saved: %v", err)
	}

	// Restart: a new Store and Source over the same directory.
	s2 := mustSource(t, acct, w.opts(t, openStore(t, dir, 1)))
	if _, err := s2.Token(context.Background()); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

func TestFakeMSAuthCodeLogin(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	for _, app := range []string{appPublic, appSecret, appCert} {
		t.Run(app, func(t *testing.T) {
			store := openStore(t, t.TempDir(), 2)
			acct := w.account(app, grantAuthCode)
			out := newURLWriter()
			errc := startLogin(t, func(ctx context.Context) error {
				return LoginAuthCode(ctx, acct, w.opts(t, store), LoginAuthCodeOptions{Out: out})
			})
			var authURL string
			select {
			case authURL = <-out.urls:
			case err := <-errc:
				t.Fatalf("LoginAuthCode: %v", err)
			}
			// The browser: the fake signs in login_hint and redirects to the
			// loopback listener.
			resp, err := w.ms.HTTPClient().Get(authURL)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err := <-errc; err != nil {
				t.Fatalf("LoginAuthCode: %v (page: %s)", err, body)
			}
			s := mustSource(t, acct, w.opts(t, store))
			if _, err := s.Token(context.Background()); err != nil {
				t.Fatalf("Token after login: %v", err)
			}
		})
	}
}

func TestFakeMSDeviceLogin(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	store := openStore(t, t.TempDir(), 3)
	acct := w.account(appPublic, grantDeviceCode)
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		errc <- LoginDevice(ctx, acct, w.opts(t, store), pw)
		pw.Close()
	}()
	// On a failure before it ends, the sign-in is stopped and its writes fail.
	t.Cleanup(func() { cancel(); pr.Close(); <-ended })
	var printed strings.Builder
	codeRE := regexp.MustCompile(`enter the code (\S+) `)
	buf := make([]byte, 4096)
	for !codeRE.MatchString(printed.String()) {
		n, err := pr.Read(buf)
		if err != nil {
			t.Fatalf("LoginDevice printed %q, then %v (%v)", printed.String(), err, <-errc)
		}
		printed.Write(buf[:n])
	}
	drain(t, pr)
	code := codeRE.FindStringSubmatch(printed.String())[1]
	time.Sleep(1500 * time.Millisecond) // let it poll while pending
	if err := w.ms.ApproveDevice(code, msMailbox); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	s := mustSource(t, acct, w.opts(t, store))
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatalf("Token after device login: %v", err)
	}
	if f := s.State(); f.Status != StatusOK {
		t.Fatalf("State = %+v", f)
	}
}

func TestFakeMSDeviceLoginDenied(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	acct := w.account(appPublic, grantDeviceCode)
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		errc <- LoginDevice(ctx, acct, w.opts(t, openStore(t, t.TempDir(), 3)), pw)
		pw.Close()
	}()
	// On a failure before it ends, the sign-in is stopped and its writes fail.
	t.Cleanup(func() { cancel(); pr.Close(); <-ended })
	line := make([]byte, 4096)
	n, _ := pr.Read(line)
	drain(t, pr)
	code := regexp.MustCompile(`enter the code (\S+) `).FindSubmatch(line[:n])
	if code == nil {
		t.Fatalf("no code in %q", line[:n])
	}
	w.ms.DenyDevice(string(code[1]))
	err := <-errc
	if e := asError(t, err); e.Class != NeedsSignIn || !strings.Contains(e.Reason, "declined") {
		t.Fatalf("err = %v", err)
	}
}

func TestFakeMSPasswordGrant(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	acct := w.account(appPublic, grantPassword)
	acct.Password = msPassword
	s := mustSource(t, acct, w.opts(t, nil))
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}

	pt := w.account(appPublic, grantPassword)
	pt.PasswordPassthrough = true
	ps := mustSource(t, pt, w.opts(t, nil))
	if _, err := ps.TokenForPassword(context.Background(), msPassword); err != nil {
		t.Fatal(err)
	}
	before := w.ms.TokenRequests()
	if _, err := ps.TokenForPassword(context.Background(), msPassword); err != nil || w.ms.TokenRequests() != before {
		t.Fatalf("cached passthrough login: %v, %d new requests", err, w.ms.TokenRequests()-before)
	}
	_, err := ps.TokenForPassword(context.Background(), "wrong-pw")
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 50126 {
		t.Fatalf("wrong password: %v", err)
	}

	w.ms.RequireMFA(msMailbox)
	s.Invalidate()
	_, err = s.Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 50076 || !strings.Contains(e.Fix, "device_code") {
		t.Fatalf("MFA: %v", err)
	}
}

func TestFakeMSRevokedAndExpired(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	store := openStore(t, t.TempDir(), 4)
	store.Save("invoices", tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appPublic, msMailbox)})
	s := mustSource(t, w.account(appPublic, grantDeviceCode), w.opts(t, store))
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.ms.RevokeUser(msMailbox)
	s.Invalidate()
	_, err := s.Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 50173 {
		t.Fatalf("revoked: %v", err)
	}
	if st := s.State(); st.Status != StatusNeedsSignIn || st.Err == nil {
		t.Fatalf("State = %+v", st)
	}

	// Sign in again (as `oauthrelay login` would) and Reload.
	store.Save("invoices", tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appPublic, msMailbox)})
	s.Reload()
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.ms.ExpireRefreshTokens(msMailbox)
	s.Invalidate()
	_, err = s.Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 700082 {
		t.Fatalf("expired: %v", err)
	}
}

func TestFakeMSFailures(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	s := mustSource(t, w.account(appSecret, grantClientCredentials), w.opts(t, nil))

	w.ms.FailTokenRequests(1, fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable", AADSTS: 90033, Description: "A transient error has occurred."})
	_, err := s.Token(context.Background())
	if e := asError(t, err); e.Class != Transient {
		t.Fatalf("503: %v", err)
	}
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatalf("after 503: %v", err)
	}

	s.Invalidate()
	w.ms.FailTokenRequests(1, fakems.TokenFailure{Status: 429, Error: "temporarily_unavailable", RetryAfter: 20 * time.Second})
	_, err = s.Token(context.Background())
	if e := asError(t, err); e.Class != Transient || time.Until(e.RetryAt) < 15*time.Second {
		t.Fatalf("429: %#v", err)
	}

	w.ms.FailTokenRequests(1, fakems.TokenFailure{Status: 502, Body: "<html>Bad gateway</html>"})
	s2 := mustSource(t, w.account(appSecret, grantClientCredentials), w.opts(t, nil))
	if _, err := s2.Token(context.Background()); asError(t, err).Class != Transient {
		t.Fatalf("proxy page: %v", err)
	}

	bad := w.account(appSecret, grantClientCredentials)
	bad.ProviderRef.ClientSecret = "wrong"
	_, err = mustSource(t, bad, w.opts(t, nil)).Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 7000215 {
		t.Fatalf("bad secret: %v", err)
	}

	unknown := w.account("no-such-app", grantClientCredentials)
	unknown.ProviderRef.ClientSecret = "x"
	_, err = mustSource(t, unknown, w.opts(t, nil)).Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 700016 {
		t.Fatalf("unknown app: %v", err)
	}

	// Device code refresh for a public app never sends a secret; a
	// confidential app's refresh without one is refused (7000218).
	noSecret := w.account(appSecret, grantAuthCode)
	noSecret.ProviderRef.ClientSecret = ""
	store := openStore(t, t.TempDir(), 5)
	store.Save("invoices", tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appSecret, msMailbox)})
	_, err = mustSource(t, noSecret, w.opts(t, store)).Token(context.Background())
	if e := asError(t, err); e.Class != NeedsSignIn || e.AADSTS != 7000218 {
		t.Fatalf("confidential without secret: %v", err)
	}
}

func TestFakeMSCorruptStore(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	store := openStore(t, t.TempDir(), 6)
	store.Save("invoices", tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appPublic, msMailbox)})
	b, _ := os.ReadFile(store.Path("invoices"))
	b[len(b)-3] ^= 0xff
	os.WriteFile(store.Path("invoices"), b, 0o600)

	s := mustSource(t, w.account(appPublic, grantDeviceCode), w.opts(t, store))
	_, err := s.Token(context.Background())
	e := asError(t, err)
	if e.Class != NeedsSignIn || !errors.Is(err, tokenstore.ErrDecrypt) || w.ms.TokenRequests() != 0 {
		t.Fatalf("corrupt store: %v (%d requests)", err, w.ms.TokenRequests())
	}
	if after, _ := os.ReadFile(store.Path("invoices")); !bytes.Equal(after, b) {
		t.Fatal("corrupt file was rewritten")
	}
}

func TestFakeMSWrongKey(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	dir := t.TempDir()
	openStore(t, dir, 7).Save("invoices", tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appPublic, msMailbox)})

	wrong := openStore(t, dir, 8)
	s := mustSource(t, w.account(appPublic, grantDeviceCode), w.opts(t, wrong))
	_, err := s.Token(context.Background())
	e := asError(t, err)
	fp7 := tokenstore.Fingerprint(bytes.Repeat([]byte{7}, 32))
	fp8 := tokenstore.Fingerprint(bytes.Repeat([]byte{8}, 32))
	if e.Class != NeedsSignIn || !strings.Contains(err.Error(), fp7) || !strings.Contains(err.Error(), fp8) {
		t.Fatalf("wrong key: %v", err)
	}
	// A device login into the wrong-key store is refused until the file
	// is deleted.
	if err := wrong.Save("invoices", tokenstore.Record{RefreshToken: "x"}); !errors.Is(err, tokenstore.ErrDecrypt) {
		t.Fatalf("Save over another key's file: %v", err)
	}
	// With the right key it still works.
	s2 := mustSource(t, w.account(appPublic, grantDeviceCode), w.opts(t, openStore(t, dir, 7)))
	if _, err := s2.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestFakeMSRunWithShortTokens(t *testing.T) {
	w := newMSWorld(t, fakems.Options{TokenLifetime: 2 * time.Second})
	s := mustSource(t, w.account(appSecret, grantClientCredentials), w.opts(t, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for w.ms.TokenRequests() < 3 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := w.ms.TokenRequests(); n < 3 {
		t.Fatalf("background refresh made %d requests", n)
	}
	// Logins during background refreshes are served without waiting.
	for range 20 {
		if _, err := s.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// drain reads the rest of what LoginDevice prints, until it closes pw (or the
// test ends, which closes pr).
func drain(t *testing.T, pr *io.PipeReader) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() { pr.Close(); <-done })
}
