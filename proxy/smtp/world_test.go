package smtp

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"

	gosasl "github.com/emersion/go-sasl"
)

// The world of these tests: a fake Microsoft 365 (token endpoint and
// Exchange SMTP on STARTTLS) and the relay in front of it, all on
// 127.0.0.1, with real TLS on both sides.
const (
	clientID  = "11111111-aaaa-bbbb-cccc-000000000001"
	secret    = "app-secret-value"
	mailbox   = "invoices@contoso.com"
	username  = "erp"
	password  = "erp-local-password"
	scanBox   = "scanner@contoso.com"
	recipient = "customer@example.net"
	publicID  = "22222222-aaaa-bbbb-cccc-000000000002"
)

type worldOptions struct {
	ms         fakems.Options
	listenTLS  string // none|starttls|implicit
	relayFrom  bool   // add a scanner account with relay_from 127.0.0.0/8
	smtpAddr   string // override the upstream address (unreachable tests)
	httpClient *http.Client
	secret     string // the relay's client_secret; default the right one
	// tokenFailure and tokenDelay are set at the fake before the relay
	// starts, so not even its first token request succeeds.
	tokenFailure *fakems.TokenFailure
	tokenDelay   time.Duration
	// quiet logs at warn level only (benchmarks: the debug protocol log
	// would be measured too).
	quiet bool
	// passthrough adds a provider with the password grant (a public
	// client) and an account whose app password is the mailbox password.
	passthrough bool
	// enforceHeaderFrom sets enforce_header_from on the invoices account.
	enforceHeaderFrom bool
	// tune changes the server (its timeouts) before it serves.
	tune func(*Server)
	// unlimited raises the relay's per-mailbox limits (Exchange's 30
	// messages a minute and 10,000 recipients a day by default) to the
	// most the configuration allows, for tests of something else, such as
	// many concurrent clients or a benchmark's tens of thousands of
	// messages, against a fake that enforces none.
	unlimited bool
	// wrapLog wraps the relay's log handler.
	wrapLog func(slog.Handler) slog.Handler
	// queue gives the invoices account delivery: queue; its spool is
	// <stateDir>/queue.
	queue bool
	// stateDir is the relay's state_dir; "" is a new temporary one.
	stateDir string
	// upstream is the invoices account's upstream (smtp, graph, auto);
	// "" leaves the default.
	upstream string
}

type world struct {
	t     testing.TB
	ms    *fakems.Server
	relay *proxy.Relay
	srv   *Server
	addr  string
	cert  *testutil.LocalCert
	log   *testutil.Buf
}

var testHash = func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}()

func newWorld(t testing.TB, o worldOptions) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ms, err := fakems.Start(ctx, o.ms)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	ms.AddApp(fakems.App{ClientID: clientID, Secret: secret})
	ms.AddMailbox(mailbox, "mailbox-password")
	ms.AddMailbox(scanBox, "scanner-password")
	ms.GrantApp(clientID, mailbox)
	ms.GrantApp(clientID, scanBox)
	ms.GrantSendAs(mailbox, "ap@billing.contoso.com")
	if o.tokenFailure != nil {
		ms.FailTokenRequests(1000, *o.tokenFailure)
	}
	ms.SetTokenDelay(o.tokenDelay)

	w := &world{t: t, ms: ms, cert: testutil.NewLocalCert(t)}
	if o.listenTLS == "" {
		o.listenTLS = "none"
	}
	if o.smtpAddr == "" {
		o.smtpAddr = ms.SMTPAddr
	}
	if o.secret == "" {
		o.secret = secret
	}
	if o.stateDir == "" {
		o.stateDir = t.TempDir()
	}
	limits := ""
	if o.unlimited {
		limits = "limits: {connections: 100, messages_per_minute: 1000000, recipients_per_day: 1000000}\n"
	}
	yaml := limits + fmt.Sprintf(`
state_dir: %s
listen:
  smtp: {addr: "127.0.0.1:0", tls: %s, cert_file: %s, key_file: %s}
  imap: {addr: "off"}
  admin: {addr: "off"}
providers:
  contoso:
    type: microsoft
    tenant: %s
    client_id: %s
    client_secret: %q
    token_url: %s
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    graph: {url: %q}
    ca_file: %s
accounts:
  - name: invoices
    provider: contoso
    mailbox: %s
    username: %s
    password_hash: %q
    allowed_from: ["invoices@contoso.com", "*@billing.contoso.com"]
    enforce_header_from: %v
`, o.stateDir, o.listenTLS, w.cert.CertFile, w.cert.KeyFile, ms.Tenant, clientID, o.secret, ms.TokenURL,
		o.smtpAddr, ms.IMAPAddr, ms.GraphURL, ms.CAFile, mailbox, username, testHash, o.enforceHeaderFrom)
	if o.upstream != "" {
		yaml += "    upstream: " + o.upstream + "\n"
	}
	if o.queue {
		yaml += "    delivery: queue\n"
	}
	if o.passthrough {
		ms.AddApp(fakems.App{ClientID: publicID, PublicClient: true})
		yaml = strings.Replace(yaml, "accounts:\n", fmt.Sprintf(`  ropc:
    type: microsoft
    tenant: %s
    client_id: %s
    grant: password
    token_url: %s
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    ca_file: %s
accounts:
  - name: shared
    provider: ropc
    mailbox: %s
    username: shared
    password_passthrough: true
`, ms.Tenant, publicID, ms.TokenURL, o.smtpAddr, ms.IMAPAddr, ms.CAFile, scanBox), 1)
	}
	if o.relayFrom {
		yaml += fmt.Sprintf(`
  - name: scanner
    provider: contoso
    mailbox: %s
    relay_from: ["127.0.0.0/8"]
`, scanBox)
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	logger, buf := testutil.Logger(t)
	w.log = buf
	if o.quiet {
		logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if o.wrapLog != nil {
		logger = slog.New(o.wrapLog(logger.Handler()))
	}
	w.relay, err = proxy.NewRelay(cfg, proxy.Options{Logger: logger, HTTPClient: o.httpClient})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRelay := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); w.relay.Run(runCtx) }()
	// The relay stops after the server and before the fake: Run closes the
	// deliveries, whose idle upstream sessions say QUIT to the fake.
	t.Cleanup(func() { stopRelay(); <-ran })
	w.srv, err = New(ctx, w.relay, cfg.Listen.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	if o.tune != nil {
		o.tune(w.srv)
	}
	ln, err := proxy.Listen(cfg.Listen.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- w.srv.Serve(ln) }()
	t.Cleanup(func() {
		w.srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return w
}

// dial returns a go-smtp client connected to the relay, after EHLO.
func (w *world) dial() *smtp.Client {
	w.t.Helper()
	c, err := smtp.Dial(w.addr)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	if err := c.Hello("app.test"); err != nil {
		w.t.Fatal(err)
	}
	return c
}

// login returns a client logged in with AUTH PLAIN.
func (w *world) login() *smtp.Client {
	w.t.Helper()
	c := w.dial()
	if err := c.Auth(gosasl.NewPlainClient("", username, password)); err != nil {
		w.t.Fatalf("AUTH PLAIN: %v", err)
	}
	return c
}

// send sends one message on c and returns the DATA reply text.
func send(c *smtp.Client, from string, to []string, body string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	wc, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := wc.Write([]byte(body)); err != nil {
		return "", err
	}
	resp, err := wc.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func message(from, to, subject, body string) string {
	return "From: " + from + "\r\nTo: " + to + "\r\nSubject: " + subject + "\r\n\r\n" + body + "\r\n"
}

// waitMessages waits for n messages at the fake.
func (w *world) waitMessages(n int) []fakems.Message {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := w.ms.WaitMessages(ctx, n)
	if err != nil {
		w.t.Fatalf("waiting for %d messages: %v (have %d)", n, err, len(w.ms.Messages()))
	}
	return msgs
}

// wantCode checks that err is an SMTP reply with code and enhanced code.
func wantCode(t *testing.T, err error, code int, enh string) *smtp.SMTPError {
	t.Helper()
	se, ok := err.(*smtp.SMTPError)
	if !ok {
		t.Fatalf("got %v (%T), want SMTP reply %d %s", err, err, code, enh)
	}
	got := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if se.Code != code || got != enh {
		t.Fatalf("got reply %d %s %q, want %d %s", se.Code, got, se.Message, code, enh)
	}
	return se
}
