package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// The demo's fixed identities: what the README tells users to type.
const (
	demoMailbox  = "relay-demo@contoso.com"
	demoUser     = "demo"
	demoPassword = "demo-password"
	demoClientID = "00000000-0000-4000-8000-0000000000de"
)

// fakeWorld is a fake Microsoft 365 with one app registration (client
// credentials) and one mailbox, as the demo and the bench use it.
type fakeWorld struct {
	ms     *fakems.Server
	secret string
	// upstream is the account's upstream key ("": the default, smtp).
	upstream string
}

func startFakeWorld(ctx context.Context, opts fakems.Options) (*fakeWorld, error) {
	ms, err := fakems.Start(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("start fake Microsoft 365: %w", err)
	}
	b := make([]byte, 16)
	rand.Read(b)
	w := &fakeWorld{ms: ms, secret: hex.EncodeToString(b)}
	ms.AddApp(fakems.App{ClientID: demoClientID, Secret: w.secret})
	ms.AddMailbox(demoMailbox, "not-used-with-oauth")
	ms.GrantApp(demoClientID, demoMailbox)
	return w, nil
}

// config returns a relay configuration for the fake: one provider with
// client credentials, one account, listeners at smtpAddr, imapAddr and
// pop3Addr.
func (w *fakeWorld) config(stateDir, smtpAddr, imapAddr, pop3Addr, adminAddr string) (*config.Config, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(demoPassword), bcrypt.DefaultCost)
	if err != nil {
		return nil, err
	}
	return config.Parse("demo.yaml", []byte(w.yaml(stateDir, smtpAddr, imapAddr, pop3Addr, adminAddr, string(hash))), func(string) (string, bool) { return "", false })
}

func (w *fakeWorld) yaml(stateDir, smtpAddr, imapAddr, pop3Addr, adminAddr, hash string) string {
	return fmt.Sprintf(`# oauthrelay against the fake Microsoft 365 on loopback
state_dir: %q
log: {level: info}
listen:
  smtp: {addr: %q}
  imap: {addr: %q}
  pop3: {addr: %q}
  admin: {addr: %q}
providers:
  fake365:
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
accounts:
  - name: demo
    provider: fake365
    mailbox: %q
    username: %q
    password_hash: %q
    allowed_from: [%q]
`, stateDir, smtpAddr, imapAddr, pop3Addr, adminAddr, w.ms.Tenant, demoClientID, w.secret, w.ms.TokenURL, w.ms.SMTPAddr, w.ms.IMAPAddr,
		w.ms.POP3Addr, w.ms.GraphURL, w.ms.CAFile, demoMailbox, demoUser, hash, demoMailbox) + w.upstreamKey()
}

// upstreamKey is the account's upstream line, "" for the default.
func (w *fakeWorld) upstreamKey() string {
	if w.upstream == "" {
		return ""
	}
	return "    upstream: " + w.upstream + "\n"
}

// startDemoDaemon starts the relay on the README's ports and, where one of
// them is taken, on ports the system picks: the daemon binds them itself,
// so no port is checked free and then lost to another process.
func startDemoDaemon(ctx context.Context, fw *fakeWorld, stateDir string, stderr io.Writer) (*daemon, error) {
	var err error
	for _, addrs := range [][4]string{
		{"127.0.0.1:2525", "127.0.0.1:1143", "127.0.0.1:1110", "127.0.0.1:8025"},
		{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"},
	} {
		var cfg *config.Config
		if cfg, err = fw.config(stateDir, addrs[0], addrs[1], addrs[2], addrs[3]); err != nil {
			return nil, err
		}
		var d *daemon
		if d, err = startDaemon(ctx, cfg, newLogger(cfg.Log, stderr)); err == nil {
			return d, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
	return nil, err
}

func runDemo(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	viaGraph := fs.Bool("graph", false, "a tenant with SMTP AUTH switched off: the account (upstream: auto) moves to Microsoft Graph")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errUsage
	}
	fw, err := startFakeWorld(ctx, fakems.Options{})
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	if *viaGraph {
		fw.upstream = config.UpstreamAuto
		fw.ms.SetTenantSMTPAuthDisabled(true)
	}
	stateDir, err := os.MkdirTemp("", "oauthrelay-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	d, err := startDemoDaemon(ctx, fw, stateDir, stderr)
	if err != nil {
		return err
	}
	defer d.shutdown(5 * time.Second)
	smtpAddr := d.smtpAddr.String()

	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	p("oauthrelay demo: a fake Microsoft 365 (Entra ID token endpoint %s,", fw.ms.TokenURL)
	p("Exchange SMTP %s with STARTTLS, IMAP %s with TLS) and the relay in front of it.", fw.ms.SMTPAddr, fw.ms.IMAPAddr)
	p("")

	// 1. A legacy app sends a message with a plain username and password.
	subject := "oauthrelay demo " + time.Now().Format(time.RFC3339)
	body := "From: " + demoMailbox + "\r\nTo: someone@example.net\r\nSubject: " + subject +
		"\r\n\r\nThis message went through oauthrelay: AUTH PLAIN from the app, XOAUTH2 upstream.\r\n"
	p("1. SMTP: AUTH PLAIN %s / %s at %s, MAIL FROM <%s>, DATA ...", demoUser, demoPassword, smtpAddr, demoMailbox)
	reply, err := demoSend(smtpAddr, body)
	if err != nil {
		return fmt.Errorf("demo message: %w", err)
	}
	p("   the relay answered: 250 %s", reply)
	if *viaGraph {
		if err := demoGraph(ctx, fw, p); err != nil {
			return err
		}
		return demoRest(ctx, fw, d, p)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	msgs, err := fw.ms.WaitMessages(wctx, 1)
	cancel()
	if err != nil {
		return fmt.Errorf("the fake Exchange did not receive the message: %w", err)
	}
	m := msgs[0]
	p("   the fake Exchange delivered it (XOAUTH2 user %s, app-only token: %v, %d bytes):", m.AuthUser, m.AppOnly, m.Size)
	printLines(p, m.Data)
	return demoRest(ctx, fw, d, p)
}

// demoRest is the IMAP part of the demo and the way to use the relay.
func demoRest(ctx context.Context, fw *fakeWorld, d *daemon, p func(string, ...any)) error {
	smtpAddr, imapAddr := d.smtpAddr.String(), d.imapAddr.String()
	p("")

	// 2. The same app reads the mailbox with a plain IMAP LOGIN.
	inbound := "From: customer@example.net\r\nTo: " + demoMailbox + "\r\nSubject: Order 1001\r\n\r\nPlease ship order 1001.\r\n"
	if err := fw.ms.AppendIMAP(demoMailbox, "INBOX", []byte(inbound)); err != nil {
		return err
	}
	p("2. IMAP: LOGIN %s %s at %s, SELECT INBOX, FETCH 1 ...", demoUser, demoPassword, imapAddr)
	fetched, err := demoFetch(imapAddr)
	if err != nil {
		return fmt.Errorf("demo IMAP: %w", err)
	}
	for _, l := range strings.Split(strings.TrimRight(fetched, "\r\n"), "\r\n") {
		p("   | %s", l)
	}
	p("")
	p("The relay keeps serving. Point an app (or swaks, curl, Thunderbird) at it:")
	p("  SMTP server %s, no TLS, AUTH PLAIN or LOGIN, user %q, password %q, sender %s", smtpAddr, demoUser, demoPassword, demoMailbox)
	p("  IMAP server %s, no TLS, user %q, password %q", imapAddr, demoUser, demoPassword)
	if d.pop3Addr != nil {
		p("  POP3 server %s, no TLS, user %q, password %q", d.pop3Addr, demoUser, demoPassword)
	}
	p("  swaks --server %s --auth-user %s --auth-password %s --from %s --to you@example.net", smtpAddr, demoUser, demoPassword, demoMailbox)
	p("  curl --url 'imap://%s/INBOX;UID=1' --user %s:%s", imapAddr, demoUser, demoPassword)
	if d.pop3Addr != nil {
		p("  curl --url 'pop3://%s/1' --user %s:%s", d.pop3Addr, demoUser, demoPassword)
	}
	p("Status page and metrics: http://%s/ and http://%s/metrics", d.adminAddr, d.adminAddr)
	p("Press Ctrl-C to stop.")
	<-ctx.Done()
	return nil
}

// demoSend sends body as a legacy app would.
func demoSend(addr, body string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(gosasl.NewPlainClient("", demoUser, demoPassword)); err != nil {
		return "", err
	}
	if err := c.Mail(demoMailbox, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt("someone@example.net", nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, body); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, c.Quit()
}

// demoFetch logs in over IMAP and returns the first INBOX message.
func demoFetch(addr string) (string, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Login(demoUser, demoPassword).Wait(); err != nil {
		return "", err
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		return "", err
	}
	section := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		return "", err
	}
	if len(msgs) != 1 {
		return "", errors.New("no message in INBOX")
	}
	c.Logout().Wait()
	return string(bytes.TrimSpace(msgs[0].FindBodySection(section))), nil
}

// demoGraph shows what the fake's Graph received: the tenant refused SMTP
// AUTH with 535 5.7.139, so the relay sent through Graph.
func demoGraph(ctx context.Context, fw *fakeWorld, p func(string, ...any)) error {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	msgs, err := fw.ms.WaitGraphMessages(wctx, 1)
	cancel()
	if err != nil {
		return fmt.Errorf("the fake Graph did not receive the message: %w", err)
	}
	m := msgs[0]
	p("   Exchange refused SMTP AUTH (535 5.7.139, disabled for the tenant), so the relay (upstream: auto)")
	p("   moved to Microsoft Graph; the fake Graph took it by %s (app-only token: %v, %d bytes) for %s:",
		m.Via, m.AppOnly, m.Size, strings.Join(m.Recipients, ", "))
	printLines(p, m.MIME)
	return nil
}

// printLines shows a message line by line, indented.
func printLines(p func(string, ...any), msg []byte) {
	for _, l := range strings.Split(strings.TrimRight(string(msg), "\r\n"), "\r\n") {
		p("   | %s", l)
	}
}
