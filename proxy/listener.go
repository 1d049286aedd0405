package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
)

// Caps on connections that have not logged in yet (see Listener). A
// connection before login costs a goroutine, its buffers and a file
// descriptor, and a login takes one round trip plus at most a token request
// and an upstream dial, so legitimate clients hold few slots at a time.
const (
	// DefaultMaxUnauthenticated caps a listener's connections that have
	// not logged in yet.
	DefaultMaxUnauthenticated = 1000
	// DefaultMaxUnauthenticatedPerAddr caps them per client address (per
	// /64 for IPv6), so that one host cannot take all of a listener's.
	DefaultMaxUnauthenticatedPerAddr = 100
)

// Accept retry and logging, as net/http's Server does for temporary errors:
// the delay starts at acceptRetryMin, doubles on each failure up to
// acceptRetryMax and is reset by the next success.
const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
	// failureLogInterval is the least time between two log lines about
	// the same ongoing condition (accepts failing, connections refused),
	// so that retrying every second or refusing a flood does not flood
	// the log.
	failureLogInterval = 30 * time.Second
	// busyWriteTimeout bounds the write of the busy line: a fresh socket's
	// send buffer takes it at once, so this only guards the accept loop.
	busyWriteTimeout = time.Second
	// maxUnwrap bounds the walk down connection wrappers in
	// MarkAuthenticated.
	maxUnwrap = 16
)

// Reasons for refusing a connection, as reported to Observer.PreAuthRejected.
const (
	RejectListenerCap = events.PreAuthListenerCap
	RejectAddressCap  = events.PreAuthAddressCap
)

// Listener is a client listener of the relay (returned by Listen). It
// differs from the net.Listener it wraps in three ways:
//
//   - Accept never returns a temporary error. Every error but the
//     listener's close (too many open files, no buffer space, a connection
//     aborted before it was accepted...) is retried with a backoff from
//     5 ms to 1 s, logged at most every 30 s, and reported by Err until the
//     next accept succeeds. A server's accept loop therefore ends only when
//     the listener is closed, and /readyz can say why connections are not
//     being taken.
//   - It caps the connections that have not logged in yet, per listener and
//     per client address. A connection over a cap is refused at once: on a
//     listener without implicit TLS it is first sent the Busy line. A
//     session gives its slot back when it logs in (MarkAuthenticated) or
//     when the connection is closed.
//   - With implicit TLS it wraps each accepted connection in tls.Server
//     itself (the handshake runs on the session's first read or write), so
//     that the servers are always handed a *Listener.
//
// The exported fields are read at the first Accept and must not change
// afterwards. The protocol server sets Proto, Observer, Logger and Busy in
// its Serve; whoever creates the Listener may set the caps. Accept is meant
// for one goroutine; Err, Addr and Close are safe for concurrent use.
type Listener struct {
	// Proto names the protocol ("smtp", "imap") in logs and metrics.
	Proto events.Proto
	// Observer receives the pre-authentication gauge, caps and refusals;
	// nil: nothing is recorded.
	Observer Observer
	// Logger receives accept failures and refusals (give it the protocol:
	// the lines carry only the listener's address); nil discards them.
	Logger *slog.Logger
	// Busy is the line (without CRLF) sent to a connection refused over a
	// cap, such as "421 4.7.0 Too many connections, try again later".
	// Empty, or with implicit TLS (there is no session to speak in yet),
	// the connection is closed without a word.
	Busy string
	// MaxUnauthenticated caps the connections that have not logged in;
	// 0: DefaultMaxUnauthenticated; negative: no cap.
	MaxUnauthenticated int
	// MaxUnauthenticatedPerAddr caps them per client address (an IPv6
	// address counts by its /64, which one host usually holds whole);
	// 0: DefaultMaxUnauthenticatedPerAddr; negative: no cap.
	//
	// 127.0.0.1 and ::1 are exempt: every application on the relay's host
	// (or in a sidecar's pod) connects from there, so a per-address cap
	// would be a second, smaller listener cap for the relay's main use,
	// and a busy host sending many messages at once while the identity
	// platform is slow would be refused. The listener cap still bounds
	// them. Other loopback addresses (127.0.0.2...) are counted like any
	// client's.
	MaxUnauthenticatedPerAddr int

	ln        net.Listener
	tls       *tls.Config // non-nil: implicit TLS
	done      chan struct{}
	closeOnce sync.Once
	startOnce sync.Once
	set       settings // the exported fields, as read at the first Accept

	mu        sync.Mutex
	name      string             // "imap listener 127.0.0.1:1143", for Err
	unauth    int                // connections holding a slot
	perAddr   map[netip.Addr]int // slots by addrKey
	failErr   error              // the last accept error while accepts fail
	failSince time.Time          // first failure of the current run
	failures  int                // failed accepts in the current run
	failLog   logLimiter
	refuseLog logLimiter
}

// settings are a Listener's exported fields with their defaults applied.
type settings struct {
	proto            events.Proto
	obs              Observer
	log              *slog.Logger
	busy             string
	maxConns, maxPer int // 0: no cap
}

// NewListener wraps ln. With tc non-nil every accepted connection is
// wrapped in tls.Server(c, tc) (implicit TLS).
func NewListener(ln net.Listener, tc *tls.Config) *Listener {
	return &Listener{ln: ln, tls: tc, done: make(chan struct{}), perAddr: make(map[netip.Addr]int)}
}

// start reads the exported fields once and reports the caps.
func (l *Listener) start() {
	s := settings{proto: l.Proto, obs: l.Observer, log: l.Logger, busy: l.Busy}
	if s.obs == nil {
		s.obs = events.Nop{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("addr", l.ln.Addr().String())
	s.maxConns = capOf(l.MaxUnauthenticated, DefaultMaxUnauthenticated)
	s.maxPer = capOf(l.MaxUnauthenticatedPerAddr, DefaultMaxUnauthenticatedPerAddr)
	l.set = s
	name := "listener " + l.ln.Addr().String()
	if s.proto != "" {
		name = string(s.proto) + " " + name
	}
	l.mu.Lock()
	l.name = name
	l.mu.Unlock()
	s.obs.PreAuthLimits(s.proto, s.maxConns, s.maxPer)
}

// capOf applies a cap field's default: 0 is def, negative is no cap (0).
func capOf(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// Accept waits for the next connection that may be served. It returns an
// error only once the listener is closed (one that matches net.ErrClosed).
func (l *Listener) Accept() (net.Conn, error) {
	l.startOnce.Do(l.start)
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.isClosed() {
				return nil, l.closedErr()
			}
			delay = min(max(2*delay, acceptRetryMin), acceptRetryMax)
			l.acceptFailed(err, delay)
			if !l.sleep(delay) {
				return nil, l.closedErr()
			}
			continue
		}
		delay = 0
		l.acceptSucceeded()
		if pc := l.admit(c); pc != nil {
			if l.tls != nil {
				return tls.Server(pc, l.tls), nil
			}
			return pc, nil
		}
	}
}

// Close stops accepting; Accept returns at once, even during a backoff.
// Connections already accepted are not touched.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.ln.Close()
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Err says why the listener is not accepting connections, such as "imap
// listener 127.0.0.1:1143: accept: accept4: too many open files since
// 12:00:01"; nil while accepts succeed (it is cleared by the next accepted
// connection). The error wraps the accept error (errors.Is(err,
// syscall.EMFILE) holds).
func (l *Listener) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failErr == nil {
		return nil
	}
	err := l.failErr
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	return fmt.Errorf("%s: accept: %w since %s", l.name, err, l.failSince.Format(time.TimeOnly))
}

func (l *Listener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *Listener) closedErr() error {
	return &net.OpError{Op: "accept", Net: l.ln.Addr().Network(), Addr: l.ln.Addr(), Err: net.ErrClosed}
}

// sleep waits d; false if the listener was closed meanwhile.
func (l *Listener) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.done:
		return false
	}
}

// acceptFailed records a failed accept for Err and logs it, rate-limited.
func (l *Listener) acceptFailed(err error, delay time.Duration) {
	now := time.Now()
	l.mu.Lock()
	if l.failErr == nil {
		l.failSince = now
		l.failures = 0
	}
	l.failErr = err
	l.failures++
	failures, since := l.failures, l.failSince
	ok, suppressed := l.failLog.allow(now)
	l.mu.Unlock()
	if ok {
		l.set.log.Warn("accepting connections fails; retrying", "err", err,
			"failing_since", since.Format(time.TimeOnly), "attempts", failures, "retry_in", delay.String(),
			"not_logged", suppressed)
	}
}

// acceptSucceeded clears Err after failures and logs the recovery.
func (l *Listener) acceptSucceeded() {
	l.mu.Lock()
	if l.failErr == nil {
		l.mu.Unlock()
		return
	}
	failures, since := l.failures, l.failSince
	l.failErr, l.failures = nil, 0
	l.failLog = logLimiter{}
	l.mu.Unlock()
	l.set.log.Info("accepting connections again", "failed_attempts", failures,
		"failed_for", time.Since(since).Round(time.Millisecond).String())
}

// admit takes a pre-authentication slot for c, or refuses c (nil) when a
// cap is reached.
func (l *Listener) admit(c net.Conn) *conn {
	key, perAddr := addrKey(AddrOf(c.RemoteAddr()))
	var reason events.PreAuthReason
	l.mu.Lock()
	switch {
	case l.set.maxConns > 0 && l.unauth >= l.set.maxConns:
		reason = RejectListenerCap
	case perAddr && l.set.maxPer > 0 && l.perAddr[key] >= l.set.maxPer:
		reason = RejectAddressCap
	default:
		l.unauth++
		if perAddr {
			l.perAddr[key]++
		}
	}
	var logIt bool
	var suppressed int
	if reason != "" {
		logIt, suppressed = l.refuseLog.allow(time.Now())
	}
	l.mu.Unlock()
	if reason != "" {
		l.refuse(c, reason, logIt, suppressed)
		return nil
	}
	l.set.obs.Unauthenticated(l.set.proto, 1)
	return &conn{Conn: c, l: l, key: key, perAddr: perAddr}
}

// refuse sends the busy line (not on implicit TLS) and closes c.
func (l *Listener) refuse(c net.Conn, reason events.PreAuthReason, logIt bool, suppressed int) {
	l.set.obs.PreAuthRejected(l.set.proto, reason)
	if logIt {
		l.set.log.Warn("connection refused: too many clients have not logged in", "reason", reason, "remote", c.RemoteAddr().String(), "max", l.set.maxConns,
			"max_per_addr", l.set.maxPer, "not_logged", suppressed)
	}
	if l.tls == nil && l.set.busy != "" {
		c.SetWriteDeadline(time.Now().Add(busyWriteTimeout))
		io.WriteString(c, l.set.busy+"\r\n")
	}
	c.Close()
}

// release gives back the slot of a connection that logged in or closed.
func (l *Listener) release(key netip.Addr, perAddr bool) {
	l.mu.Lock()
	l.unauth--
	if perAddr {
		if n := l.perAddr[key] - 1; n > 0 {
			l.perAddr[key] = n
		} else {
			delete(l.perAddr, key)
		}
	}
	l.mu.Unlock()
	l.set.obs.Unauthenticated(l.set.proto, -1)
}

// addrKey is what the per-address cap counts a client address by: the
// address, or its /64 for IPv6. perAddr is false for the exempt loopback
// addresses 127.0.0.1 and ::1 (see MaxUnauthenticatedPerAddr).
func addrKey(a netip.Addr) (key netip.Addr, perAddr bool) {
	a = a.Unmap()
	if a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a == netip.IPv6Loopback() {
		return a, false
	}
	if a.Is6() {
		p, err := a.WithZone("").Prefix(64)
		if err == nil {
			return p.Addr(), true
		}
	}
	return a, true
}

// conn is an accepted connection holding a pre-authentication slot until
// MarkAuthenticated or Close.
type conn struct {
	net.Conn
	l        *Listener
	key      netip.Addr
	perAddr  bool
	released atomic.Bool
}

// NetConn returns the wrapped connection (as tls.Conn's does), for code
// that needs the *net.TCPConn.
func (c *conn) NetConn() net.Conn { return c.Conn }

// Close closes the connection and gives back its slot.
func (c *conn) Close() error {
	c.release()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when the wrapped one can.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write of %T: %w", c.Conn, errors.ErrUnsupported)
}

func (c *conn) release() {
	if c.released.CompareAndSwap(false, true) {
		c.l.release(c.key, c.perAddr)
	}
}

// MarkAuthenticated tells c's Listener that the client logged in: its
// pre-authentication slot is given back (once; closing the connection does
// nothing more). c may be the connection the Listener returned or any
// wrapper of it that unwraps with NetConn() (*tls.Conn, or a protocol
// server's own wrapper). On a connection that did not come from a Listener
// it does nothing.
func MarkAuthenticated(c net.Conn) {
	for range maxUnwrap {
		switch v := c.(type) {
		case *conn:
			v.release()
			return
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return
		}
	}
}

// logLimiter lets one log line through per failureLogInterval and counts
// the ones it held back.
type logLimiter struct {
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many lines were held back
// since the last one logged.
func (r *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	if !r.last.IsZero() && now.Sub(r.last) < failureLogInterval {
		r.suppressed++
		return false, 0
	}
	suppressed, r.last, r.suppressed = r.suppressed, now, 0
	return true, suppressed
}
