// Package preauth is the machinery of a front end that speaks its protocol
// itself until the app has logged in and then copies bytes both ways (IMAP
// and POP3): the server's lifecycle (accept through a proxy.Listener,
// Shutdown that ends the sessions that have not logged in, Close), one
// connection's I/O before login (bounded lines through its buffered reader,
// write deadlines, implicit TLS, STARTTLS/STLS with pipelined plaintext
// dropped, TCP keepalive), the login path every such front end shares
// (Relay.Login, the account's upstream login for the protocol, the
// observer, the listener's pre-authentication slot given back) and the
// byte copy after it (splice.Start).
//
// A front end holds only its protocol: the commands it accepts before login,
// the texts of its replies and the mapping of a proxy.Failure to its reply;
// it calls Conn.Login with the upstream login of its protocol
// (upstream.IMAP, upstream.POP3).
//
// Out of scope: parsing any protocol, and anything after login but the copy.
package preauth

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("server closed")

// Protocol is what a front end tells its Server.
type Protocol struct {
	// Proto names the protocol in logs, metrics and upstream targets.
	Proto events.Proto
	// Busy is the line (without CRLF) sent to a connection the listener
	// refuses because too many have not logged in.
	Busy string
	// Serve runs one session on c after its implicit TLS handshake (if
	// any); when it returns, the connection is closed.
	Serve func(c *Conn)
}

// Server serves one listener of a front end.
type Server struct {
	relay *proxy.Relay
	lc    config.Listener
	tls   *tls.Config // nil when lc.TLS is none
	log   *slog.Logger
	proto Protocol

	// PreAuthTimeout is how long a client that has not logged in may take
	// to send its next line; the front end sets its protocol's value and
	// tests shorten it. It must not change once Serve runs.
	PreAuthTimeout time.Duration

	// ctx is cancelled by Close: it bounds logins in progress.
	ctx    context.Context
	cancel context.CancelFunc

	shutdown atomic.Bool // Shutdown or Close was called

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*Conn]struct{}
	wg        sync.WaitGroup // one per session, done when it ends (Conn.end)
}

// NewServer builds the server of listener lc. With lc.TLS "starttls" or
// "implicit" it loads the certificate.
func NewServer(relay *proxy.Relay, lc config.Listener, p Protocol) (*Server, error) {
	tc, err := proxy.ServerTLS(lc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		relay: relay,
		lc:    lc,
		tls:   tc,
		log:   relay.Logger().With("proto", string(p.Proto)),
		proto: p,

		PreAuthTimeout: DefaultPreAuthTimeout,
		ctx:            ctx,
		cancel:         cancel,
		listeners:      make(map[net.Listener]struct{}),
		conns:          make(map[*Conn]struct{}),
	}, nil
}

// Relay is the relay the server logs in through.
func (s *Server) Relay() *proxy.Relay { return s.relay }

// Listener is the server's listener configuration.
func (s *Server) Listener() config.Listener { return s.lc }

// ShuttingDown reports whether Shutdown or Close was called.
func (s *Server) ShuttingDown() bool { return s.shutdown.Load() }

// Serve accepts connections on ln until Shutdown or Close and serves each in
// its own goroutine. ln is used through a *proxy.Listener (one is wrapped
// around any other listener), so that accept errors such as "too many open
// files" are retried instead of ending Serve, and connections that have not
// logged in are capped. With lc.TLS "implicit", connections that are not
// already TLS (proxy.Listen wraps them itself) get a TLS handshake first.
// It always returns a non-nil error: ErrServerClosed after Shutdown or
// Close.
func (s *Server) Serve(ln net.Listener) error {
	pl, ok := ln.(*proxy.Listener)
	if !ok {
		pl = proxy.NewListener(ln, nil)
	}
	pl.Proto, pl.Observer, pl.Logger, pl.Busy = s.proto.Proto, s.relay.Observer(), s.log, s.proto.Busy

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		pl.Close()
		return ErrServerClosed
	}
	s.listeners[pl] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, pl)
		s.mu.Unlock()
		pl.Close()
	}()

	for {
		// A proxy.Listener returns an error only once it is closed.
		nc, err := pl.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			return err
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn runs one session: counted, its implicit TLS handshake, the
// front end's Serve, a panic logged. A session that logged in goes on in
// the copy's goroutines (Conn.Pipe), which end it; any other ends here.
func (s *Server) serveConn(c *Conn) {
	s.relay.Observer().Connection(s.proto.Proto, 1)
	defer func() {
		if v := recover(); v != nil {
			c.Log.Error("panic in session", "panic", v, "stack", string(debug.Stack()))
		}
		if !c.spliced {
			c.end()
		}
	}()
	c.Log.Debug("connected")
	if !c.start() {
		return
	}
	s.proto.Serve(c)
	if c.werr != nil {
		c.Log.Debug("write failed", "err", c.werr)
	}
}

// end ends the session of c, on the last goroutine that served it: the
// connections closed, the count and the server's bookkeeping given back.
func (c *Conn) end() {
	c.close()
	s := c.srv
	s.relay.Observer().Connection(s.proto.Proto, -1)
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	close(c.ended)
	s.wg.Done()
}

// Shutdown stops accepting connections, interrupts every session that has
// not logged in (its front end says goodbye: Conn.Wait returns false), and
// waits for the logged-in (proxied) sessions to end by themselves. When ctx
// is done first, the remaining connections are closed and ctx's error is
// returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	s.mu.Lock()
	for c := range s.conns {
		c.interrupt()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done // Close waited for the sessions: the waiter is ending
		return ctx.Err()
	}
}

// Close stops accepting connections, closes every connection (client and
// upstream) at once and waits for the sessions' goroutines to return.
func (s *Server) Close() error {
	s.stopAccepting()
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) stopAccepting() {
	s.shutdown.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
}

// ServeConn serves one connection that did not come through Serve (a
// test's end of a pipe, given another remote address) as Serve would serve
// it, and returns when its session has ended; Close reaches it too.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.serveConn(c)
	<-c.ended
}
