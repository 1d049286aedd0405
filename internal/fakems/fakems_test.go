package fakems

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// The test world: one tenant with a mailbox for alice, a shared mailbox,
// a confidential daemon app granted alice's mailbox, and a public client.
const (
	alice      = "alice@contoso.onmicrosoft.com"
	alicePass  = "correct horse"
	bob        = "bob@contoso.onmicrosoft.com"
	shared     = "orders@contoso.onmicrosoft.com"
	daemonID   = "11111111-1111-1111-1111-111111111111"
	daemonPass = "s3cr3t~value"
	publicID   = "22222222-2222-2222-2222-222222222222"
	outlookDef = "https://outlook.office365.com/.default"
)

var delegatedScopes = []string{
	"https://outlook.office.com/IMAP.AccessAsUser.All",
	"https://outlook.office.com/SMTP.Send",
	"offline_access",
}

// newWorld starts a fake with the test world in it; the fake's log goes to
// t.Log until the test ends.
func newWorld(t *testing.T, opts Options) *Server {
	t.Helper()
	return newWorldLog(t, opts, nil)
}

// newWorldLog is newWorld with the fake's log handler wrapped by wrap
// (nil: as it is).
func newWorldLog(t *testing.T, opts Options, wrap func(slog.Handler) slog.Handler) *Server {
	t.Helper()
	lw := &testLogWriter{t: t}
	t.Cleanup(lw.stop) // runs last: cleanups are LIFO
	var h slog.Handler = slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug})
	if wrap != nil {
		h = wrap(h)
	}
	opts.Logger = slog.New(h)
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	s.AddMailbox(alice, alicePass)
	s.AddMailbox(bob, "bob's password")
	s.AddMailbox(shared, "")
	s.AddApp(App{ClientID: daemonID, Secret: daemonPass})
	s.AddApp(App{ClientID: publicID, PublicClient: true})
	s.GrantApp(daemonID, alice)
	return s
}

type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
}

func ctxWithClient(t *testing.T, s *Server) context.Context {
	return context.WithValue(t.Context(), oauth2.HTTPClient, s.HTTPClient())
}

func daemonConfig(s *Server) *clientcredentials.Config {
	return &clientcredentials.Config{
		ClientID:     daemonID,
		ClientSecret: daemonPass,
		TokenURL:     s.TokenURL,
		Scopes:       []string{outlookDef},
		AuthStyle:    oauth2.AuthStyleInParams,
	}
}

func publicConfig(s *Server) *oauth2.Config {
	return &oauth2.Config{
		ClientID: publicID,
		Endpoint: oauth2.Endpoint{
			AuthURL:       s.AuthorizeURL,
			TokenURL:      s.TokenURL,
			DeviceAuthURL: s.DeviceURL,
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		RedirectURL: "http://localhost:8400/callback",
		Scopes:      delegatedScopes,
	}
}

// wantAADError checks that err is Entra's error with this code and number,
// in Entra's body format.
func wantAADError(t *testing.T, err error, status int, code string, aadsts int) {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error = %v, want *oauth2.RetrieveError", err)
	}
	if re.Response.StatusCode != status || re.ErrorCode != code {
		t.Errorf("got HTTP %d %q, want %d %q; body %s", re.Response.StatusCode, re.ErrorCode, status, code, re.Body)
	}
	if aadsts != 0 {
		if prefix := "AADSTS" + strconv.Itoa(aadsts) + ": "; !strings.HasPrefix(re.ErrorDescription, prefix) {
			t.Errorf("error_description = %q, want prefix %q", re.ErrorDescription, prefix)
		}
		if !strings.Contains(string(re.Body), `"error_codes":[`+strconv.Itoa(aadsts)+`]`) {
			t.Errorf("body lacks error_codes [%d]: %s", aadsts, re.Body)
		}
	}
	for _, k := range []string{"Trace ID: ", "Correlation ID: ", "Timestamp: ", `"trace_id"`, `"correlation_id"`, `"timestamp"`} {
		if !strings.Contains(string(re.Body), k) {
			t.Errorf("body lacks %s: %s", k, re.Body)
		}
	}
}

func TestCAFileAndShutdown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	s, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("CAFile holds no certificate")
	}
	conn, err := tls.Dial("tcp", s.IMAPAddr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("IMAP TLS with CAFile: %v", err)
	}
	conn.Close()

	cancel() // the context ends the server
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(s.CAFile); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("CAFile still there after the context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c, err := net.Dial("tcp", s.SMTPAddr); err == nil {
		c.Close()
		t.Error("SMTP still listening")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDeviceLoginPage(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	da, err := publicConfig(s).DeviceAuth(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.HTTPClient().PostForm(s.DeviceLoginURL, url.Values{"otc": {da.UserCode}, "mailbox": {bob}, "action": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := publicConfig(s).DeviceAccessToken(ctxWithClient(t, s), da); err != nil {
		t.Fatal(err)
	}
}
