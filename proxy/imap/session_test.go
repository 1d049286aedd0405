package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/oauthrelay/oauthrelay/config"
)

func TestPreAuthCommands(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dialRaw()
	steps := []struct {
		send string
		want []string // every line of the answer, in order
	}{
		{"a CAPABILITY\r\n", []string{"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN", "a OK CAPABILITY completed"}},
		{"b noop\r\n", []string{"b OK NOOP completed"}},
		{`c ID ("name" "test" "version" "1.0")` + "\r\n", []string{`* ID ("name" "oauthrelay")`, "c OK ID completed"}},
		{"c2 ID NIL\r\n", []string{`* ID ("name" "oauthrelay")`, "c2 OK ID completed"}},
		{"c3 ID {4}\r\n", []string{"c3 BAD ID expects NIL or a parenthesized list"}}, // asks for the literal first
		{"d SELECT INBOX\r\n", []string{"d BAD Command unknown or not valid before login"}},
		{"e APPEND INBOX {5}\r\n", []string{"e BAD Command unknown or not valid before login"}},
		{"f APPEND INBOX {5+}\r\nhello\r\n", []string{"f BAD Command unknown or not valid before login"}},
		{"g STARTTLS\r\n", []string{"g BAD STARTTLS is not available"}},
		{"h LOGIN \"unterminated\r\n", []string{"h BAD Unterminated quoted string"}},
		{"\r\n", []string{"* BAD Missing or invalid tag"}},
		{"i LOGIN {9000}\r\n", []string{"i BAD [TOOBIG] Literal too big"}},
		{"j CAPABILITY x\r\n", []string{"j BAD CAPABILITY takes no arguments"}},
		{"k LOGOUT\r\n", []string{"* BYE oauthrelay logging out", "k OK LOGOUT completed"}},
	}
	for _, s := range steps {
		c.send(s.send)
		if s.send == "c3 ID {4}\r\n" {
			if l := c.line(); !strings.HasPrefix(l, "+ ") {
				t.Fatalf("literal: %q", l)
			}
			c.send("abcd\r\n")
		}
		for _, want := range s.want {
			if got := c.line(); got != want {
				t.Errorf("%q: got %q, want %q", s.send, got, want)
			}
		}
	}
	c.expectClosed()
}

func TestGreeting(t *testing.T) {
	for _, tt := range []struct {
		tls, want string
	}{
		{config.TLSNone, "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] oauthrelay IMAP proxy ready"},
		{config.TLSStartTLS, "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS AUTH=PLAIN] oauthrelay IMAP proxy ready"},
		{config.TLSImplicit, "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] oauthrelay IMAP proxy ready"},
	} {
		t.Run(tt.tls, func(t *testing.T) {
			w := newWorld(t, worldOptions{TLS: tt.tls})
			var c net.Conn
			var err error
			if tt.tls == config.TLSImplicit {
				c, err = tls.Dial("tcp", w.addr, &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"})
			} else {
				c, err = net.Dial("tcp", w.addr)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if g := newRawClient(t, c).line(); g != tt.want {
				t.Errorf("greeting %q, want %q", g, tt.want)
			}
		})
	}
}

func TestStartTLS(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS})

	// By hand: plaintext pipelined after STARTTLS is dropped, and the
	// capabilities no longer offer STARTTLS.
	c := w.dialRaw()
	c.send("a STARTTLS\r\nb NOOP\r\n")
	if l := c.line(); l != "a OK Begin TLS negotiation now" {
		t.Fatalf("STARTTLS: %q", l)
	}
	tc := tls.Client(c.conn, &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c = newRawClient(t, tc)
	c.send("c CAPABILITY\r\n")
	if l := c.line(); l != "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN" {
		t.Errorf("capabilities over TLS: %q (the pipelined NOOP must not be answered)", l)
	}
	c.line()
	c.send("d STARTTLS\r\n")
	if l := c.line(); l != "d BAD TLS is already active" {
		t.Errorf("second STARTTLS: %q", l)
	}
	c.send("e LOGIN " + testUser + " " + testPassword + "\r\n")
	loggedIn(t, c, "e")

	// With imapclient.
	ic := w.login()
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select: %v", err)
	}
}

// remoteConn gives a connection another remote address, to be served as a
// client from the network.
type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

// serveFrom serves one end of a pipe as a client at remote and returns the
// other end.
func serveFrom(t *testing.T, w *world, remote string) *rawClient {
	server, client := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.srv.ServeConn(remoteConn{server, &net.TCPAddr{IP: net.ParseIP(remote), Port: 40000}})
	}()
	t.Cleanup(func() {
		client.Close()
		<-done
	})
	return newRawClient(t, client)
}

func TestLoginDisabledOffLoopback(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS})
	c := serveFrom(t, w, "192.0.2.7")
	if g := c.line(); g != "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED] oauthrelay IMAP proxy ready" {
		t.Errorf("greeting %q", g)
	}
	for _, cmd := range []string{
		"a LOGIN " + testUser + " " + testPassword + "\r\n",
		"b LOGIN {3}\r\n", // no "+": the password is not asked for in the clear
		"c AUTHENTICATE PLAIN " + plain(testUser, testPassword) + "\r\n",
	} {
		c.send(cmd)
		tag, _, _ := strings.Cut(cmd, " ")
		if l := c.line(); !strings.HasPrefix(l, tag+" NO [PRIVACYREQUIRED] ") {
			t.Errorf("%q: %q", cmd, l)
		}
	}
	// After STARTTLS the password may be sent.
	c.send("d STARTTLS\r\n")
	c.line()
	tc := tls.Client(c.conn, &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c = newRawClient(t, tc)
	c.send("e CAPABILITY\r\n")
	if l := c.line(); l != "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN" {
		t.Errorf("capabilities over TLS: %q", l)
	}
	c.line()
	c.send("f LOGIN " + testUser + " " + testPassword + "\r\n")
	loggedIn(t, c, "f")
}

func TestAllowInsecure(t *testing.T) {
	w := newWorld(t, worldOptions{AllowInsecure: true})
	c := serveFrom(t, w, "192.0.2.7")
	if g := c.line(); !strings.Contains(g, "AUTH=PLAIN") {
		t.Errorf("greeting %q", g)
	}
	c.send("a LOGIN " + testUser + " " + testPassword + "\r\n")
	loggedIn(t, c, "a")
}

func TestPreAuthTimeout(t *testing.T) {
	w := newWorld(t, worldOptions{PreAuthTimeout: 200 * time.Millisecond})
	c := w.dialRaw()
	start := time.Now()
	if l := c.line(); l != "* BYE Autologout; idle for too long" {
		t.Errorf("got %q", l)
	}
	c.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("dropped after %v", d)
	}
}

func TestLineTooLong(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dialRaw()
	c.send("a LOGIN " + strings.Repeat("x", maxLineLength) + "\r\n")
	if l := c.line(); l != "* BAD Command line too long" {
		t.Errorf("got %q", l)
	}
	if l := c.line(); l != "* BYE Command line too long" {
		t.Errorf("got %q", l)
	}
	c.expectClosed()
}

// TestTooManyBadCommands: IMAP commands refused before login (here one
// valid only after login) are bounded. (It sent "GET / HTTP/1.1" lines
// until an unknown command ended the session at once:
// TestCrossProtocolHTTP.)
func TestTooManyBadCommands(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dialRaw()
	c.send(strings.Repeat("GET SELECT INBOX\r\n", maxBadCommands))
	for range maxBadCommands {
		if l := c.line(); !strings.HasPrefix(l, "GET BAD ") {
			t.Fatalf("got %q", l)
		}
	}
	if l := c.line(); l != "* BYE Too many invalid commands" {
		t.Errorf("got %q", l)
	}
	c.expectClosed()
}

func TestShutdown(t *testing.T) {
	w := newWorld(t, worldOptions{})
	proxied := w.login()
	if _, err := proxied.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	pre := w.dialRaw()

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.srv.Shutdown(ctx) }()

	if l := pre.line(); l != "* BYE Server shutting down" {
		t.Errorf("pre-auth session got %q", l)
	}
	pre.expectClosed()
	// The proxied session goes on while ctx lasts.
	if err := proxied.Noop().Wait(); err != nil {
		t.Errorf("proxied session during shutdown: %v", err)
	}
	if _, err := net.Dial("tcp", w.addr); err == nil {
		t.Error("still accepting connections")
	}
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	// Then it is closed.
	select {
	case <-proxied.Closed():
	case <-time.After(5 * time.Second):
		t.Error("proxied session still open after Shutdown")
	}
}

func TestShutdownIdle(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown with no sessions left: %v", err)
	}
}

func TestCapabilitiesAfterLoginAreUpstreams(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS})
	c := w.login()
	caps := c.Caps()
	if caps.Has(imap.CapStartTLS) || caps.Has(imap.CapLoginDisabled) || !caps.Has(imap.CapUIDPlus) {
		t.Errorf("capabilities after login: %v", caps)
	}
}
