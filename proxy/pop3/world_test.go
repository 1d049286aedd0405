package pop3

// The world fixture: a fake Microsoft 365 (internal/fakems) as the POP3
// upstream, a proxy.Relay configured in Go, and this package's Server on
// 127.0.0.1 with a certificate made for the test. Everything is torn down
// by t.Cleanup; the relay's log is checked for secrets at the end.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// TestMain fails the package's tests if any goroutine is still running once
// they end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testClientID = "11111111-1111-1111-1111-111111111111"
	testSecret   = "fake-client-secret"
	testMailbox  = "invoices@contoso.com"
	testUser     = "erp"
	testPassword = "Erp Local Pass 1" // spaces: PASS takes the rest of the line
	// ghost has no mailbox at the fake: Exchange refuses the token.
	ghostUser = "ghost"
	// stranger logs in upstream as a mailbox the app is not granted.
	strangerUser = "stranger"
	// broken's provider has a wrong client secret: it needs an
	// administrator (AADSTS7000215).
	brokenUser = "broken"
	// down's provider's POP3 server does not answer: unavailable.
	downUser = "down"
	// clientLimit bounds every client exchange of a test.
	clientLimit = 30 * time.Second
)

// worldOptions vary the fixture; the zero value is a plain loopback
// listener in front of the fake's POP3.
type worldOptions struct {
	// TLS is the local listener's tls: none (default), starttls, implicit.
	TLS string
	// PreAuthTimeout replaces the server's pre-authentication timeout.
	PreAuthTimeout time.Duration
	// MaxUnauthenticated sets the proxy.Listener's cap (0: its default).
	MaxUnauthenticated int
	// Dovecot makes a real Dovecot POP3 server (testutil.StartDovecot,
	// XOAUTH2 checked by the fake's introspection) the upstream of the
	// invoices and stranger accounts.
	Dovecot bool
}

type world struct {
	t     testing.TB
	fake  *fakems.Server
	relay *proxy.Relay
	srv   *Server
	lc    config.Listener
	addr  string
	port  string
	cert  *testutil.LocalCert
	roots *x509.CertPool
	dc    *testutil.Dovecot // with worldOptions.Dovecot
	obs   *recorder
	logs  *testutil.Buf
}

func newWorld(t testing.TB, o worldOptions) *world {
	t.Helper()
	w := &world{t: t, obs: &recorder{}, logs: &testutil.Buf{}}
	fake, err := fakems.Start(context.Background(), fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	w.fake = fake
	fake.AddApp(fakems.App{ClientID: testClientID, Secret: testSecret})
	fake.AddMailbox(testMailbox, "mailbox-pw")
	fake.GrantApp(testClientID, testMailbox)

	w.lc = config.Listener{Addr: "127.0.0.1:0", TLS: o.TLS}
	if o.TLS == "" {
		w.lc.TLS = config.TLSNone
	}
	w.cert = testutil.NewLocalCert(t)
	w.roots = w.cert.Pool
	if w.lc.TLS != config.TLSNone {
		w.lc.CertFile, w.lc.KeyFile = w.cert.CertFile, w.cert.KeyFile
	}

	provider := func(name, secret string, pop3 config.Upstream, caFile string) *config.Provider {
		return &config.Provider{
			Name: name, Type: config.TypeMicrosoft, Cloud: config.CloudGlobal, Tenant: fake.Tenant,
			ClientID: testClientID, ClientSecret: secret, Grant: config.GrantClientCredentials,
			TokenURL: fake.TokenURL, Scopes: []string{"https://outlook.office365.com/.default"},
			SMTP:   config.Upstream{Addr: fake.SMTPAddr, TLS: config.TLSStartTLS},
			IMAP:   config.Upstream{Addr: fake.IMAPAddr, TLS: config.TLSImplicit},
			POP3:   pop3,
			CAFile: caFile,
		}
	}
	fakePOP3 := config.Upstream{Addr: fake.POP3Addr, TLS: config.TLSImplicit}
	main := provider("contoso", testSecret, fakePOP3, fake.CAFile)
	if o.Dovecot {
		w.dc = testutil.StartDovecot(t, testutil.DovecotOptions{IntrospectURL: fake.IntrospectURL, Users: []string{testMailbox}, POP3: true})
		main = provider("contoso", testSecret, config.Upstream{Addr: w.dc.POP3Addr, TLS: config.TLSImplicit}, w.dc.CAFile)
	}
	providers := map[string]*config.Provider{
		"contoso": main,
		"ghostly": provider("ghostly", testSecret, fakePOP3, fake.CAFile),
		"broken":  provider("broken", "the-secret-ID-not-its-value", fakePOP3, fake.CAFile),
		"down":    provider("down", testSecret, config.Upstream{Addr: testutil.ClosedAddr(t), TLS: config.TLSImplicit}, fake.CAFile),
	}
	account := func(name, prov, mailbox, user string) *config.Account {
		h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return &config.Account{Name: name, Provider: prov, Mailbox: mailbox, Username: user,
			PasswordHash: string(h), AllowedFrom: []string{mailbox}, ProviderRef: providers[prov]}
	}
	cfg := &config.Config{
		StateDir:  t.TempDir(),
		Listen:    config.Listen{POP3: w.lc},
		Providers: providers,
		Accounts: []*config.Account{
			account("invoices", "contoso", testMailbox, testUser),
			account("ghost", "ghostly", "ghost@contoso.com", ghostUser),
			// The app is granted invoices only: the fake's introspection
			// names invoices as the token's user, so Dovecot refuses
			// stranger's login whatever token the relay brings.
			account("stranger", "contoso", "stranger@contoso.com", strangerUser),
			account("broken", "broken", testMailbox, brokenUser),
			account("down", "down", testMailbox, downUser),
		},
	}
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if w.relay, err = proxy.NewRelay(cfg, proxy.Options{Logger: log, HTTPClient: fake.HTTPClient(), Observer: w.obs}); err != nil {
		t.Fatal(err)
	}
	if w.srv, err = New(w.relay, w.lc); err != nil {
		t.Fatal(err)
	}
	if o.PreAuthTimeout > 0 {
		w.srv.PreAuthTimeout = o.PreAuthTimeout
	}
	pl, err := proxy.Listen(w.lc)
	if err != nil {
		t.Fatal(err)
	}
	pl.MaxUnauthenticated = o.MaxUnauthenticated
	w.addr = pl.Addr().String()
	_, w.port, _ = net.SplitHostPort(w.addr)
	served := make(chan error, 1)
	go func() { served <- w.srv.Serve(pl) }()
	t.Cleanup(func() {
		w.srv.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		w.checkLogs()
	})
	return w
}

// checkLogs fails the test if a secret reached the log, and shows the log
// when the test failed.
func (w *world) checkLogs() {
	logs := w.logs.String()
	for _, s := range []string{testPassword, "auth=Bearer", plain(testUser, testPassword),
		strings.TrimRight(base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(testMailbox, "")[:12]), "=")} {
		if strings.Contains(logs, s) {
			w.t.Errorf("secret %q in the log", s)
		}
	}
	if w.t.Failed() {
		w.t.Logf("relay log:\n%s", logs)
	}
}

// seed puts messages into the fake mailbox's INBOX.
func (w *world) seed(msgs ...string) {
	w.t.Helper()
	for _, m := range msgs {
		if err := w.fake.AppendIMAP(testMailbox, "INBOX", []byte(m)); err != nil {
			w.t.Fatal(err)
		}
	}
}

// clientTLS trusts the relay's listener certificate.
func (w *world) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"}
}

// dial connects (with implicit TLS when the listener has it) and reads the
// greeting.
func (w *world) dial() *rawClient {
	w.t.Helper()
	var c net.Conn
	var err error
	if w.lc.TLS == config.TLSImplicit {
		c, err = tls.Dial("tcp", w.addr, w.clientTLS())
	} else {
		c, err = net.Dial("tcp", w.addr)
	}
	if err != nil {
		w.t.Fatal(err)
	}
	rc := newRawClient(w.t, c)
	if g := rc.line(); g != greeting {
		w.t.Fatalf("greeting %q", g)
	}
	return rc
}

// rawClient speaks POP3 line by line.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func newRawClient(t testing.TB, c net.Conn) *rawClient {
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(clientLimit))
	return &rawClient{t: t, conn: c, br: bufio.NewReader(c)}
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

func (c *rawClient) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends one command line and returns the status line answering it.
func (c *rawClient) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.line()
}

// multi reads the lines of a multi-line response up to ".".
func (c *rawClient) multi() []string {
	c.t.Helper()
	var out []string
	for l := c.line(); l != "."; l = c.line() {
		out = append(out, l)
	}
	return out
}

// expectClosed checks that the relay closed the connection (after any
// lines it still had to send).
func (c *rawClient) expectClosed() {
	c.t.Helper()
	if l, err := c.br.ReadString('\n'); err == nil {
		c.t.Errorf("connection still open: got %q", l)
	}
}

// recorder is an events.Observer that keeps what POP3 sessions report.
type recorder struct {
	events.Nop
	mu          sync.Mutex
	logins      []string
	transferred map[events.Proto][2]int64
}

func (r *recorder) Login(p events.Proto, a events.Account, res events.LoginResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := a.Name
	if n == "" {
		n = "-"
	}
	r.logins = append(r.logins, string(p)+":"+n+":"+string(res))
}

func (r *recorder) Transferred(p events.Proto, _ events.Account, in, out int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.transferred == nil {
		r.transferred = map[events.Proto][2]int64{}
	}
	t := r.transferred[p]
	r.transferred[p] = [2]int64{t[0] + in, t[1] + out}
}

func (r *recorder) snapshot() ([]string, map[events.Proto][2]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tr := map[events.Proto][2]int64{}
	for k, v := range r.transferred {
		tr[k] = v
	}
	return append([]string(nil), r.logins...), tr
}

// waitFor polls cond for up to 5 s (an event reported after the client saw
// the connection close).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// plain is a base64 AUTH PLAIN response.
func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

// message is a small RFC 5322 message.
func message(subject, body string) string {
	return "From: someone@example.net\r\nTo: " + testMailbox + "\r\nSubject: " + subject + "\r\n\r\n" + body
}
