package imap

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
)

// readToClose reads every line until the server closes the connection.
func (c *rawClient) readToClose() []string {
	c.t.Helper()
	var lines []string
	for range 100 {
		l, err := c.readLine(10 * time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("connection still open after %q", lines)
			}
			return lines
		}
		lines = append(lines, l)
	}
	c.t.Fatalf("no close after %q", lines)
	return nil
}

// TestCrossProtocolHTTP: an HTTP request sent to the IMAP port (a browser
// made to POST there) ends at its first line; the IMAP commands in its body
// never run. It used to get a BAD per header line and then the body's LOGIN
// and SELECT were executed.
func TestCrossProtocolHTTP(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dialRaw()
	body := "a LOGIN " + testUser + " " + testPassword + "\r\nb SELECT INBOX\r\n"
	tokensBefore := w.fake.TokenRequests()
	c.send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body)
	if lines := c.readToClose(); !slices.Equal(lines, []string{"* BYE Unknown command"}) {
		t.Errorf("answer %q, want one BYE", lines)
	}
	waitFor(t, "the session to end", func() bool {
		w.obs.mu.Lock()
		defer w.obs.mu.Unlock()
		return w.obs.conns == 0
	})
	if logins, ups := w.obs.snapshot(); len(logins) != 0 || len(ups) != 0 {
		t.Errorf("a login was attempted: logins %v, upstream %v", logins, ups)
	}
	if n := w.fake.TokenRequests(); n != tokensBefore {
		t.Errorf("%d token requests made", n-tokensBefore)
	}
	if strings.Contains(w.logs.String(), "msg=login") {
		t.Error("the relay logged a login")
	}
}

// TestUnknownCommandBeforeLogin: a command that is not IMAP ends the session
// at once, without its literal being asked for or read; IMAP commands that
// are valid only after login are refused with BAD and the session goes on
// (TestPreAuthCommands).
func TestUnknownCommandBeforeLogin(t *testing.T) {
	w := newWorld(t, worldOptions{})
	for _, send := range []string{
		"a XYZZY\r\n",
		"a XYZZY {5}\r\n",               // no "+": the literal is not asked for
		"a XYZZY {5+}\r\nb LOGIN x\r\n", // the rest is not read as commands
		"* OK not a command\r\n",        // no tag, a name that is not IMAP
		"GET /index.html?q=(1) HTTP/1.1\r\nHost: x\r\n",
	} {
		c := w.dialRaw()
		c.send("t1 NOOP\r\n")
		if l := c.line(); l != "t1 OK NOOP completed" {
			t.Fatalf("NOOP: %q", l)
		}
		c.send(send)
		if lines := c.readToClose(); !slices.Equal(lines, []string{"* BYE Unknown command"}) {
			t.Errorf("%q: answer %q, want one BYE", send, lines)
		}
	}
}

// TestLoginReplyText: the app's LOGIN is answered "LOGIN completed" and its
// AUTHENTICATE "AUTHENTICATE completed", with the upstream's capabilities;
// the upstream's own text (the fake says "AUTHENTICATE completed." to the
// relay's AUTHENTICATE XOAUTH2) answered a command the app did not send.
func TestLoginReplyText(t *testing.T) {
	w := newWorld(t, worldOptions{})
	for _, tt := range []struct{ send, want string }{
		{"a1 LOGIN " + testUser + " " + testPassword + "\r\n", "LOGIN completed"},
		{"a1 AUTHENTICATE PLAIN " + plain(testUser, testPassword) + "\r\n", "AUTHENTICATE completed"},
	} {
		c := w.dialRaw()
		c.send(tt.send)
		l := c.line()
		if !strings.HasPrefix(l, "a1 OK [CAPABILITY IMAP4rev1 ") || !strings.HasSuffix(l, "] "+tt.want) {
			t.Errorf("%q: reply %q, want a1 OK [CAPABILITY ...] %s", tt.send, l, tt.want)
		}
	}
}

// TestPreAuthCap: with a cap of 2 connections that have not logged in, a
// third is told BYE (or, on implicit TLS, closed) at once; a login frees a
// slot for the next one. Before the cap, idle connections were held without
// limit.
func TestPreAuthCap(t *testing.T) {
	for _, mode := range []string{config.TLSNone, config.TLSStartTLS, config.TLSImplicit} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t, worldOptions{TLS: mode, MaxUnauthenticated: 2})
			c := w.dialRaw()
			w.dialRaw()
			w.expectBusy()
			if mode == config.TLSStartTLS {
				// The slot is found under the STARTTLS tls.Conn.
				c.send("s STARTTLS\r\n")
				if l := c.line(); l != "s OK Begin TLS negotiation now" {
					t.Fatalf("STARTTLS: %q", l)
				}
				tc := tls.Client(c.conn, &tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"})
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = newRawClient(t, tc)
			}
			c.send("a LOGIN " + testUser + " " + testPassword + "\r\n")
			loggedIn(t, c, "a") // its slot is given back
			w.dialRaw()
			w.expectBusy()
			w.obs.mu.Lock()
			defer w.obs.mu.Unlock()
			if want := []string{"imap:listener_cap", "imap:listener_cap"}; !slices.Equal(w.obs.rejected, want) {
				t.Errorf("rejections %v, want %v", w.obs.rejected, want)
			}
			if w.obs.unauth != 2 {
				t.Errorf("unauthenticated connections %d, want 2", w.obs.unauth)
			}
		})
	}
}

// expectBusy dials and checks that the connection is refused: the busy
// line then the close, or on implicit TLS a failed handshake.
func (w *world) expectBusy() {
	w.t.Helper()
	if w.lc.TLS == config.TLSImplicit {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", w.addr,
			&tls.Config{RootCAs: w.roots, ServerName: "127.0.0.1"})
		if err == nil {
			c.Close()
			w.t.Fatal("a connection over the cap got through the TLS handshake")
		}
		return
	}
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		w.t.Fatal(err)
	}
	defer c.Close()
	rc := newRawClient(w.t, c)
	if lines := rc.readToClose(); !slices.Equal(lines, []string{busyLine}) {
		w.t.Errorf("over the cap: %q, want %q then the close", lines, busyLine)
	}
}

// failingListener is a plain net.Listener whose first accepts fail as if the
// process were out of file descriptors.
type failingListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestServeRetriesAcceptErrors: Serve on a plain net.Listener retries
// accept errors (through a proxy.Listener) instead of returning: before,
// "too many open files" ended IMAP's accept loop for good while the
// process stayed up.
func TestServeRetriesAcceptErrors(t *testing.T) {
	var fl *failingListener
	w := newWorld(t, worldOptions{Listen: func(t testing.TB, lc config.Listener) net.Listener {
		ln, err := net.Listen("tcp", lc.Addr)
		if err != nil {
			t.Fatal(err)
		}
		fl = &failingListener{Listener: ln}
		fl.fails.Store(3)
		return fl
	}})
	c := w.dialRaw()
	c.send("a LOGIN " + testUser + " " + testPassword + "\r\n")
	loggedIn(t, c, "a")
	if n := fl.fails.Load(); n >= 0 {
		t.Errorf("%d failures left: the listener's errors were not all seen", n+1)
	}
}
