package main

// End-to-end tests of the commands, run in-process through run() against a
// fake Microsoft 365 (internal/fakems) on 127.0.0.1 with real TLS. This file
// holds the shared fixture (the fake, a configuration writer, a
// goroutine-safe buffer, bounded waits) and the tests of the small commands:
// hash-password, version, usage and demo.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// The identities of the fixture.
const (
	appID       = "11111111-aaaa-bbbb-cccc-000000000001" // confidential app, client credentials
	appSecret   = "app-Secret~Value.42"
	publicID    = "22222222-aaaa-bbbb-cccc-000000000002" // public client: device code, auth code
	mailbox     = "invoices@contoso.com"                 // granted to appID
	salesBox    = "sales@contoso.com"                    // granted to appID
	noGrantBox  = "nogrant@contoso.com"                  // exists, not granted to appID
	localUser   = "erp"
	localPass   = "erp-Local-Password-1"
	salesUser   = "sales"
	salesPass   = "sales-Local-Password-2"
	recipient   = "customer@example.net"
	waitTimeout = 20 * time.Second
)

// hashOf is a cheap bcrypt hash (MinCost): the tests log in often.
func hashOf(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// syncBuffer collects a command's output while the test reads it.
type syncBuffer = testutil.Buf

// waitFor polls cond until it holds; the test fails after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMatch waits until re matches the buffer and returns the submatches.
// done, when not nil, is a background command's exit channel: the wait
// fails at once if the command ends first (errb is then shown).
func waitMatch(t testing.TB, buf *syncBuffer, re *regexp.Regexp, what string, done <-chan int, errb *syncBuffer) []string {
	t.Helper()
	var m []string
	waitFor(t, waitTimeout, what, func() bool {
		select {
		case code := <-done:
			t.Fatalf("the command exited (%d) before %s:\n%s\n%s", code, what, buf.String(), errb.String())
		default:
		}
		m = re.FindStringSubmatch(buf.String())
		return m != nil
	})
	return m
}

// result is what a command did.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// runCmd runs the command in-process with a bounded context.
func runCmd(t testing.TB, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out, errb syncBuffer
	code := run(ctx, args, stdin, &out, &errb)
	if ctx.Err() != nil {
		t.Fatalf("%v: did not finish within %v", args, waitTimeout)
	}
	return result{code, out.String(), errb.String()}
}

// background runs a command in a goroutine; the returned channel gets its
// exit code.
func background(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, args ...string) <-chan int {
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, stdin, stdout, stderr) }()
	return done
}

// exitCode waits (bounded) for a background command's exit code.
func exitCode(t testing.TB, done <-chan int, what string) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not exit within %v", what, waitTimeout)
		return -1
	}
}

// startFake starts a fake Microsoft 365 with the fixture's apps and
// mailboxes; it is closed when the test ends.
func startFake(t testing.TB, opts fakems.Options) *fakems.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ms, err := fakems.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	ms.AddApp(fakems.App{ClientID: appID, Secret: appSecret})
	ms.AddApp(fakems.App{ClientID: publicID, PublicClient: true})
	for _, mb := range []string{mailbox, salesBox, noGrantBox} {
		ms.AddMailbox(mb, "entra-password-of-"+mb)
	}
	ms.GrantApp(appID, mailbox)
	ms.GrantApp(appID, salesBox)
	return ms
}

// acct is one account of a test configuration.
type acct struct {
	name, provider, mailbox, username, hash string
	allowedFrom                             []string
	upstream                                string // "" leaves the default (smtp)
}

// cfgSpec is a test configuration. Providers "app" (client credentials),
// "device" (device code) and "authcode" (authorization code) are always
// there, all pointing at the fake.
type cfgSpec struct {
	stateDir      string
	level, format string // log
	// smtp, imap, pop3, admin are the listener maps; empty means
	// {addr: "off"}.
	smtp, imap, pop3, admin string
	secret                  string // the app's client_secret; empty: the right one
	accounts                []acct
}

// invoices is the usual account: client credentials, user erp.
func invoices(t testing.TB) acct {
	return acct{name: "invoices", provider: "app", mailbox: mailbox, username: localUser,
		hash: hashOf(t, localPass), allowedFrom: []string{mailbox}}
}

// configYAML renders spec for the fake ms.
func configYAML(ms *fakems.Server, spec cfgSpec) string {
	off := func(s string) string {
		if s == "" {
			return `{addr: "off"}`
		}
		return s
	}
	if spec.level == "" {
		spec.level = "info"
	}
	if spec.format == "" {
		spec.format = "text"
	}
	if spec.secret == "" {
		spec.secret = appSecret
	}
	var b strings.Builder
	fmt.Fprintf(&b, `state_dir: %q
log: {level: %s, format: %s}
listen:
  smtp: %s
  imap: %s
  pop3: %s
  admin: %s
providers:
  app:
    type: microsoft
    tenant: %q
    client_id: %q
    client_secret: %q
    grant: client_credentials
    token_url: %q
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    pop3: {addr: %q, tls: implicit}
    graph: {url: %q}
    ca_file: %q
  device:
    type: microsoft
    tenant: %q
    client_id: %q
    grant: device_code
    token_url: %q
    device_url: %q
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    pop3: {addr: %q, tls: implicit}
    ca_file: %q
  authcode:
    type: microsoft
    tenant: %q
    client_id: %q
    grant: authorization_code
    token_url: %q
    authorize_url: %q
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    pop3: {addr: %q, tls: implicit}
    ca_file: %q
accounts:
`, spec.stateDir, spec.level, spec.format, off(spec.smtp), off(spec.imap), off(spec.pop3), off(spec.admin),
		ms.Tenant, appID, spec.secret, ms.TokenURL, ms.SMTPAddr, ms.IMAPAddr, ms.POP3Addr, ms.GraphURL, ms.CAFile,
		ms.Tenant, publicID, ms.TokenURL, ms.DeviceURL, ms.SMTPAddr, ms.IMAPAddr, ms.POP3Addr, ms.CAFile,
		ms.Tenant, publicID, ms.TokenURL, ms.AuthorizeURL, ms.SMTPAddr, ms.IMAPAddr, ms.POP3Addr, ms.CAFile)
	for _, a := range spec.accounts {
		fmt.Fprintf(&b, "  - name: %s\n    provider: %s\n    mailbox: %q\n", a.name, a.provider, a.mailbox)
		if a.username != "" {
			fmt.Fprintf(&b, "    username: %q\n    password_hash: %q\n", a.username, a.hash)
		}
		if len(a.allowedFrom) > 0 {
			q := make([]string, len(a.allowedFrom))
			for i, f := range a.allowedFrom {
				q[i] = fmt.Sprintf("%q", f)
			}
			fmt.Fprintf(&b, "    allowed_from: [%s]\n", strings.Join(q, ", "))
		}
		if a.upstream != "" {
			fmt.Fprintf(&b, "    upstream: %s\n", a.upstream)
		}
	}
	return b.String()
}

// writeConfig writes spec to path (atomically, so a SIGHUP never reads a
// half-written file).
func writeConfig(t testing.TB, ms *fakems.Server, path string, spec cfgSpec) {
	t.Helper()
	writeFile(t, path, configYAML(ms, spec))
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// newConfig writes a configuration with a fresh state_dir and returns its
// path.
func newConfig(t testing.TB, ms *fakems.Server, spec cfgSpec) string {
	t.Helper()
	dir := t.TempDir()
	if spec.stateDir == "" {
		spec.stateDir = filepath.Join(dir, "state")
	}
	path := filepath.Join(dir, "oauthrelay.yaml")
	writeConfig(t, ms, path, spec)
	return path
}

// sendDirect submits a message straight to the fake's SMTP with XOAUTH2
// and tok: the proof that a token printed by `token` is a usable one.
func sendDirect(t testing.TB, ms *fakems.Server, user, tok, subject string) {
	t.Helper()
	c, err := smtp.DialStartTLS(ms.SMTPAddr, ms.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewXOAuth2Client(user, tok)); err != nil {
		t.Fatalf("AUTH XOAUTH2 at the fake with the printed token: %v", err)
	}
	sendOn(t, c, user, subject)
	c.Quit()
}

// sendOn sends one message on a logged-in client.
func sendOn(t testing.TB, c *smtp.Client, from, subject string) {
	t.Helper()
	if err := sendMail(c, from, subject); err != nil {
		t.Fatalf("send %q: %v", subject, err)
	}
}

func sendMail(c *smtp.Client, from, subject string) error {
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		return fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	fmt.Fprintf(w, "From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nbody of %s\r\n", from, recipient, subject, subject)
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

// delivered waits until the fake has a message with this subject.
func delivered(t testing.TB, ms *fakems.Server, subject string) fakems.Message {
	t.Helper()
	var found fakems.Message
	waitFor(t, waitTimeout, "message "+subject+" at the fake", func() bool {
		for _, m := range ms.Messages() {
			if bytes.Contains(m.Data, []byte("Subject: "+subject+"\r\n")) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// localCert is the relay's own listener certificate.
func localCert(t testing.TB) *testutil.LocalCert { return testutil.NewLocalCert(t) }

func TestHashPassword(t *testing.T) {
	for _, tc := range []struct{ name, in, pw string }{
		{"newline", "correct horse battery\n", "correct horse battery"},
		{"crlf", "p@ss w0rd\r\n", "p@ss w0rd"},
		{"no newline", "$dollar$sign", "$dollar$sign"},
		{"only first line", "first\nsecond\n", "first"},
		{"72 bytes", strings.Repeat("x", 72) + "\n", strings.Repeat("x", 72)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCmd(t, strings.NewReader(tc.in), "hash-password")
			if r.code != 0 {
				t.Fatalf("want exit 0: %v", r)
			}
			h := strings.TrimSuffix(r.stdout, "\n")
			if strings.Contains(h, "\n") || !strings.HasPrefix(h, "$2") {
				t.Fatalf("stdout is not one bcrypt hash: %q", r.stdout)
			}
			if err := bcrypt.CompareHashAndPassword([]byte(h), []byte(tc.pw)); err != nil {
				t.Fatalf("hash does not verify %q: %v", tc.pw, err)
			}
			if cost, _ := bcrypt.Cost([]byte(h)); cost < bcrypt.DefaultCost {
				t.Errorf("cost %d < %d", cost, bcrypt.DefaultCost)
			}
			if strings.Contains(r.stdout+r.stderr, tc.pw) {
				t.Errorf("the password was echoed")
			}
		})
	}
	for _, tc := range []struct {
		name, in string
		args     []string
		code     int
		stderr   string
	}{
		{"empty", "", nil, 1, "empty password"},
		{"empty line", "\n", nil, 1, "empty password"},
		{"too long", strings.Repeat("y", 73) + "\n", nil, 1, "72 bytes"},
		{"argument", "pw\n", []string{"secret-on-command-line"}, 2, "usage: oauthrelay hash-password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCmd(t, strings.NewReader(tc.in), append([]string{"hash-password"}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("want exit %d and %q on stderr: %v", tc.code, tc.stderr, r)
			}
			if r.stdout != "" {
				t.Errorf("stdout should be empty: %q", r.stdout)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	r := runCmd(t, nil, "version")
	if r.code != 0 || r.stdout != "oauthrelay "+version+"\n" || r.stderr != "" {
		t.Fatalf("want %q: %v", "oauthrelay "+version, r)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}} {
		r := runCmd(t, nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "usage: oauthrelay COMMAND") {
			t.Errorf("%v: want exit 2 and the usage: %v", args, r)
		}
		for _, c := range []string{"serve", "check", "login", "token", "hash-password", "demo", "version"} {
			if !strings.Contains(r.stderr, "oauthrelay "+c) {
				t.Errorf("%v: usage lacks %s", args, c)
			}
		}
	}
	// A command's own usage errors: exit 2 with that command's usage.
	for _, args := range [][]string{
		{"token", "-config", "x.yaml"},
		{"token", "-config", "x.yaml", "a", "b"},
		{"login", "-config", "x.yaml"},
		{"check", "-config", "x.yaml", "a", "b", "c"},
		{"serve", "-config", "x.yaml", "extra"},
		{"serve", "-h"},
	} {
		r := runCmd(t, nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "usage: oauthrelay "+args[0]) {
			t.Errorf("%v: want exit 2 and the %s usage: %v", args, args[0], r)
		}
	}
	// A missing configuration file is an error naming the file: exit 1,
	// and 2 for check, whose 1 means a step failed.
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for cmd, code := range map[string]int{"check": 2, "serve": 1} {
		r := runCmd(t, nil, cmd, "-config", missing)
		if r.code != code || !strings.Contains(r.stderr, "missing.yaml") {
			t.Errorf("%s with a missing config: want exit %d naming the file: %v", cmd, code, r)
		}
	}
}

// A flag the command does not know is a usage error as well: exit 2, as
// flag.ExitOnError and most command-line tools do.
func TestUsageUnknownFlag(t *testing.T) {
	r := runCmd(t, nil, "serve", "-bogus")
	if r.code != 2 || !strings.Contains(r.stderr, "usage: oauthrelay serve") {
		t.Fatalf("want exit 2 and the serve usage: %v", r)
	}
}

// runDemoOnce runs `oauthrelay demo args...` until it says it serves,
// stops it, and returns what it printed.
func runDemoOnce(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var out, errb syncBuffer
	done := background(runCtx, nil, &out, &errb, append([]string{"demo"}, args...)...)
	waitFor(t, waitTimeout, "the demo to say Press Ctrl-C to stop", func() bool {
		select {
		case code := <-done:
			t.Fatalf("demo exited early with %d:\n%s\n%s", code, out.String(), errb.String())
		default:
		}
		return strings.Contains(out.String(), "Press Ctrl-C to stop.")
	})
	stop()
	if code := exitCode(t, done, "demo"); code != 0 {
		t.Fatalf("demo exit %d:\n%s\n%s", code, out.String(), errb.String())
	}
	return out.String()
}

func TestDemo(t *testing.T) {
	o := runDemoOnce(t)
	for _, want := range []string{
		"the relay answered: 250",
		"| Subject: oauthrelay demo",  // the delivered message
		"XOAUTH2 user " + demoMailbox, // as the fake saw it
		"app-only token: true",        // client credentials
		"| Subject: Order 1001",       // the IMAP FETCH
		"| Please ship order 1001.",   // its body
		"swaks --server 127.0.0.1:",   // hints
		"--auth-user demo --auth-password demo-password",
		"curl --url 'imap://127.0.0.1:",
		"--user demo:demo-password",
		"Status page and metrics: http://127.0.0.1:",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("stdout:\n%s", o)
	}
}
