package imap

// End to end against a real IMAP server: Dovecot 2.3 as the provider's
// IMAP upstream (implicit TLS, certificate from a test CA), checking every
// XOAUTH2 token through the fake Microsoft 365's RFC 7662 introspection
// endpoint. The relay gets an app-only token from the fake's token endpoint
// (client credentials, the app granted on one mailbox), logs in to Dovecot
// with it and then copies bytes; the apps are go-imap's imapclient, Python's
// imaplib and curl, all through the relay's STARTTLS listener. So there is
// real TLS on both sides and an upstream whose replies and extensions are
// not ours.

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	dcClientID = "33333333-dddd-4ccc-8bbb-000000000003"
	dcSecret   = "dovecot-app-secret"
	dcMailbox  = "invoices@contoso.com"
	dcUser     = "erp"
	dcPassword = "Erp-Dovecot-Pass-1"
	// dcStranger is a mailbox the app is not granted: the fake's
	// introspection names dcMailbox as the token's user, so Dovecot refuses
	// the login whatever token the relay brings.
	dcStranger     = "stranger@contoso.com"
	dcStrangerUser = "stranger"

	// dcClientLife bounds each test client: a watchdog closes it then, so no
	// Wait can hang (imapclient sets no read deadline while it waits).
	dcClientLife = 20 * time.Second
	// dcCommandTimeout bounds each external client run (python3, curl).
	dcCommandTimeout = 20 * time.Second
)

// dcSeed is the first message of the INBOX (UID 1), put there directly in
// Dovecot before the relay starts.
var dcSeed = dcMessage("seed", "The first message, fetched through the relay.\r\n")

func dcMessage(subject, body string) []byte {
	return []byte("From: sender@example.com\r\nTo: " + dcMailbox + "\r\nSubject: " + subject +
		"\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") +
		"@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body)
}

// dovecotWorld is the fake Microsoft 365 (token and introspection
// endpoints), Dovecot, and the relay with this package's Server on a
// STARTTLS listener.
type dovecotWorld struct {
	t     *testing.T
	fake  *fakems.Server
	dc    *testutil.Dovecot
	relay *proxy.Relay
	srv   *Server
	addr  string // the relay's IMAP listener
	cert  *testutil.LocalCert
	log   *testutil.Buf
}

func newDovecotWorld(t *testing.T) *dovecotWorld {
	t.Helper()
	// Before anything else: skip (or fail in CI) without Dovecot.
	testutil.DovecotPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fake, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	fake.AddApp(fakems.App{ClientID: dcClientID, Secret: dcSecret})
	fake.AddMailbox(dcMailbox, "mailbox-password")
	fake.AddMailbox(dcStranger, "stranger-password")
	fake.GrantApp(dcClientID, dcMailbox)

	w := &dovecotWorld{t: t, fake: fake, cert: testutil.NewLocalCert(t)}
	w.dc = testutil.StartDovecot(t, testutil.DovecotOptions{
		IntrospectURL: fake.IntrospectURL,
		Users:         []string{dcMailbox},
	})
	// The seed goes in before the relay exists: the relay is not needed to
	// set the scene.
	d := w.direct(t)
	if _, err := dcAppend(d, "INBOX", dcSeed); err != nil {
		t.Fatalf("seeding Dovecot: %v", err)
	}
	d.Logout().Wait()
	d.Close()

	hash, err := bcrypt.GenerateFromPassword([]byte(dcPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	yaml := fmt.Sprintf(`
state_dir: %s
listen:
  smtp: {addr: "off"}
  imap: {addr: "127.0.0.1:0", tls: starttls, cert_file: %s, key_file: %s}
  admin: {addr: "off"}
providers:
  contoso:
    type: microsoft
    tenant: %s
    client_id: %s
    client_secret: %q
    grant: client_credentials
    token_url: %s
    imap: {addr: %q, tls: implicit}
    ca_file: %s
accounts:
  - name: invoices
    provider: contoso
    mailbox: %s
    username: %s
    password_hash: %q
  - name: stranger
    provider: contoso
    mailbox: %s
    username: %s
    password_hash: %q
`, dir, w.cert.CertFile, w.cert.KeyFile, fake.Tenant, dcClientID, dcSecret, fake.TokenURL,
		w.dc.IMAPAddr, w.dc.CAFile, dcMailbox, dcUser, hash, dcStranger, dcStrangerUser, hash)
	cfg, err := config.Parse(filepath.Join(dir, "oauthrelay.yaml"), []byte(yaml),
		func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	logger, buf := testutil.Logger(t)
	w.log = buf
	w.relay, err = proxy.NewRelay(cfg, proxy.Options{Logger: logger, HTTPClient: fake.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRelay := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); w.relay.Run(runCtx) }()
	t.Cleanup(func() { stopRelay(); <-ran })
	w.srv, err = New(w.relay, cfg.Listen.IMAP)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen(cfg.Listen.IMAP)
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- w.srv.Serve(ln) }()
	t.Cleanup(func() {
		w.srv.Close()
		select {
		case err := <-served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return 10 s after Close")
		}
		w.checkSecrets()
	})
	return w
}

// checkSecrets fails the test if the relay logged a password, a token or
// an XOAUTH2 payload.
func (w *dovecotWorld) checkSecrets() {
	logs := w.log.String()
	secrets := []string{dcPassword, dcSecret, "auth=Bearer",
		// Every fake token starts with this JWT header ({"alg":...).
		"eyJhbGciOi",
		// The base64 of an XOAUTH2 payload for the mailbox starts so.
		strings.TrimRight(base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(dcMailbox, "")[:12]), "=")}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			w.t.Errorf("secret %q in the relay log", s)
		}
	}
}

// dcWatch closes c if it is still open after dcClientLife, so that
// nothing waits for ever on a relay or upstream that stopped answering.
func dcWatch(t testing.TB, name string, c *imapclient.Client) {
	var fired atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(dcClientLife)
		defer timer.Stop()
		select {
		case <-c.Closed():
		case <-timer.C:
			fired.Store(true)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
		if fired.Load() {
			t.Errorf("%s: closed by the watchdog after %v", name, dcClientLife)
		}
	})
}

// direct logs in to Dovecot itself (not through the relay) with an app-only
// token from the fake.
func (w *dovecotWorld) direct(t testing.TB) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(w.dc.IMAPAddr, &imapclient.Options{TLSConfig: w.dc.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	dcWatch(t, "direct client", c)
	tok := w.fake.IssueAccessToken(dcClientID, "")
	if err := c.Authenticate(sasl.NewXOAuth2Client(dcMailbox, tok)); err != nil {
		t.Fatalf("direct XOAUTH2 login to Dovecot: %v", err)
	}
	return c
}

// client connects imapclient to the relay with STARTTLS.
func (w *dovecotWorld) client(t testing.TB, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = w.cert.ClientTLS()
	conn, err := net.DialTimeout("tcp", w.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := imapclient.NewStartTLS(conn, opts)
	if err != nil {
		conn.Close()
		t.Fatalf("STARTTLS: %v", err)
	}
	dcWatch(t, "relay client", c)
	return c
}

// raw connects to the relay, reads the greeting and does STARTTLS by hand.
func (w *dovecotWorld) raw(t testing.TB) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", w.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := newRawClient(t, conn)
	if g := rc.line(); !strings.HasPrefix(g, "* OK ") {
		t.Fatalf("greeting %q", g)
	}
	rc.send("s1 STARTTLS\r\n")
	if l := rc.line(); !strings.HasPrefix(l, "s1 OK") {
		t.Fatalf("STARTTLS: %q", l)
	}
	tc := tls.Client(conn, w.cert.ClientTLS())
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the relay: %v", err)
	}
	tc.SetDeadline(time.Time{})
	return newRawClient(t, tc)
}

// dcCommand sends "tag line" and returns the responses up to the tagged
// one, which is last.
func dcCommand(c *rawClient, tag, line string) []string {
	c.t.Helper()
	c.send(tag + " " + line + "\r\n")
	return c.until(tag + " ")
}

func dcAppend(c *imapclient.Client, mailbox string, msg []byte) (*imap.AppendData, error) {
	cmd := c.Append(mailbox, int64(len(msg)), nil)
	if _, err := cmd.Write(msg); err != nil {
		return nil, err
	}
	if err := cmd.Close(); err != nil {
		return nil, err
	}
	return cmd.Wait()
}

// dcCaps returns the capability list of a tagged "OK [CAPABILITY ...]"
// (parsed here, not with the code under test).
func dcCaps(t testing.TB, tagged string) []string {
	t.Helper()
	_, rest, _ := strings.Cut(tagged, " ")
	rest, ok := strings.CutPrefix(rest, "OK [CAPABILITY ")
	list, _, closed := strings.Cut(rest, "]")
	if !ok || !closed {
		t.Fatalf("login: %q, want OK [CAPABILITY ...]", tagged)
	}
	return strings.Fields(strings.ToUpper(list))
}

func TestDovecot(t *testing.T) {
	w := newDovecotWorld(t)
	start := time.Now()
	t.Run("imapclient", w.testIMAPClient)
	t.Run("Capabilities", w.testCapabilities)
	t.Run("Compress", w.testCompress)
	t.Run("imaplib", w.testImaplib)
	t.Run("curl", w.testCurl)
	// Last: it expires the relay's token.
	t.Run("Refused", w.testRefused)
	t.Logf("subtests took %v", time.Since(start).Round(time.Millisecond))
}

// testIMAPClient logs in through the relay and works on the INBOX: SELECT,
// APPEND, FETCH, SEARCH, STORE, EXPUNGE and an IDLE woken by a message
// Dovecot got on another connection.
func (w *dovecotWorld) testIMAPClient(t *testing.T) {
	exists := make(chan uint32, 16)
	c := w.client(t, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				select {
				case exists <- *d.NumMessages:
				default:
				}
			}
		},
	}})
	if err := c.Login(dcUser, dcPassword).Wait(); err != nil {
		t.Fatalf("LOGIN through the relay: %v", err)
	}
	// The capabilities came with the tagged OK: Dovecot's, not the relay's.
	for _, cp := range []imap.Cap{imap.CapIdle, imap.CapUIDPlus, imap.CapMove, imap.CapCondStore} {
		if !c.Caps().Has(cp) {
			t.Errorf("after login, capabilities lack %s: %v", cp, c.Caps())
		}
	}

	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	if sel.NumMessages < 1 || sel.UIDValidity == 0 {
		t.Fatalf("SELECT INBOX: %d messages, UIDVALIDITY %d; want the seed", sel.NumMessages, sel.UIDValidity)
	}

	const subject = "appended through the relay"
	msg := dcMessage(subject, "Hello Dovecot.\r\nA second line, and some UTF-8: \u00e9t\u00e9.\r\n")
	app, err := dcAppend(c, "INBOX", msg)
	if err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if app.UID == 0 || app.UIDValidity != sel.UIDValidity {
		t.Fatalf("APPEND: APPENDUID %d %d, want a UID in UIDVALIDITY %d", app.UIDValidity, app.UID, sel.UIDValidity)
	}
	uid := imap.UIDSetNum(app.UID)

	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(uid, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatalf("UID FETCH: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("UID FETCH %d: %d messages", app.UID, len(msgs))
	}
	if got := msgs[0].FindBodySection(body); !bytes.Equal(got, msg) {
		t.Errorf("UID FETCH BODY.PEEK[]:\n got %q\nwant %q", got, msg)
	}
	if slices.Contains(msgs[0].Flags, imap.FlagSeen) {
		t.Errorf("new message already \\Seen: %v", msgs[0].Flags)
	}

	search := func() []imap.UID {
		t.Helper()
		sd, err := c.UIDSearch(&imap.SearchCriteria{
			Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: subject}},
		}, nil).Wait()
		if err != nil {
			t.Fatalf("UID SEARCH: %v", err)
		}
		return sd.AllUIDs()
	}
	if got := search(); !slices.Equal(got, []imap.UID{app.UID}) {
		t.Errorf("UID SEARCH HEADER Subject: %v, want [%d]", got, app.UID)
	}

	if _, err := c.Store(uid, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Collect(); err != nil {
		t.Fatalf("UID STORE +FLAGS (\\Seen): %v", err)
	}
	msgs, err = c.Fetch(uid, &imap.FetchOptions{UID: true, Flags: true}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("UID FETCH FLAGS: %v (%d messages)", err, len(msgs))
	}
	if !slices.Contains(msgs[0].Flags, imap.FlagSeen) {
		t.Errorf("after STORE, flags %v lack \\Seen", msgs[0].Flags)
	}
	sd, err := c.UIDSearch(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagSeen}}, nil).Wait()
	if err != nil {
		t.Fatalf("UID SEARCH SEEN: %v", err)
	}
	if !slices.Equal(sd.AllUIDs(), []imap.UID{app.UID}) {
		t.Errorf("UID SEARCH SEEN: %v, want [%d]", sd.AllUIDs(), app.UID)
	}

	if _, err := c.Store(uid, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect(); err != nil {
		t.Fatalf("UID STORE +FLAGS (\\Deleted): %v", err)
	}
	expunged, err := c.Expunge().Collect()
	if err != nil {
		t.Fatalf("EXPUNGE: %v", err)
	}
	if len(expunged) != 1 {
		t.Errorf("EXPUNGE removed %v, want one message", expunged)
	}
	if got := search(); len(got) != 0 {
		t.Errorf("after EXPUNGE, UID SEARCH finds %v", got)
	}

	// IDLE: a message Dovecot receives on another connection is announced
	// through the relay while the app idles.
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	for len(exists) > 0 {
		<-exists
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	d := w.direct(t)
	if _, err := dcAppend(d, "INBOX", dcMessage("while idling", "Wake up.\r\n")); err != nil {
		t.Fatalf("APPEND on a direct connection: %v", err)
	}
	want := *st.NumMessages + 1
	timeout := time.After(10 * time.Second)
wait:
	for {
		select {
		case n := <-exists:
			if n == want {
				break wait
			}
		case <-timeout:
			t.Fatalf("no * %d EXISTS during IDLE within 10 s", want)
		}
	}
	if err := idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE ended with %v", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("NOOP after IDLE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// testCapabilities checks that the app sees Dovecot itself after login:
// the tagged OK carries the capability list Dovecot gives its own clients,
// and extensions go-imap's server does not model (ID, ENABLE, CONDSTORE,
// QRESYNC, SORT, THREAD, QUOTA, LIST-STATUS) work through the byte copy.
func (w *dovecotWorld) testCapabilities(t *testing.T) {
	d := w.direct(t)
	var want []string
	for cp := range d.Caps() {
		want = append(want, strings.ToUpper(string(cp)))
	}
	slices.Sort(want)
	d.Logout().Wait()
	d.Close()

	rc := w.raw(t)
	pre := dcCommand(rc, "a1", "CAPABILITY")
	if !strings.HasPrefix(pre[len(pre)-1], "a1 OK") {
		t.Fatalf("CAPABILITY before login: %q", pre)
	}
	login := dcCommand(rc, "a2", "LOGIN "+dcUser+" "+quote(dcPassword))
	got := dcCaps(t, login[len(login)-1])
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("capabilities after login through the relay:\n %v\nDovecot's own after XOAUTH2:\n %v", got, want)
	}
	for _, c := range []string{"ENABLE", "CONDSTORE", "QRESYNC", "SORT", "THREAD=REFERENCES", "ID", "NAMESPACE",
		"SPECIAL-USE", "QUOTA", "COMPRESS=DEFLATE"} {
		if !slices.Contains(got, c) {
			t.Errorf("capabilities after login lack %s: %v", c, got)
		}
	}

	// expect runs a command and checks that the tagged reply is OK and
	// that some response starts with each of prefixes.
	n := 2
	expect := func(cmd string, prefixes ...string) []string {
		t.Helper()
		n++
		tag := fmt.Sprintf("a%d", n)
		lines := dcCommand(rc, tag, cmd)
		if !strings.HasPrefix(lines[len(lines)-1], tag+" OK") {
			t.Errorf("%s: %q", cmd, lines)
			return lines
		}
		for _, p := range prefixes {
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, p) }) {
				t.Errorf("%s: no response starting %q in %q", cmd, p, lines)
			}
		}
		return lines
	}
	// Before login the relay answers ID itself; now Dovecot does.
	expect(`ID ("name" "dovecot_test")`, `* ID ("name" "Dovecot"`)
	expect("ENABLE QRESYNC", "* ENABLED QRESYNC")
	expect("SELECT INBOX (CONDSTORE)", "* OK [HIGHESTMODSEQ ", "* OK [UIDVALIDITY ")
	expect("UID FETCH 1 (UID MODSEQ FLAGS)", "* 1 FETCH (UID 1 MODSEQ (")
	expect("UID SORT (REVERSE ARRIVAL) UTF-8 ALL", "* SORT ")
	expect("UID THREAD REFERENCES UTF-8 ALL", "* THREAD ")
	expect("NAMESPACE", `* NAMESPACE (("" "/"))`)
	expect("GETQUOTAROOT INBOX", `* QUOTAROOT INBOX "User quota"`, `* QUOTA "User quota" (STORAGE `)
	expect(`LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES))`, `* LIST (`, `* STATUS `)
	lines := dcCommand(rc, "z", "LOGOUT")
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "* BYE") }) ||
		!strings.HasPrefix(lines[len(lines)-1], "z OK") {
		t.Errorf("LOGOUT: %q", lines)
	}
	rc.expectClosed()
}

// testCompress turns on COMPRESS=DEFLATE (RFC 4978) after login: from
// then on both directions are deflate streams between the app and Dovecot,
// which only a byte copy can carry.
func (w *dovecotWorld) testCompress(t *testing.T) {
	rc := w.raw(t)
	login := dcCommand(rc, "a1", "LOGIN "+dcUser+" "+quote(dcPassword))
	dcCaps(t, login[len(login)-1])
	if l := dcCommand(rc, "a2", "COMPRESS DEFLATE"); !strings.HasPrefix(l[len(l)-1], "a2 OK") {
		t.Fatalf("COMPRESS DEFLATE: %q", l)
	}
	if len(rc.buf) != 0 {
		t.Fatalf("%d bytes after the COMPRESS reply", len(rc.buf))
	}
	conn := rc.conn
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	zw, err := flate.NewWriter(conn, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	zr := bufio.NewReader(flate.NewReader(conn))
	send := func(line string) {
		t.Helper()
		if _, err := io.WriteString(zw, line+"\r\n"); err != nil {
			t.Fatal(err)
		}
		if err := zw.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// until reads decompressed lines up to the one starting with prefix.
	until := func(prefix string) []string {
		t.Helper()
		var lines []string
		for {
			l, err := zr.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the deflate stream: %v (after %q)", err, lines)
			}
			lines = append(lines, strings.TrimSuffix(l, "\r\n"))
			if strings.HasPrefix(l, prefix) {
				return lines
			}
		}
	}
	send("a3 SELECT INBOX")
	if l := until("a3 "); !strings.HasPrefix(l[len(l)-1], "a3 OK [READ-WRITE]") {
		t.Fatalf("SELECT over DEFLATE: %q", l)
	}
	send("a4 UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
	if l := until("a4 "); !strings.HasPrefix(l[len(l)-1], "a4 OK") ||
		!slices.ContainsFunc(l, func(s string) bool { return s == "Subject: seed" }) {
		t.Errorf("FETCH over DEFLATE: %q", l)
	}
	// LOGOUT: Dovecot answers and closes at once, and may leave the tail of
	// our sync flush unread, which makes its kernel reset the connection and
	// drop what was still in flight (to the relay as to any client): the
	// answer is checked when it arrives, the close either way.
	send("a5 LOGOUT")
	for {
		l, err := zr.ReadString('\n')
		if err != nil {
			t.Logf("connection closed after LOGOUT: %v", err)
			break
		}
		if strings.HasPrefix(l, "a5 ") {
			if !strings.HasPrefix(l, "a5 OK") {
				t.Errorf("LOGOUT over DEFLATE: %q", l)
			}
			break
		}
	}
}

const dcImaplibScript = `
import base64, imaplib, json, ssl, sys
port, user, password, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

m = imaplib.IMAP4("127.0.0.1", port, timeout=15)
m.starttls(ssl_context=ssl.create_default_context(cafile=cafile))
typ, data = m.login(user, password)
assert typ == "OK", (typ, data)
typ, data = m.capability()
assert typ == "OK", (typ, data)
# imaplib keeps the CAPABILITY code of the LOGIN reply as well: the last one
# is Dovecot's answer to this command.
caps = data[-1].decode().split()
typ, data = m.list()
assert typ == "OK", (typ, data)
folders = [l.decode() for l in data]
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK", (typ, data)
typ, data = m.fetch("1", "(BODY.PEEK[])")
assert typ == "OK", (typ, data)
msg = data[0][1]
m.logout()
json.dump({"caps": caps, "list": folders, "message": base64.b64encode(msg).decode()}, sys.stdout)
`

// testImaplib is Python's imaplib: STARTTLS, LOGIN, CAPABILITY, LIST,
// SELECT and FETCH of the seed.
func (w *dovecotWorld) testImaplib(t *testing.T) {
	python := testutil.Tool(t, "python3")
	_, port, _ := net.SplitHostPort(w.addr)
	ctx, cancel := context.WithTimeout(context.Background(), dcCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", dcImaplibScript, port, dcUser, dcPassword, w.cert.CAFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("imaplib: %v\n%s", err, stderr.String())
	}
	var res struct {
		Caps    []string `json:"caps"`
		List    []string `json:"list"`
		Message []byte   `json:"message"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("imaplib output %q: %v", out, err)
	}
	if !slices.Contains(res.Caps, "SORT") || !slices.Contains(res.Caps, "THREAD=REFERENCES") {
		t.Errorf("CAPABILITY after login (Dovecot's): %v", res.Caps)
	}
	for _, f := range []string{`"/" INBOX`, `(\HasNoChildren \Sent) "/" Sent`, `(\HasNoChildren \Trash) "/" Trash`} {
		if !slices.ContainsFunc(res.List, func(l string) bool { return strings.Contains(l, f) }) {
			t.Errorf("LIST lacks %s: %q", f, res.List)
		}
	}
	if !bytes.Equal(res.Message, dcSeed) {
		t.Errorf("FETCH 1 (BODY.PEEK[]):\n got %q\nwant %q", res.Message, dcSeed)
	}
}

// testCurl is curl's IMAP: LIST of the root and of INBOX, and FETCH by UID
// (curl logs in with AUTHENTICATE PLAIN or LOGIN, after STARTTLS).
func (w *dovecotWorld) testCurl(t *testing.T) {
	curl := testutil.Tool(t, "curl")
	run := func(url string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), dcCommandTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, "--silent", "--show-error", "--max-time", "15",
			"--ssl-reqd", "--cacert", w.cert.CAFile, "--url", url, "-u", dcUser+":"+dcPassword)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", url, err, stderr.String())
		}
		return string(out)
	}
	base := "imap://" + w.addr
	if out := run(base + "/"); !strings.Contains(out, " INBOX") || !strings.Contains(out, `\Sent) "/" Sent`) ||
		!strings.Contains(out, `\Trash) "/" Trash`) {
		t.Errorf("LIST of the root: %q", out)
	}
	if out := run(base + "/INBOX"); !strings.Contains(out, `* LIST (`) || !strings.Contains(out, ` INBOX`) {
		t.Errorf("LIST of INBOX: %q", out)
	}
	if out := run(base + "/INBOX;UID=1"); out != string(dcSeed) {
		t.Errorf("FETCH UID 1:\n got %q\nwant %q", out, dcSeed)
	}
}

// testRefused checks that Dovecot's refusals reach the app as
// NO [AUTHENTICATIONFAILED], and that the session goes on afterwards.
func (w *dovecotWorld) testRefused(t *testing.T) {
	t.Run("NotGranted", func(t *testing.T) {
		// The app has no access to the stranger's mailbox: the fake's
		// introspection gives Dovecot another username for the token.
		rc := w.raw(t)
		lines := dcCommand(rc, "a1", "LOGIN "+dcStrangerUser+" "+quote(dcPassword))
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, "a1 NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("LOGIN to a mailbox the app is not granted: %q", lines)
		}
		// The refusal came from Dovecot, for that user.
		if log := w.dc.Log(); !strings.Contains(log, dcStranger) {
			t.Errorf("Dovecot did not log a login for %s:\n%s", dcStranger, log)
		}
		if !strings.Contains(w.log.String(), "upstream refused the token") {
			t.Errorf("the relay did not log why the login failed")
		}
		// Still not authenticated: another LOGIN on the same connection.
		lines = dcCommand(rc, "a2", "LOGIN "+dcUser+" "+quote(dcPassword))
		dcCaps(t, lines[len(lines)-1])
		lines = dcCommand(rc, "a3", "SELECT INBOX")
		if !strings.HasPrefix(lines[len(lines)-1], "a3 OK [READ-WRITE]") {
			t.Errorf("SELECT after the second LOGIN: %q", lines)
		}
	})

	// Every app-only token ends now, though the relay's cache says it has
	// an hour left: Dovecot's introspection answers active=false.
	var before int
	refused := false
	t.Run("ExpiredToken", func(t *testing.T) {
		w.fake.ExpireAccessTokens("")
		before = w.fake.TokenRequests()
		rc := w.raw(t)
		lines := dcCommand(rc, "a1", "LOGIN "+dcUser+" "+quote(dcPassword))
		last := lines[len(lines)-1]
		if strings.HasPrefix(last, "a1 OK") && w.fake.TokenRequests() > before {
			// The relay got a fresh token and tried again within the
			// login: better still.
			return
		}
		if !strings.HasPrefix(last, "a1 NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("LOGIN with a token Dovecot finds inactive: %q", lines)
		}
		refused = true
	})
	t.Run("NextLoginGetsNewToken", func(t *testing.T) {
		// The upstream refused a token the relay thought valid: the next
		// login should bring a new one (proxy/smtp does so), not the same
		// dead token until its own expiry an hour later.
		if !refused {
			t.Skip("only after ExpiredToken saw the refusal")
		}
		rc := w.raw(t)
		lines := dcCommand(rc, "a1", "LOGIN "+dcUser+" "+quote(dcPassword))
		last := lines[len(lines)-1]
		switch {
		case strings.HasPrefix(last, "a1 OK"):
			if w.fake.TokenRequests() == before {
				t.Errorf("LOGIN succeeded without a new token")
			}
		case w.fake.TokenRequests() == before:
			t.Fatalf("after the upstream refused the cached token, the next LOGIN got %q "+
				"and the relay asked for no new token (still %d token requests): the account stays "+
				"locked out until the cached token expires", last, before)
		default:
			t.Fatalf("LOGIN with a new token: %q", lines)
		}
	})
}
