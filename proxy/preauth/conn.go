package preauth

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// DefaultPreAuthTimeout is how long a client that has not logged in
	// may take to send its next line (imapserver allows 30 s; RFC 9051
	// §5.4 sets no minimum before login; RFC 1939 §3 asks POP3 servers
	// for at least ten minutes, which the upstream keeps after login). The
	// caps on unauthenticated connections need a short one.
	DefaultPreAuthTimeout = 60 * time.Second
	// writeTimeout bounds each write of a reply before login.
	writeTimeout = 30 * time.Second
	// tlsHandshakeTimeout bounds the local TLS handshake (implicit TLS and
	// STARTTLS/STLS).
	tlsHandshakeTimeout = 30 * time.Second
	// keepAliveIdle is the TCP keepalive idle time of the client
	// connection: after login there is no read deadline (IMAP IDLE lasts
	// 30 minutes and more; a POP3 app may think between RETRs), so
	// keepalives find dead peers.
	keepAliveIdle = time.Minute
	// keepAliveInterval and keepAliveCount: a peer that answers none of
	// keepAliveCount probes sent keepAliveInterval apart is dead.
	keepAliveInterval = 15 * time.Second
	keepAliveCount    = 4
	// maxUnwrap bounds the walk down connection wrappers in setKeepAlive.
	maxUnwrap = 8
)

// Conn is one client connection of a front end before (and around) login.
// Its reading and writing methods belong to the session goroutine; Close
// and the Server's interrupt may come from others.
type Conn struct {
	srv *Server
	// ID is a short random session id for the log.
	ID string
	// Remote is the client's address.
	Remote net.Addr
	// Log carries the session id and the remote address.
	Log *slog.Logger

	// Owned by the session goroutine; conn is replaced after STARTTLS
	// (under mu, for close).
	conn    net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	isTLS   bool
	werr    error // first write error; the session ends
	spliced bool  // Pipe took the session over: its goroutines end it

	ended chan struct{} // closed by end

	mu       sync.Mutex
	up       net.Conn // upstream connection, once dialled
	proxying bool     // logged in: bytes are copied, no deadlines
	closed   bool
}

func newConn(srv *Server, nc net.Conn) *Conn {
	c := &Conn{srv: srv, ID: newID(), Remote: nc.RemoteAddr(), ended: make(chan struct{})}
	c.Log = srv.log.With("session", c.ID, "remote", c.Remote.String())
	c.setConn(nc)
	return c
}

// newID returns a short random session id for the log.
func newID() string {
	b := make([]byte, 5)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.EncodeToString(b))
}

// Server is the server the connection came to.
func (c *Conn) Server() *Server { return c.srv }

// Reader is the buffered reader of the client's bytes: a new one after
// StartTLS, nil once the copy has begun.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// TLS reports whether the connection is TLS now.
func (c *Conn) TLS() bool { return c.isTLS }

// Err is the first write error; once it is set the session should end.
func (c *Conn) Err() error { return c.werr }

// PlaintextOK reports whether the client may send a password now
// (proxy.PlaintextAuthAllowed).
func (c *Conn) PlaintextOK() bool {
	return proxy.PlaintextAuthAllowed(c.srv.lc, c.Remote, c.isTLS)
}

// StartTLSOffered reports whether the listener offers STARTTLS (STLS) and
// the connection is not TLS yet.
func (c *Conn) StartTLSOffered() bool { return c.srv.lc.TLS == config.TLSStartTLS && !c.isTLS }

func (c *Conn) setConn(nc net.Conn) {
	c.mu.Lock()
	c.conn = nc
	c.mu.Unlock()
	c.br = bufio.NewReader(nc)
	c.bw = bufio.NewWriter(nc)
}

// start runs the TLS handshake of an implicit-TLS connection and turns on
// TCP keepalive; false: the handshake failed and the session ends.
func (c *Conn) start() bool {
	if tc, ok := c.conn.(*tls.Conn); ok || c.srv.lc.TLS == config.TLSImplicit {
		if !ok {
			tc = tls.Server(c.conn, c.srv.tls)
			c.setConn(tc)
		}
		tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
		if err := tc.Handshake(); err != nil {
			c.Log.Debug("TLS handshake failed", "err", err)
			return false
		}
		c.isTLS = true
	}
	setKeepAlive(c.conn)
	return true
}

// Wait arms the pre-authentication read deadline before the next line is
// read. False means the server is shutting down: the front end says
// goodbye and ends. A Shutdown that comes after it moves the deadline to
// now (interrupt), so the read fails at once; the front end then finds
// ShuttingDown true.
func (c *Conn) Wait() bool {
	c.conn.SetReadDeadline(time.Now().Add(c.srv.PreAuthTimeout))
	return !c.srv.shutdown.Load()
}

// ReadLine reads one line of at most max octets (splice.ReadLine).
func (c *Conn) ReadLine(max int) ([]byte, error) { return splice.ReadLine(c.br, max) }

// WriteLine sends one line and flushes it. The first error sticks in Err.
func (c *Conn) WriteLine(line string) {
	if c.werr != nil {
		return
	}
	c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	c.werr = c.bw.Flush()
}

// StartTLS upgrades the connection after the front end said so (STARTTLS,
// STLS): plaintext the client pipelined after the command is dropped, the
// handshake runs, and from then on Reader reads TLS. False: the session
// ends (a write or the handshake failed).
func (c *Conn) StartTLS() bool {
	if c.werr != nil {
		return false
	}
	if n := c.br.Buffered(); n > 0 {
		// Plaintext sent after STARTTLS would be taken as if it had come
		// over TLS (command injection, CVE-2011-0411 style): drop it.
		c.Log.Warn("discarding plaintext pipelined after STARTTLS", "bytes", n)
		c.br.Discard(n)
	}
	tc := tls.Server(c.conn, c.srv.tls)
	tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		c.Log.Debug("STARTTLS handshake failed", "err", err)
		return false
	}
	tc.SetDeadline(time.Time{})
	c.setConn(tc)
	c.isTLS = true
	return true
}

// interrupt asks a session that has not logged in to end (Shutdown): its
// pending read fails at once and its front end sees ShuttingDown. Logged-in
// sessions are left alone.
func (c *Conn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.proxying && !c.closed {
		c.conn.SetReadDeadline(time.Now())
	}
}

// close closes the client and upstream connections. A TLS connection's
// socket is closed directly: tls.Conn.Close would first try to send
// close_notify, which can block for seconds on a peer that does not read,
// and Server.Close calls this with the server's lock held. (A clean end of
// the copy has already sent close_notify with CloseWrite.)
func (c *Conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	closeSocket(c.conn)
	if c.up != nil {
		closeSocket(c.up)
	}
}

func closeSocket(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn() // the proxy.Listener's connection: closing it frees its slot
	}
	c.Close()
}

// setUpstream registers the upstream connection so close reaches it.
func (c *Conn) setUpstream(up net.Conn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		up.Close()
		return net.ErrClosed
	}
	c.up = up
	return nil
}

// setKeepAlive turns on TCP keepalive on c's TCP connection, found under
// the wrappers (tls.Conn, proxy.Listener's) that unwrap with NetConn.
func setKeepAlive(c net.Conn) {
	for range maxUnwrap {
		switch v := c.(type) {
		case *net.TCPConn:
			v.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount})
			return
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return
		}
	}
}

// Truncate cuts s to at most n bytes, for logging what a client sent.
func Truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ReadEnd is why a read before login failed, for the front end's goodbye.
type ReadEnd int

const (
	// EndGone: the client closed the connection or it broke (logged).
	EndGone ReadEnd = iota
	// EndShutdown: the server is shutting down.
	EndShutdown
	// EndTimeout: the client was silent for PreAuthTimeout (logged).
	EndTimeout
)

// ReadFailed sorts the error of a read before login (one that is not the
// front end's own protocol error) and logs it at debug level.
func (c *Conn) ReadFailed(err error) ReadEnd {
	var ne net.Error
	switch {
	case c.srv.shutdown.Load():
		return EndShutdown
	case errors.As(err, &ne) && ne.Timeout():
		c.Log.Debug("pre-auth timeout")
		return EndTimeout
	case errors.Is(err, io.EOF):
		c.Log.Debug("client closed the connection")
	default:
		c.Log.Debug("read failed", "err", err)
	}
	return EndGone
}
