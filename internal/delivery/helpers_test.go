package delivery

// Fixtures: the fake Microsoft 365 (internal/fakems) as the upstream, reached
// through a loopback TCP link that lets a test end a session from the
// server's side and see when the relay closes one; credentials that hand out
// the fake's own tokens; a dialer that counts the relay's connections; and
// scripted SMTP servers on loopback for what the fake cannot do (a 421 on an
// idle session, a reply that never comes). Every server and goroutine is
// torn down and joined by t.Cleanup.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

const (
	testClientID = "11111111-1111-1111-1111-111111111111"
	testSecret   = "fake-client-secret"
	testMailbox  = "invoices@contoso.com"
	recipient    = "customer@example.net"
	// testLimit bounds every test's context, every scripted exchange and
	// every wait for something the link or a server must see.
	testLimit = 10 * time.Second
	// maxLine bounds a line a scripted server reads.
	maxLine = 1 << 20
)

var testAccount = events.Account{Name: "invoices", Mailbox: testMailbox, Provider: "contoso"}

// world is a Direct delivery of testAccount in front of the fake.
type world struct {
	fake   *fakems.Server
	link   *link
	dials  *atomic.Int32 // TCP connections the target's dialer opened
	obs    *recorder
	sender *Sender
	direct *Direct
	cred   *fakeCreds
	clock  *testClock // nil: the Sender runs on the system clock
}

// worldOptions change newWorld's defaults.
type worldOptions struct {
	fake   fakems.Options
	limits config.Limits // zero: config.DefaultLimits()
	clock  *testClock
}

func newWorld(t *testing.T) *world { return newWorldWith(t, worldOptions{}) }

// startFake starts the fake Exchange with the test app granted the test
// mailbox; it is closed at the end of the test.
func startFake(t testing.TB, ctx context.Context, o fakems.Options) *fakems.Server {
	t.Helper()
	fake, err := fakems.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	fake.AddApp(fakems.App{ClientID: testClientID, Secret: testSecret})
	fake.AddMailbox(testMailbox, "mailbox-pw")
	fake.GrantApp(testClientID, testMailbox)
	return fake
}

func newWorldWith(t *testing.T, o worldOptions) *world {
	t.Helper()
	fake := startFake(t, context.Background(), o.fake)
	w := &world{fake: fake, link: startLink(t, fake.SMTPAddr), obs: &recorder{}, clock: o.clock}
	tgt := w.target()
	tgt.Dialer, w.dials = countingDialer()
	so := SenderOptions{Limits: o.limits, Logger: testLogger(t)}
	if o.clock != nil {
		so.Clock = o.clock
	}
	w.sender = NewSender(tgt, so)
	w.direct = NewDirect(testAccount, w.sender, w.obs)
	// Close before the fake goes (cleanups run last first).
	t.Cleanup(w.direct.Close)
	w.cred = &fakeCreds{fake: fake, mailbox: testMailbox}
	return w
}

// target is the fake's SMTP server through the link, with the fake's CA.
func (w *world) target() upstream.Target {
	return upstream.Target{
		Account: testAccount,
		// The link is on 127.0.0.1 too, so the fake's certificate for
		// 127.0.0.1 verifies through it.
		Server: config.Upstream{Addr: w.link.addr(), TLS: config.TLSStartTLS},
		TLS:    &tls.Config{RootCAs: w.fake.CAPool},
	}
}

// testLogger sends a Sender's log to the test's.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// testClock is a Clock that moves only when the test advances it. Its
// timers fire, in time order, on the goroutine that advances it.
type testClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*testTimer
}

type testTimer struct {
	c  *testClock
	at time.Time
	f  func()
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &testTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *testTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	n := len(t.c.timers)
	t.c.timers = slices.DeleteFunc(t.c.timers, func(x *testTimer) bool { return x == t })
	return len(t.c.timers) < n
}

// maxTimerRounds bounds the timers one advance fires that arm timers
// already due.
const maxTimerRounds = 1000

// advance moves the clock by d and runs the timers due, earliest first,
// without holding the clock's lock (a callback may arm or stop timers).
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	for range maxTimerRounds {
		c.mu.Lock()
		var next *testTimer
		for _, t := range c.timers {
			if !t.at.After(c.now) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			c.mu.Unlock()
			return
		}
		c.timers = slices.DeleteFunc(c.timers, func(x *testTimer) bool { return x == next })
		c.mu.Unlock()
		next.f()
	}
	panic("testClock: timers keep arming due timers")
}

// pending returns how many timers are armed.
func (c *testClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// waitStats waits until cond holds for s's Stats (re-checked at every
// change of the Sender's state), failing the test after testLimit.
func waitStats(t *testing.T, s *Sender, what string, cond func(Stats) bool) Stats {
	t.Helper()
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		st := s.Stats()
		if cond(st) {
			return st
		}
		select {
		case <-changed:
		case <-limit.C:
			t.Fatalf("waiting for %s: not within %v; stats %+v", what, testLimit, st)
		}
	}
}

// countingDialer is the target's dialer: a plain net.Dialer whose Control
// hook counts the sockets it connects.
func countingDialer() (*net.Dialer, *atomic.Int32) {
	n := new(atomic.Int32)
	return &net.Dialer{
		Timeout: testLimit,
		Control: func(string, string, syscall.RawConn) error {
			n.Add(1)
			return nil
		},
	}, n
}

func wantDials(t *testing.T, w *world, want int32) {
	t.Helper()
	if got := w.dials.Load(); got != want {
		t.Errorf("upstream connections dialled: %d, want %d", got, want)
	}
}

// fakeCreds are credentials whose tokens the fake issues for mailbox, as a
// signed-in account's would be; they count what the delivery asks of them.
type fakeCreds struct {
	fake        *fakems.Server
	mailbox     string
	tokens      atomic.Int32
	invalidated atomic.Int32
}

func (c *fakeCreds) Token(context.Context) (string, error) {
	c.tokens.Add(1)
	return c.fake.IssueAccessToken(testClientID, c.mailbox), nil
}

func (c *fakeCreds) Invalidate() { c.invalidated.Add(1) }

// staticCreds hand out one token or one error, and count Invalidate.
type staticCreds struct {
	token       string
	err         error
	invalidated atomic.Int32
}

func (c *staticCreds) Token(context.Context) (string, error) { return c.token, c.err }
func (c *staticCreds) Invalidate()                           { c.invalidated.Add(1) }

// recorder is an events.Observer that keeps the messages reported.
type recorder struct {
	events.Nop
	mu       sync.Mutex
	messages []int64
}

func (r *recorder) Message(a events.Account, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a == testAccount {
		r.messages = append(r.messages, bytes)
	}
}

func (r *recorder) sizes() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int64(nil), r.messages...)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testLimit)
	t.Cleanup(cancel)
	return ctx
}

// link is a TCP relay on 127.0.0.1 in front of an upstream address. Each
// connection the relay makes to it gets one to the upstream, and bytes are
// copied both ways (TLS passes through untouched). A test can cut a
// connection, which to the relay is the server going away, and wait for
// one to end, which it does when either side closes it.
type link struct {
	ln       net.Listener
	upstream string
	wg       sync.WaitGroup

	mu      sync.Mutex
	conns   []*linkConn // in accept order
	changed chan struct{}
}

type linkConn struct {
	client, server net.Conn
	ended          bool
}

func startLink(t *testing.T, upstreamAddr string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, upstream: upstreamAddr, changed: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		l.mu.Lock()
		for _, c := range l.conns {
			c.close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	l.wg.Go(func() { l.accept(t) })
	return l
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) accept(t *testing.T) {
	for {
		client, err := l.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", l.upstream, testLimit)
		if err != nil {
			t.Errorf("link: dial upstream: %v", err)
			client.Close()
			continue
		}
		lc := &linkConn{client: client, server: server}
		l.mu.Lock()
		l.conns = append(l.conns, lc)
		l.notifyLocked()
		l.mu.Unlock()
		l.wg.Go(func() { l.pump(lc) })
	}
}

// pump copies both ways until either side ends, then closes both.
func (l *link) pump(lc *linkConn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		io.Copy(lc.server, lc.client)
		lc.close()
	})
	io.Copy(lc.client, lc.server)
	lc.close()
	wg.Wait()
	l.mu.Lock()
	lc.ended = true
	l.notifyLocked()
	l.mu.Unlock()
}

func (lc *linkConn) close() {
	lc.client.Close()
	lc.server.Close()
}

func (l *link) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// cut closes the i-th connection (from 0, in accept order) on both sides.
func (l *link) cut(t *testing.T, i int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if i >= len(l.conns) {
		t.Fatalf("link: no connection %d (have %d)", i, len(l.conns))
	}
	l.conns[i].close()
}

// waitEnded waits until the connections numbered in which have ended.
func (l *link) waitEnded(t *testing.T, which ...int) {
	t.Helper()
	timeout := time.NewTimer(testLimit)
	defer timeout.Stop()
	for {
		l.mu.Lock()
		done, changed := true, l.changed
		for _, i := range which {
			if i >= len(l.conns) || !l.conns[i].ended {
				done = false
			}
		}
		l.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("link: connections %v not ended within %v (%s)", which, testLimit, l.state())
		}
	}
}

// open returns the numbers of the connections that have not ended.
func (l *link) open() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var open []int
	for i, c := range l.conns {
		if !c.ended {
			open = append(open, i)
		}
	}
	return open
}

func (l *link) state() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for i, c := range l.conns {
		if i > 0 {
			b.WriteString(" ")
		}
		if c.ended {
			b.WriteString("ended")
		} else {
			b.WriteString("open")
		}
	}
	return b.String()
}

// scripted serves each connection with script, in turn (the first
// connection gets scripts[0], and so on; more connections than scripts is a
// test failure), on a plain loopback port. Scripts run on their own
// goroutines, report with t.Error only, and are joined at cleanup.
func scripted(t *testing.T, scripts ...func(c net.Conn, br *bufio.Reader)) upstream.Target {
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
	wg.Go(func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if i >= len(scripts) {
				t.Errorf("scripted upstream: connection %d, only %d expected", i+1, len(scripts))
				c.Close()
				continue
			}
			script := scripts[i]
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(testLimit))
				script(c, bufio.NewReader(c))
			})
		}
	})
	return upstream.Target{
		Account: testAccount,
		Server:  config.Upstream{Addr: ln.Addr().String(), TLS: config.TLSNone},
	}
}

// expect reads a command line in a script and checks its beginning.
func expect(t *testing.T, br *bufio.Reader, prefix string) bool {
	t.Helper()
	l, err := splice.ReadLine(br, maxLine)
	if err != nil {
		t.Errorf("scripted upstream: read, want %q: %v", prefix, err)
		return false
	}
	if !strings.HasPrefix(strings.ToUpper(string(l)), strings.ToUpper(prefix)) {
		t.Errorf("scripted upstream: got %q, want %q...", l, prefix)
		return false
	}
	return true
}

// reply writes reply lines in a script.
func reply(t *testing.T, c net.Conn, lines ...string) {
	t.Helper()
	if _, err := io.WriteString(c, strings.Join(lines, "\r\n")+"\r\n"); err != nil {
		t.Errorf("scripted upstream: write: %v", err)
	}
}

// login plays Exchange's greeting, EHLO and a successful XOAUTH2 login.
func login(t *testing.T, c net.Conn, br *bufio.Reader) bool {
	t.Helper()
	reply(t, c, "220 scripted ESMTP")
	if !expect(t, br, "EHLO ") {
		return false
	}
	reply(t, c, "250-scripted Hello", "250-SIZE 157286400", "250 AUTH LOGIN XOAUTH2")
	if !expect(t, br, "AUTH XOAUTH2 ") {
		return false
	}
	reply(t, c, "235 2.7.0 Authentication successful")
	return true
}

// readMessage reads a DATA body up to its final dot.
func readMessage(t *testing.T, br *bufio.Reader) bool {
	t.Helper()
	for {
		l, err := splice.ReadLine(br, maxLine)
		if err != nil {
			t.Errorf("scripted upstream: reading the message: %v", err)
			return false
		}
		if string(l) == "." {
			return true
		}
	}
}

// waitClosed reads until the client closes the connection (or the script's
// deadline passes, which is a failure).
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, net.ErrClosed) || err == nil {
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("scripted upstream: the relay did not close the connection: %v", err)
	}
}

// stepReader returns first, then blocks until release is closed, then
// returns the error after (or io.EOF when after is nil). blocked is closed
// when it starts waiting.
type stepReader struct {
	first   []byte
	blocked chan struct{}
	release <-chan struct{}
	after   error
	state   int
}

func (r *stepReader) Read(p []byte) (int, error) {
	switch r.state {
	case 0:
		n := copy(p, r.first)
		r.first = r.first[n:]
		if len(r.first) == 0 {
			r.state = 1
		}
		return n, nil
	case 1:
		r.state = 2
		close(r.blocked)
		<-r.release
	}
	if r.after != nil {
		return 0, r.after
	}
	return 0, io.EOF
}

// hasIdle reports whether a logged-in session waits for reuse.
func (s *Sender) hasIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireIdleLocked(s.clock.Now())
	return len(s.idle) > 0
}
