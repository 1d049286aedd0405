package pop3

import (
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// USER/PASS, then the upstream's TRANSACTION state through the copy: what
// the app pipelined after PASS goes upstream, RETR comes back dot-stuffed as
// Exchange sent it, and the observer hears one login and the bytes, as
// POP3.
func TestUserPassThenUpstream(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.seed(message("one", "first\r\n.dotted\r\n"), message("two", "second\r\n"))
	c := w.dial()
	caps := strings.Join(append([]string{c.cmd("CAPA")}, c.multi()...), "|")
	for _, want := range []string{"+OK", "USER", "SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE", "UIDL", "TOP"} {
		if !strings.Contains(caps, want) {
			t.Errorf("CAPA %q lacks %s", caps, want)
		}
	}
	if strings.Contains(caps, "STLS") {
		t.Errorf("CAPA %q offers STLS on a plain listener", caps)
	}
	if l := c.cmd("USER " + testUser); l != "+OK" {
		t.Fatalf("USER: %q", l)
	}
	// PASS and STAT in one write: STAT must reach the upstream.
	c.send("PASS " + testPassword + "\r\nSTAT\r\n")
	if l := c.line(); l != textLoggedIn {
		t.Fatalf("PASS: %q", l)
	}
	if l := c.line(); !strings.HasPrefix(l, "+OK 2 ") {
		t.Errorf("STAT: %q", l)
	}
	if l := c.cmd("RETR 1"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("RETR: %q", l)
	}
	if got := strings.Join(c.multi(), "\n"); !strings.Contains(got, "Subject: one") || !strings.Contains(got, "\n..dotted") {
		t.Errorf("RETR 1 (still stuffed on the wire): %q", got)
	}
	if l := c.cmd("QUIT"); !strings.HasPrefix(l, "+OK Microsoft Exchange Server POP3 server signing off") {
		t.Errorf("QUIT is the upstream's: %q", l)
	}
	c.expectClosed()
	c.conn.Close() // the app's end: the copy's second direction ends
	waitFor(t, "the transfer to be reported", func() bool {
		_, tr := w.obs.snapshot()
		return tr[events.POP3][1] > 0
	})
	logins, tr := w.obs.snapshot()
	if !slices.Equal(logins, []string{"pop3:invoices:ok"}) {
		t.Errorf("logins %q", logins)
	}
	if tr[events.POP3][0] == 0 || tr[events.IMAP] != [2]int64{} {
		t.Errorf("transferred %v", tr)
	}
}

// AUTH PLAIN with and without an initial response; "*" cancels; an
// authorization identity other than the user is refused.
func TestAuthPlain(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dial()
	if l := c.cmd("AUTH PLAIN"); l != "+ " {
		t.Fatalf("AUTH PLAIN: %q", l)
	}
	if l := c.cmd("*"); l != "-ERR Authentication cancelled" {
		t.Errorf("cancel: %q", l)
	}
	if l := c.cmd("AUTH PLAIN !!!"); l != "-ERR Invalid base64 data" {
		t.Errorf("bad base64: %q", l)
	}
	if l := c.cmd("AUTH PLAIN " + plain("", "")); l != "-ERR Invalid PLAIN response" {
		t.Errorf("empty user: %q", l)
	}
	other := "b3RoZXIAZXJwAHB3" // "other\0erp\0pw"
	if l := c.cmd("AUTH PLAIN " + other); !strings.HasPrefix(l, "-ERR [AUTH] Authorization identity") {
		t.Errorf("authzid: %q", l)
	}
	if l := c.cmd("AUTH LOGIN"); l != "-ERR Unsupported authentication mechanism" {
		t.Errorf("AUTH LOGIN: %q", l)
	}
	c.cmd("AUTH")
	if mechs := c.multi(); !slices.Equal(mechs, []string{"PLAIN"}) {
		t.Errorf("AUTH list: %q", mechs)
	}
	c.cmd("AUTH PLAIN")
	if l := c.cmd(plain(testUser, testPassword)); l != textLoggedIn {
		t.Fatalf("AUTH PLAIN after +: %q", l)
	}
	if l := c.cmd("STAT"); l != "+OK 0 0" {
		t.Errorf("STAT: %q", l)
	}

	c = w.dial()
	if l := c.cmd("AUTH PLAIN " + plain(testUser, testPassword)); l != textLoggedIn {
		t.Fatalf("AUTH PLAIN with initial response: %q", l)
	}
	c.cmd("QUIT")
}

// The replies contract: each failure class with its RFC 3206 code, the
// reason in the log (never to the app), and the session still usable.
func TestLoginRefusals(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dial()
	tests := []struct {
		user, pass, reply, logged string
	}{
		{testUser, "wrong", textAuthFailed, "wrong password"},
		{"nobody", testPassword, textAuthFailed, "unknown username"},
		{ghostUser, testPassword, textAuthFailed, "the upstream refused the token"},
		{brokenUser, testPassword, textNeedsAdmin, "AADSTS7000215"},
		{downUser, testPassword, textUnavailable, "cannot connect"},
	}
	for _, tt := range tests {
		c.cmd("USER " + tt.user)
		if l := c.cmd("PASS " + tt.pass); l != tt.reply {
			t.Errorf("%s: %q, want %q", tt.user, l, tt.reply)
		}
		if !strings.Contains(w.logs.String(), tt.logged) {
			t.Errorf("%s: the log lacks %q", tt.user, tt.logged)
		}
		if strings.Contains(tt.reply, "AADSTS") || strings.Contains(tt.reply, "upstream") {
			t.Errorf("the reply %q tells the reason", tt.reply)
		}
	}
	// A failed PASS forgets the USER.
	if l := c.cmd("PASS " + testPassword); l != "-ERR USER first" {
		t.Errorf("PASS after a failure: %q", l)
	}
	logins, _ := w.obs.snapshot()
	want := []string{"pop3:invoices:bad_credentials", "pop3:-:bad_credentials", "pop3:ghost:upstream_rejected",
		"pop3:broken:needs_attention", "pop3:down:unavailable"}
	if !slices.Equal(logins, want) {
		t.Errorf("logins %q, want %q", logins, want)
	}
	c.cmd("USER " + testUser)
	if l := c.cmd("PASS " + testPassword); l != textLoggedIn {
		t.Errorf("the right password after failures: %q", l)
	}
}

// A token endpoint that is down is -ERR [SYS/TEMP]: the app retries.
func TestTokenUnavailable(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.fake.FailTokenRequests(100, fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"})
	c := w.dial()
	c.cmd("USER " + testUser)
	if l := c.cmd("PASS " + testPassword); l != textUnavailable {
		t.Errorf("PASS: %q", l)
	}
}

// Before login: TRANSACTION commands and APOP get -ERR and the session goes
// on; NOOP and QUIT work.
func TestCommandsBeforeLogin(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dial()
	for _, cmd := range []string{"STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 0", "UIDL", "APOP erp 0123", "UTF8", "stat"} {
		if l := c.cmd(cmd); l != textNotYet {
			t.Errorf("%s: %q", cmd, l)
		}
	}
	if l := c.cmd("PASS x"); l != "-ERR USER first" {
		t.Errorf("PASS first: %q", l)
	}
	if l := c.cmd("USER"); l != "-ERR USER expects a user name" {
		t.Errorf("USER alone: %q", l)
	}
	if l := c.cmd(""); l != "-ERR Empty command" {
		t.Errorf("empty line: %q", l)
	}
	if l := c.cmd("STLS"); l != "-ERR STLS is not available" {
		t.Errorf("STLS on a plain listener: %q", l)
	}
	if l := c.cmd("NOOP"); l != "+OK" {
		t.Errorf("NOOP: %q", l)
	}
	if l := c.cmd("QUIT"); l != textBye {
		t.Errorf("QUIT: %q", l)
	}
	c.expectClosed()
}

// Input that is not an app logging in ends the session: a line over the
// bound, a command that is not POP3 (an HTTP request), too many refused
// commands; a client silent before login is dropped without a reply
// (RFC 1939 §3).
func TestBadInputBeforeLogin(t *testing.T) {
	w := newWorld(t, worldOptions{PreAuthTimeout: 200 * time.Millisecond})
	t.Run("long line", func(t *testing.T) {
		c := w.dial()
		c.send("USER " + strings.Repeat("a", maxLineLength) + "\r\n")
		if l := c.line(); l != textLineTooLong {
			t.Errorf("reply %q", l)
		}
		c.expectClosed()
	})
	t.Run("long AUTH response", func(t *testing.T) {
		c := w.dial()
		c.cmd("AUTH PLAIN")
		c.send(strings.Repeat("A", maxLineLength+10) + "\r\n")
		if l := c.line(); l != textLineTooLong {
			t.Errorf("reply %q", l)
		}
		c.expectClosed()
	})
	t.Run("HTTP request", func(t *testing.T) {
		c := w.dial()
		c.send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nUSER erp\r\n")
		if l := c.line(); l != textUnknown {
			t.Errorf("reply %q", l)
		}
		c.expectClosed()
	})
	t.Run("too many errors", func(t *testing.T) {
		c := w.dial()
		for range maxBadCommands - 1 {
			c.cmd("STAT")
		}
		c.send("STAT\r\n")
		if l := c.line(); l != textNotYet {
			t.Errorf("reply %q", l)
		}
		if l := c.line(); l != textTooMany {
			t.Errorf("reply %q", l)
		}
		c.expectClosed()
	})
	t.Run("silent client", func(t *testing.T) {
		c := w.dial()
		c.expectClosed()
	})
}

// STLS: the plaintext pipelined after it is dropped, CAPA then offers no
// STLS, USER given before is forgotten, and the login works over TLS. Off
// loopback, passwords are refused until then.
func TestSTLS(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS})
	c := w.dial()
	caps := strings.Join(append([]string{c.cmd("CAPA")}, c.multi()...), "|")
	if !strings.Contains(caps, "STLS") {
		t.Errorf("CAPA %q lacks STLS", caps)
	}
	c.cmd("USER " + testUser)
	c.send("STLS\r\nNOOP\r\n")
	if l := c.line(); l != "+OK Begin TLS negotiation now" {
		t.Fatalf("STLS: %q", l)
	}
	tc := tls.Client(c.conn, w.clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c = newRawClient(t, tc)
	caps = strings.Join(append([]string{c.cmd("CAPA")}, c.multi()...), "|")
	if strings.Contains(caps, "STLS") {
		t.Errorf("CAPA over TLS %q offers STLS (or the pipelined NOOP was answered)", caps)
	}
	if l := c.cmd("STLS"); l != "-ERR TLS is already active" {
		t.Errorf("second STLS: %q", l)
	}
	if l := c.cmd("PASS " + testPassword); l != "-ERR USER first" {
		t.Errorf("USER survived STLS: %q", l)
	}
	if l := c.cmd("AUTH PLAIN " + plain(testUser, testPassword)); l != textLoggedIn {
		t.Errorf("login over TLS: %q", l)
	}
}

// A client that is not on loopback may not send a password before STLS:
// CAPA offers neither USER nor SASL, and USER, PASS and AUTH PLAIN get
// -ERR [AUTH].
func TestPlaintextRefusedOffLoopback(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS})
	server, client := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.srv.ServeConn(remoteConn{server, &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40000}})
	}()
	t.Cleanup(func() {
		client.Close()
		<-done
	})
	c := newRawClient(t, client)
	if g := c.line(); g != greeting {
		t.Fatalf("greeting %q", g)
	}
	caps := strings.Join(append([]string{c.cmd("CAPA")}, c.multi()...), "|")
	if strings.Contains(caps, "USER") || strings.Contains(caps, "SASL") || !strings.Contains(caps, "STLS") {
		t.Errorf("CAPA %q", caps)
	}
	for _, cmd := range []string{"USER " + testUser, "PASS " + testPassword, "AUTH PLAIN " + plain(testUser, testPassword)} {
		if l := c.cmd(cmd); l != textPrivacy {
			t.Errorf("%q: %q", strings.Fields(cmd)[0], l)
		}
	}
}

// remoteConn gives a connection another remote address.
type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

// Implicit TLS: the greeting comes over TLS; logins work.
func TestImplicitTLS(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSImplicit})
	c := w.dial()
	if _, ok := c.conn.(*tls.Conn); !ok {
		t.Fatal("not TLS")
	}
	c.cmd("USER " + testUser)
	if l := c.cmd("PASS " + testPassword); l != textLoggedIn {
		t.Errorf("PASS: %q", l)
	}
}

// Shutdown says goodbye to a session that has not logged in; a proxied one
// goes on until it ends by itself.
func TestShutdown(t *testing.T) {
	w := newWorld(t, worldOptions{})
	idle := w.dial()
	busy := w.dial()
	busy.cmd("USER " + testUser)
	if l := busy.cmd("PASS " + testPassword); l != textLoggedIn {
		t.Fatalf("PASS: %q", l)
	}
	done := make(chan error, 1)
	go func() { done <- w.srv.Shutdown(t.Context()) }()
	if l := idle.line(); l != textShutdown {
		t.Errorf("idle session: %q", l)
	}
	idle.expectClosed()
	if l := busy.cmd("NOOP"); l != "+OK" {
		t.Errorf("the proxied session during shutdown: %q", l)
	}
	busy.cmd("QUIT")
	busy.conn.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// Over the listener's cap on connections that have not logged in, a
// connection gets the busy line and is closed.
func TestBusy(t *testing.T) {
	w := newWorld(t, worldOptions{MaxUnauthenticated: 1})
	w.dial()
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	rc := newRawClient(t, c)
	if l := rc.line(); l != busyLine {
		t.Errorf("second connection: %q", l)
	}
	rc.expectClosed()
}
