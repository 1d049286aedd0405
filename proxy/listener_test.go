package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// The Listener's tests serve it with lineServer, a protocol server reduced
// to what the Listener sees: a greeting, a login that marks the connection
// authenticated, and the close. Clients are real sockets on 127.0.0.0/8;
// distinct source addresses (127.0.0.2, 127.0.0.3...) come from binding the
// client's local address.

const testBusy = "BUSY Too many connections, try again later"

// preAuthRecorder is an Observer that remembers the pre-authentication
// reports and ignores the rest.
type preAuthRecorder struct {
	events.Nop
	mu       sync.Mutex
	unauth   int
	rejected []string // "proto:reason"
	limits   []string // "proto:listener:address"
}

func (r *preAuthRecorder) Unauthenticated(_ events.Proto, delta int) {
	r.mu.Lock()
	r.unauth += delta
	r.mu.Unlock()
}

func (r *preAuthRecorder) PreAuthRejected(proto events.Proto, reason events.PreAuthReason) {
	r.mu.Lock()
	r.rejected = append(r.rejected, string(proto)+":"+string(reason))
	r.mu.Unlock()
}

func (r *preAuthRecorder) PreAuthLimits(proto events.Proto, perListener, perAddr int) {
	r.mu.Lock()
	r.limits = append(r.limits, string(proto)+":"+strconv.Itoa(perListener)+":"+strconv.Itoa(perAddr))
	r.mu.Unlock()
}

func (r *preAuthRecorder) snapshot() (unauth int, rejected, limits []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unauth, slices.Clone(r.rejected), slices.Clone(r.limits)
}

// wrapped stands for a protocol server's own connection wrapper (the SMTP
// front end's deadline wrapper): MarkAuthenticated must see through it.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// lineServer serves a Listener: "hello" on connect, "ok" to "login" after
// MarkAuthenticated, and the close at EOF.
type lineServer struct {
	t        *testing.T
	wantTLS  bool
	accepted atomic.Int64
	ended    atomic.Int64 // connections whose handler returned
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func serveLines(t *testing.T, l *Listener, wantTLS bool) *lineServer {
	s := &lineServer{t: t, wantTLS: wantTLS, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Accept returned %v, want only net.ErrClosed", err)
				}
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.ended.Add(1)
				s.handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *lineServer) handle(c net.Conn) {
	defer c.Close()
	if _, isTLS := c.(*tls.Conn); isTLS != s.wantTLS {
		s.t.Errorf("Accept returned a %T (TLS wanted: %v)", c, s.wantTLS)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	wc := wrapped{c}
	if _, err := wc.Write([]byte("hello\r\n")); err != nil {
		return
	}
	br := bufio.NewReader(wc)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if strings.TrimSpace(line) == "login" {
			MarkAuthenticated(wc)
			MarkAuthenticated(wc) // a second call gives nothing back
			wc.Write([]byte("ok\r\n"))
		}
	}
}

// client is one test connection.
type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dialFrom connects to addr from the local address from (127.0.0.x).
func dialFrom(t *testing.T, addr, from string, tc *tls.Config) *client {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	var c net.Conn
	var err error
	if tc != nil {
		c, err = tls.DialWithDialer(d, "tcp", addr, tc)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// line reads one line, or "" and the error.
func (c *client) line() (string, error) {
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.br.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

func (c *client) expect(want string) {
	c.t.Helper()
	if l, err := c.line(); l != want {
		c.t.Fatalf("got %q (%v), want %q", l, err, want)
	}
}

// expectRefused checks for the busy line (if any) and then the close.
func (c *client) expectRefused(busy string) {
	c.t.Helper()
	if busy != "" {
		c.expect(busy)
	}
	l, err := c.line()
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection not closed: %q, %v", l, err)
	}
}

func (c *client) login() {
	c.t.Helper()
	if _, err := c.c.Write([]byte("login\r\n")); err != nil {
		c.t.Fatal(err)
	}
	c.expect("ok")
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func newTestListener(t *testing.T, lc config.Listener, obs Observer) *Listener {
	t.Helper()
	if lc.Addr == "" {
		lc.Addr = "127.0.0.1:0"
	}
	l, err := Listen(lc)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := testutil.Logger(t)
	l.Proto, l.Observer, l.Logger, l.Busy = "test", obs, log, testBusy
	return l
}

func TestListenerCapsUnauthenticated(t *testing.T) {
	obs := &preAuthRecorder{}
	l := newTestListener(t, config.Listener{TLS: config.TLSNone}, obs)
	l.MaxUnauthenticated = 3
	srv := serveLines(t, l, false)
	addr := l.Addr().String()

	c1, c2, c3 := dialFrom(t, addr, "127.0.0.1", nil), dialFrom(t, addr, "127.0.0.1", nil), dialFrom(t, addr, "127.0.0.1", nil)
	for _, c := range []*client{c1, c2, c3} {
		c.expect("hello")
	}
	dialFrom(t, addr, "127.0.0.1", nil).expectRefused(testBusy)

	// A login gives its slot back...
	c1.login()
	c4 := dialFrom(t, addr, "127.0.0.1", nil)
	c4.expect("hello")
	dialFrom(t, addr, "127.0.0.1", nil).expectRefused(testBusy)

	// ...and so does a close, once: c1's close after its login gives
	// nothing more.
	c2.c.Close()
	c1.c.Close()
	waitUntil(t, "the server to see both closes", func() bool { return srv.ended.Load() == 2 })
	dialFrom(t, addr, "127.0.0.1", nil).expect("hello")
	dialFrom(t, addr, "127.0.0.1", nil).expectRefused(testBusy)

	unauth, rejected, limits := obs.snapshot()
	if unauth != 3 {
		t.Errorf("unauthenticated gauge %d, want 3", unauth)
	}
	if want := []string{"test:listener_cap", "test:listener_cap", "test:listener_cap"}; !slices.Equal(rejected, want) {
		t.Errorf("rejections %v, want %v", rejected, want)
	}
	if want := []string{"test:3:100"}; !slices.Equal(limits, want) {
		t.Errorf("limits %v, want %v", limits, want)
	}
	if got := srv.accepted.Load(); got != 5 {
		t.Errorf("server was handed %d connections, want 5 (refused ones never reach it)", got)
	}
}

func TestListenerCapsPerAddress(t *testing.T) {
	obs := &preAuthRecorder{}
	l := newTestListener(t, config.Listener{TLS: config.TLSNone}, obs)
	l.MaxUnauthenticated = 20
	l.MaxUnauthenticatedPerAddr = 2
	serveLines(t, l, false)
	addr := l.Addr().String()

	a1, a2 := dialFrom(t, addr, "127.0.0.2", nil), dialFrom(t, addr, "127.0.0.2", nil)
	a1.expect("hello")
	a2.expect("hello")
	dialFrom(t, addr, "127.0.0.2", nil).expectRefused(testBusy)
	// Another address has its own count.
	dialFrom(t, addr, "127.0.0.3", nil).expect("hello")
	// 127.0.0.1, where every local application connects from, is exempt.
	for range 4 {
		dialFrom(t, addr, "127.0.0.1", nil).expect("hello")
	}
	a1.login()
	dialFrom(t, addr, "127.0.0.2", nil).expect("hello")
	dialFrom(t, addr, "127.0.0.2", nil).expectRefused(testBusy)

	unauth, rejected, limits := obs.snapshot()
	if unauth != 7 {
		t.Errorf("unauthenticated gauge %d, want 7", unauth)
	}
	if want := []string{"test:address_cap", "test:address_cap"}; !slices.Equal(rejected, want) {
		t.Errorf("rejections %v, want %v", rejected, want)
	}
	if want := []string{"test:20:2"}; !slices.Equal(limits, want) {
		t.Errorf("limits %v, want %v", limits, want)
	}
}

// TestListenerImplicitTLS: the Listener hands out *tls.Conn itself, a
// refused TLS client is closed without a line, and MarkAuthenticated
// reaches the slot through the tls.Conn.
func TestListenerImplicitTLS(t *testing.T) {
	cert := testutil.NewLocalCert(t)
	obs := &preAuthRecorder{}
	l := newTestListener(t, config.Listener{TLS: config.TLSImplicit, CertFile: cert.CertFile, KeyFile: cert.KeyFile}, obs)
	l.MaxUnauthenticated = 1
	serveLines(t, l, true)
	addr := l.Addr().String()

	c1 := dialFrom(t, addr, "127.0.0.1", cert.ClientTLS())
	c1.expect("hello")
	d := &net.Dialer{Timeout: 10 * time.Second}
	if c, err := tls.DialWithDialer(d, "tcp", addr, cert.ClientTLS()); err == nil {
		c.Close()
		t.Fatal("a TLS client over the cap completed its handshake")
	}
	c1.login()
	dialFrom(t, addr, "127.0.0.1", cert.ClientTLS()).expect("hello")

	if _, rejected, _ := obs.snapshot(); !slices.Equal(rejected, []string{"test:listener_cap"}) {
		t.Errorf("rejections %v", rejected)
	}
}

func TestAddrKey(t *testing.T) {
	for _, tt := range []struct {
		in, key string
		counted bool
	}{
		{"127.0.0.1", "127.0.0.1", false},
		{"::1", "::1", false},
		{"::ffff:127.0.0.1", "127.0.0.1", false},
		{"127.0.0.2", "127.0.0.2", true},
		{"192.0.2.7", "192.0.2.7", true},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::", true},
		{"fe80::1%eth0", "fe80::", true},
	} {
		key, counted := addrKey(netip.MustParseAddr(tt.in))
		if key.String() != tt.key || counted != tt.counted {
			t.Errorf("addrKey(%s) = %s, %v; want %s, %v", tt.in, key, counted, tt.key, tt.counted)
		}
	}
}

// failedAttempts is the number of failed accepts in the current run.
func failedAttempts(l *Listener) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failures
}
