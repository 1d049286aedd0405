package imap

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

// testMessage is a small RFC 5322 message whose body is body.
func testMessage(subject, body string) []byte {
	return []byte("From: sender@example.com\r\nTo: " + testMailbox + "\r\nSubject: " + subject +
		"\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <" + subject + "@example.com>\r\n\r\n" + body)
}

func TestIdlePush(t *testing.T) {
	w := newWorld(t, worldOptions{})
	exists := make(chan uint32, 10)
	c := w.clientWith(&imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	if err := c.Login(testUser, testPassword).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}

	// A message arrives through another proxied connection.
	other := w.login()
	msg := testMessage("pushed", "hello through IDLE\r\n")
	app := other.Append("INBOX", int64(len(msg)), nil)
	app.Write(msg)
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatalf("append: %v", err)
	}

	select {
	case n := <-exists:
		if n != 1 {
			t.Errorf("EXISTS %d, want 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no EXISTS pushed during IDLE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
}

func TestAppendLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("30 MB append")
	}
	w := newWorld(t, worldOptions{})
	c := w.login()
	body := bytes.Repeat([]byte(strings.Repeat("0123456789abcdef", 4)+"\r\n"), 30<<20/66)
	msg := append(testMessage("large", ""), body...)
	app := c.Append("INBOX", int64(len(msg)), nil)
	if _, err := app.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := app.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Wait(); err != nil {
		t.Fatalf("append: %v", err)
	}

	// The upstream has it, byte for byte.
	d := w.direct()
	if _, err := d.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := d.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || !bytes.Equal(msgs[0].FindBodySection(section), msg) {
		t.Fatalf("upstream copy differs (%d messages)", len(msgs))
	}
	c.Logout().Wait()
	c.Close()
	waitFor(t, "the byte counts", func() bool {
		w.obs.mu.Lock()
		defer w.obs.mu.Unlock()
		return w.obs.transferred[0] > int64(len(msg))
	})
}

func TestPipelinedAfterLogin(t *testing.T) {
	w := newWorld(t, worldOptions{})
	msg := testMessage("pipelined", "body of the pipelined message\r\n")
	if err := w.fake.AppendIMAP(testMailbox, "INBOX", msg); err != nil {
		t.Fatal(err)
	}
	c := w.dialRaw()
	c.send("a LOGIN " + testUser + " " + testPassword + "\r\nb SELECT INBOX\r\nc FETCH 1 (BODY.PEEK[])\r\nd LOGOUT\r\n")
	if l := c.line(); !strings.HasPrefix(l, "a OK [CAPABILITY IMAP4rev1 ") {
		t.Fatalf("login: %q", l)
	}
	if l := c.until("b "); !strings.HasPrefix(l[len(l)-1], "b OK") {
		t.Fatalf("select: %q", l)
	}
	l := c.line()
	want := "BODY[] {" + strconv.Itoa(len(msg)) + "}"
	if !strings.HasPrefix(l, "* 1 FETCH (") || !strings.HasSuffix(l, want) {
		t.Fatalf("fetch: %q, want %q", l, want)
	}
	for len(c.buf) < len(msg) {
		b := make([]byte, 4096)
		n, err := c.conn.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		c.buf = append(c.buf, b[:n]...)
	}
	if got := c.buf[:len(msg)]; !bytes.Equal(got, msg) {
		t.Errorf("fetched %q", got)
	}
	c.buf = c.buf[len(msg):]
	if l := c.until("c "); !strings.HasPrefix(l[len(l)-1], "c OK") {
		t.Fatalf("fetch: %q", l)
	}
	if l := c.until("d "); !strings.HasPrefix(l[len(l)-1], "d OK") {
		t.Fatalf("logout: %q", l)
	}
	c.expectClosed()
}

// xoauth2Line checks an XOAUTH2 response from the relay in a scripted
// upstream: base64 of the account's mailbox and some token.
func xoauth2Line(t testing.TB, b64 string) {
	b, ok := preauth.DecodeSASL(b64)
	if !ok {
		t.Errorf("upstream script: bad base64 %q", b64)
		return
	}
	user, tok, err := sasl.ParseXOAuth2Response(b)
	if err != nil || user != testMailbox || tok == "" {
		t.Errorf("upstream script: XOAUTH2 user %q, err %v", user, err)
	}
}

// TestScriptedUpstream drives the upstream side by hand: STARTTLS upstream,
// no capabilities in the greeting, no SASL-IR, capabilities in an untagged
// response during AUTHENTICATE, and bytes sent right after the tagged OK.
func TestScriptedUpstream(t *testing.T) {
	lc := testutil.NewLocalCert(t)
	certFile, keyFile, caFile := lc.CertFile, lc.KeyFile, lc.CAFile
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK hello\r\n")
		expectLine(t, br, "oar1 STARTTLS")
		io.WriteString(c, "oar1 OK go ahead\r\n")
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			t.Errorf("upstream script: TLS: %v", err)
			return
		}
		br = bufio.NewReader(tc)
		expectLine(t, br, "oar2 CAPABILITY")
		io.WriteString(tc, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\noar2 OK done\r\n")
		expectLine(t, br, "oar3 AUTHENTICATE XOAUTH2")
		io.WriteString(tc, "+ \r\n")
		xoauth2Line(t, expectLine(t, br, ""))
		io.WriteString(tc, "* CAPABILITY IMAP4rev1 IDLE X-SCRIPTED\r\noar3 OK Welcome\r\n* OK [ALERT] early bytes\r\n")
		expectLine(t, br, "t1 NOOP")
		io.WriteString(tc, "t1 OK scripted noop\r\n")
		expectLine(t, br, "t2 LOGOUT")
		io.WriteString(tc, "* BYE bye\r\nt2 OK done\r\n")
	})
	w := newWorld(t, worldOptions{UpstreamCAFile: caFile, Upstream: &config.Upstream{Addr: addr, TLS: config.TLSStartTLS}})
	c := w.dialRaw()
	c.send("a LOGIN " + testUser + " " + testPassword + "\r\n")
	for _, want := range []string{"a OK [CAPABILITY IMAP4rev1 IDLE X-SCRIPTED] LOGIN completed", "* OK [ALERT] early bytes"} {
		if l := c.line(); l != want {
			t.Errorf("got %q, want %q", l, want)
		}
	}
	c.send("t1 NOOP\r\n")
	if l := c.line(); l != "t1 OK scripted noop" {
		t.Errorf("got %q", l)
	}
	c.send("t2 LOGOUT\r\n")
	c.line()
	if l := c.line(); l != "t2 OK done" {
		t.Errorf("got %q", l)
	}
	c.expectClosed()
}

// TestUpstreamRefusals: the ways an upstream says no to the token.
func TestUpstreamRefusals(t *testing.T) {
	tests := []struct {
		name   string
		after  string // the upstream's answer after the token
		want   string
		result string
	}{
		{"error challenge then NO", "+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\n<empty>oar2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n",
			"a NO [AUTHENTICATIONFAILED] ", "invoices:rejected"},
		{"error challenge then OK", "+ eyJzdGF0dXMiOiI0MDEifQ==\r\n<empty>oar2 OK odd\r\n",
			"a NO [AUTHENTICATIONFAILED] ", "invoices:rejected"},
		{"NO", "oar2 NO AUTHENTICATE failed.\r\n", "a NO [AUTHENTICATIONFAILED] ", "invoices:rejected"},
		{"BAD", "oar2 BAD Invalid base64 data\r\n", "a NO [AUTHENTICATIONFAILED] ", "invoices:rejected"},
		{"NO UNAVAILABLE", "oar2 NO [UNAVAILABLE] Backend down\r\n", "a NO [UNAVAILABLE] ", "invoices:unavailable"},
		{"connection dropped", "<close>", "a NO [UNAVAILABLE] ", "invoices:unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
				io.WriteString(c, "* OK hello\r\n")
				expectLine(t, br, "oar1 CAPABILITY")
				io.WriteString(c, "* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2\r\noar1 OK done\r\n")
				line := expectLine(t, br, "oar2 AUTHENTICATE XOAUTH2 ")
				xoauth2Line(t, strings.TrimPrefix(line, "oar2 AUTHENTICATE XOAUTH2 "))
				for _, part := range strings.SplitAfter(tt.after, "\r\n") {
					switch {
					case part == "<close>":
						return
					case strings.HasPrefix(part, "<empty>"):
						if l := expectLine(t, br, ""); l != "" {
							t.Errorf("upstream script: want an empty response to the challenge, got %q", l)
						}
						part = strings.TrimPrefix(part, "<empty>")
					}
					io.WriteString(c, part)
				}
			})
			w := newWorld(t, worldOptions{Upstream: &config.Upstream{Addr: addr}})
			c := w.dialRaw()
			c.send("a LOGIN " + testUser + " " + testPassword + "\r\n")
			if l := c.line(); !strings.HasPrefix(l, tt.want) {
				t.Errorf("got %q, want %q...", l, tt.want)
			}
			if _, ups := w.obs.snapshot(); len(ups) != 1 || ups[0] != tt.result {
				t.Errorf("observer upstreams %v, want [%s]", ups, tt.result)
			}
		})
	}
}

// TestClientClosesFirst: when the app drops the connection, the upstream
// connection is closed too.
func TestClientClosesFirst(t *testing.T) {
	closed := make(chan struct{})
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hello\r\n")
		expectLine(t, br, "oar1 AUTHENTICATE XOAUTH2 ")
		io.WriteString(c, "oar1 OK [CAPABILITY IMAP4rev1 IDLE] ok\r\n")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("upstream script: want EOF after the app left, got %v", err)
		}
		close(closed)
	})
	w := newWorld(t, worldOptions{Upstream: &config.Upstream{Addr: addr}})
	c := w.dialRaw()
	c.send("a LOGIN " + testUser + " " + testPassword + "\r\n")
	if l := c.line(); l != "a OK [CAPABILITY IMAP4rev1 IDLE] LOGIN completed" {
		t.Fatalf("got %q", l)
	}
	c.conn.Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream connection not closed")
	}
	waitFor(t, "the session to end", func() bool {
		w.obs.mu.Lock()
		defer w.obs.mu.Unlock()
		return w.obs.conns == 0
	})
}

// TestCopyEndsSessionGoroutine: once a session is logged in and copied,
// the goroutine that spoke IMAP before login has returned (its stack grew
// in the upstream TLS handshake and would sit beside every idle session),
// and the session still works and still ends cleanly with a LOGOUT.
func TestCopyEndsSessionGoroutine(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	deadline := time.Now().Add(10 * time.Second)
	for sessionGoroutines() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d session goroutines still run for a logged-in session", sessionGoroutines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("NOOP through the copy: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
}

// sessionGoroutines counts the goroutines in preauth's serveConn.
func sessionGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	return strings.Count(buf.String(), "preauth.(*Server).serveConn(")
}
