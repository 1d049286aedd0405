package imap

// The world fixture: a fake Microsoft 365 (internal/fakems) as the upstream,
// a proxy.Relay configured in Go for two accounts, and this package's Server
// listening on 127.0.0.1 with a certificate made for the test. Every piece
// is torn down by t.Cleanup, and the relay's log is checked at the end for
// secrets (passwords, XOAUTH2 payloads) and shown with t.Log on failure.

import (
	"bufio"
	"bytes"
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

	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	testClientID = "11111111-1111-1111-1111-111111111111"
	testSecret   = "fake-client-secret"
	testMailbox  = "invoices@contoso.com"
	testUser     = "erp"
	testPassword = "Erp-Local-Pass-1"
	// oddUser's password needs quoting or a literal.
	oddUser      = "odd user"
	oddPassword  = `p"a\ss {5} wörd`
	oddMailbox   = "odd@contoso.com"
	ghostUser    = "ghost"
	ghostMailbox = "ghost@contoso.com"
)

// worldOptions vary the fixture; the zero value is a plain loopback
// listener in front of the fake's implicit-TLS IMAP.
type worldOptions struct {
	// TLS is the local listener's tls: none (default), starttls, implicit.
	TLS string
	// AllowInsecure is the listener's allow_insecure.
	AllowInsecure bool
	// Upstream replaces the provider's IMAP server (closed ports, scripted
	// servers); its TLS defaults to "none".
	Upstream *config.Upstream
	// UpstreamCAFile replaces the fake's CA for upstream TLS (a scripted
	// upstream with its own certificate).
	UpstreamCAFile string
	// PreAuthTimeout replaces the server's pre-authentication timeout.
	PreAuthTimeout time.Duration
	// MaxUnauthenticated and MaxUnauthenticatedPerAddr set the
	// proxy.Listener's caps (0: its defaults).
	MaxUnauthenticated, MaxUnauthenticatedPerAddr int
	// Listen replaces proxy.Listen (a plain net.Listener, or one that
	// fails): the server must work with any listener.
	Listen func(t testing.TB, lc config.Listener) net.Listener
	// DomainWide adds account "wide": mailbox "*@contoso.com" restricted
	// to testMailbox, password testPassword (apps log in as testMailbox).
	DomainWide bool
}

type world struct {
	t     testing.TB
	fake  *fakems.Server
	cfg   *config.Config
	relay *proxy.Relay
	srv   *Server
	lc    config.Listener
	addr  string         // the proxy's address
	roots *x509.CertPool // trusts the local listener's certificate
	obs   *recorder
	logs  *testutil.Buf
}

func newWorld(t testing.TB, o worldOptions) *world {
	t.Helper()
	w := &world{t: t, obs: &recorder{}, logs: &testutil.Buf{}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fake, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	w.fake = fake
	fake.AddApp(fakems.App{ClientID: testClientID, Secret: testSecret})
	fake.AddMailbox(testMailbox, "mailbox-pw")
	fake.AddMailbox(oddMailbox, "mailbox-pw2")
	fake.GrantApp(testClientID, testMailbox)
	fake.GrantApp(testClientID, oddMailbox)

	dir := t.TempDir()
	w.lc = config.Listener{Addr: "127.0.0.1:0", TLS: o.TLS, AllowInsecure: o.AllowInsecure}
	if o.TLS == "" {
		w.lc.TLS = config.TLSNone
	}
	cert := testutil.NewLocalCert(t)
	w.lc.CertFile, w.lc.KeyFile, w.roots = cert.CertFile, cert.KeyFile, cert.Pool
	if w.lc.TLS == config.TLSNone {
		w.lc.CertFile, w.lc.KeyFile = "", ""
	}

	up := config.Upstream{Addr: fake.IMAPAddr, TLS: config.TLSImplicit}
	if o.Upstream != nil {
		up = *o.Upstream
		if up.TLS == "" {
			up.TLS = config.TLSNone
		}
	}
	prov := &config.Provider{
		Name:         "contoso",
		Type:         config.TypeMicrosoft,
		Cloud:        config.CloudGlobal,
		Tenant:       fake.Tenant,
		ClientID:     testClientID,
		ClientSecret: testSecret,
		Grant:        config.GrantClientCredentials,
		TokenURL:     fake.TokenURL,
		Scopes:       []string{"https://outlook.office365.com/.default"},
		SMTP:         config.Upstream{Addr: fake.SMTPAddr, TLS: config.TLSStartTLS},
		IMAP:         up,
		CAFile:       fake.CAFile,
	}
	if o.UpstreamCAFile != "" {
		prov.CAFile = o.UpstreamCAFile
	}
	account := func(name, mailbox, user, pw string) *config.Account {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return &config.Account{Name: name, Provider: "contoso", Mailbox: mailbox, Username: user,
			PasswordHash: string(h), AllowedFrom: []string{mailbox}, ProviderRef: prov}
	}
	w.cfg = &config.Config{
		StateDir:  dir,
		Listen:    config.Listen{IMAP: w.lc},
		Providers: map[string]*config.Provider{"contoso": prov},
		Accounts: []*config.Account{
			account("invoices", testMailbox, testUser, testPassword),
			account("odd", oddMailbox, oddUser, oddPassword),
			// The fake has no such mailbox: Exchange refuses the token.
			account("ghost", ghostMailbox, ghostUser, testPassword),
		},
	}
	if o.DomainWide {
		wide := account("wide", "*@contoso.com", "", testPassword)
		wide.Mailboxes, wide.AllowedFrom = []string{testMailbox}, []string{testMailbox}
		w.cfg.Accounts = append(w.cfg.Accounts, wide)
	}
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w.relay, err = proxy.NewRelay(w.cfg, proxy.Options{Logger: log, HTTPClient: fake.HTTPClient(), Observer: w.obs})
	if err != nil {
		t.Fatal(err)
	}
	w.srv, err = New(w.relay, w.lc)
	if err != nil {
		t.Fatal(err)
	}
	if o.PreAuthTimeout > 0 {
		w.srv.PreAuthTimeout = o.PreAuthTimeout
	}
	var ln net.Listener
	if o.Listen != nil {
		ln = o.Listen(t, w.lc)
	} else {
		pl, err := proxy.Listen(w.lc)
		if err != nil {
			t.Fatal(err)
		}
		pl.MaxUnauthenticated, pl.MaxUnauthenticatedPerAddr = o.MaxUnauthenticated, o.MaxUnauthenticatedPerAddr
		ln = pl
	}
	w.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- w.srv.Serve(ln) }()
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
	secrets := []string{testPassword, oddPassword, "auth=Bearer", plain(testUser, testPassword),
		// The base64 of an XOAUTH2 payload starts with this ("user=").
		strings.TrimRight(base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(testMailbox, "")[:12]), "=")}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			w.t.Errorf("secret %q in the log", s)
		}
	}
	if w.t.Failed() {
		w.t.Logf("relay log:\n%s", logs)
	}
}

// dialRaw connects without TLS (or with implicit TLS when the listener has
// it) and reads the greeting.
func (w *world) dialRaw() *rawClient {
	w.t.Helper()
	var c net.Conn
	var err error
	if w.lc.TLS == config.TLSImplicit {
		c, err = tls.Dial("tcp", w.addr, &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"})
	} else {
		c, err = net.Dial("tcp", w.addr)
	}
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	rc := newRawClient(w.t, c)
	if g := rc.line(); !strings.HasPrefix(g, "* OK [CAPABILITY ") {
		w.t.Fatalf("greeting %q", g)
	}
	return rc
}

// client dials the proxy with imapclient (STARTTLS or implicit TLS as the
// listener does).
func (w *world) client() *imapclient.Client {
	w.t.Helper()
	return w.clientWith(&imapclient.Options{})
}

func (w *world) clientWith(opts *imapclient.Options) *imapclient.Client {
	w.t.Helper()
	opts.TLSConfig = &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"}
	var c *imapclient.Client
	var err error
	switch w.lc.TLS {
	case config.TLSStartTLS:
		c, err = imapclient.DialStartTLS(w.addr, opts)
	case config.TLSImplicit:
		c, err = imapclient.DialTLS(w.addr, opts)
	default:
		c, err = imapclient.DialInsecure(w.addr, opts)
	}
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	return c
}

// login dials and logs in as the test user.
func (w *world) login() *imapclient.Client {
	w.t.Helper()
	c := w.client()
	if err := c.Login(testUser, testPassword).Wait(); err != nil {
		w.t.Fatalf("login: %v", err)
	}
	return c
}

// direct dials the fake's IMAP server and logs in with XOAUTH2, bypassing
// the proxy.
func (w *world) direct() *imapclient.Client {
	w.t.Helper()
	c, err := imapclient.DialTLS(w.fake.IMAPAddr, &imapclient.Options{TLSConfig: w.fake.ClientTLSConfig()})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	tok, err := w.relay.Accounts()[0].Source.Token(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	if err := c.Authenticate(sasl.NewXOAuth2Client(testMailbox, tok)); err != nil {
		w.t.Fatalf("direct login: %v", err)
	}
	return c
}

// rawClient speaks IMAP by hand, for what imapclient cannot send.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	buf  []byte
}

func newRawClient(t testing.TB, c net.Conn) *rawClient { return &rawClient{t: t, conn: c} }

func (c *rawClient) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// line reads one line (without CRLF).
func (c *rawClient) line() string {
	c.t.Helper()
	l, err := c.readLine(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v (have %q)", err, c.buf)
	}
	return l
}

func (c *rawClient) readLine(timeout time.Duration) (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		if i := bytes.Index(c.buf, []byte("\r\n")); i >= 0 {
			l := string(c.buf[:i])
			c.buf = c.buf[i+2:]
			return l, nil
		}
		b := make([]byte, 4096)
		n, err := c.conn.Read(b)
		c.buf = append(c.buf, b[:n]...)
		if err != nil {
			return "", err
		}
	}
}

// until reads lines until one starts with prefix and returns all of them.
func (c *rawClient) until(prefix string) []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, prefix) {
			return lines
		}
	}
}

// expectClosed checks that the server closes the connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	for {
		l, err := c.readLine(10 * time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatal("connection still open")
			}
			return
		}
		if !strings.HasPrefix(l, "* BYE") {
			c.t.Fatalf("unexpected line before close: %q", l)
		}
	}
}

// recorder is a proxy.Observer that remembers what it was told.
type recorder struct {
	mu          sync.Mutex
	conns       int
	logins      []string // "account:result"
	upstreams   []string // "account:result"
	transferred [2]int64
	unauth      int      // connections that have not logged in
	rejected    []string // "proto:reason" of connections refused at accept
}

func (r *recorder) Unauthenticated(_ events.Proto, delta int) {
	r.mu.Lock()
	r.unauth += delta
	r.mu.Unlock()
}

func (r *recorder) PreAuthRejected(proto events.Proto, reason events.PreAuthReason) {
	r.mu.Lock()
	r.rejected = append(r.rejected, string(proto)+":"+string(reason))
	r.mu.Unlock()
}

func (r *recorder) PreAuthLimits(events.Proto, int, int) {}

func (r *recorder) Connection(_ events.Proto, delta int) {
	r.mu.Lock()
	r.conns += delta
	r.mu.Unlock()
}

func (r *recorder) Login(_ events.Proto, a events.Account, result events.LoginResult) {
	r.mu.Lock()
	r.logins = append(r.logins, name(a)+":"+string(result))
	r.mu.Unlock()
}

func (r *recorder) Upstream(_ events.Proto, a events.Account, result events.UpstreamResult, took time.Duration) {
	r.mu.Lock()
	r.upstreams = append(r.upstreams, name(a)+":"+string(result))
	r.mu.Unlock()
}

func (r *recorder) Message(events.Account, int64)                                  {}
func (r *recorder) TokenRequest(events.Account, events.TokenResult, time.Duration) {}

func (r *recorder) Transferred(_ events.Proto, _ events.Account, in, out int64) {
	r.mu.Lock()
	r.transferred[0] += in
	r.transferred[1] += out
	r.mu.Unlock()
}

func (r *recorder) snapshot() (logins, upstreams []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.logins...), append([]string(nil), r.upstreams...)
}

func name(a events.Account) string {
	if a.Name == "" {
		return "-"
	}
	return a.Name
}

// waitFor polls cond for up to 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// scriptedUpstream serves each connection with script on a loopback port
// (plain TCP), for upstream behaviour the fake does not have. script runs
// in its own goroutine: it reports problems with t.Error only.
func scriptedUpstream(t testing.TB, script func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				script(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// expectLine reads a line in a scripted upstream and reports one that does
// not start with prefix.
func expectLine(t testing.TB, br *bufio.Reader, prefix string) string {
	l, err := splice.ReadLine(br, 1<<20)
	if err != nil {
		t.Errorf("upstream script: read: %v", err)
		return ""
	}
	if !strings.HasPrefix(string(l), prefix) {
		t.Errorf("upstream script: got %q, want %q...", l, prefix)
	}
	return string(l)
}

// quote makes an IMAP quoted string.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// plain is a base64 AUTHENTICATE PLAIN response.
func plain(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}
