// Package imap is oauthrelay's IMAP front end. Before authentication the
// proxy speaks IMAP itself: the greeting, CAPABILITY, NOOP, LOGOUT, ID,
// STARTTLS, LOGIN (atoms, quoted strings, synchronising and
// non-synchronising literals) and AUTHENTICATE PLAIN (with or without
// SASL-IR, RFC 4959). After the app's local login it connects to the
// provider's IMAP server, logs in there with AUTHENTICATE XOAUTH2, answers
// the app's LOGIN or AUTHENTICATE ("LOGIN completed") with the upstream's
// capabilities, and from then on copies bytes both ways without parsing
// them, so every extension the upstream offers (IDLE, ID, QUOTA, CONDSTORE,
// SORT, THREAD, ...) reaches the app unchanged.
//
// Before login, other IMAP commands get BAD; a command that is not IMAP at
// all (an HTTP request sent to the port) ends the connection with BYE.
//
// Out of scope: running any other command before login, COMPRESS or other
// transformations of the stream after login (the byte copy passes them
// through untouched), and connection pooling upstream.
package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("imap: server closed")

// Server is the IMAP front end of one listener.
type Server struct {
	relay *proxy.Relay
	lc    config.Listener
	tls   *tls.Config // nil when lc.TLS is none
	log   *slog.Logger

	preAuthTimeout time.Duration // preAuthTimeout; tests shorten it

	// ctx is cancelled by Close: it bounds logins in progress.
	ctx    context.Context
	cancel context.CancelFunc

	shutdown atomic.Bool // Shutdown or Close was called

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup // one per session goroutine
}

// New builds the server for listener lc. With lc.TLS "starttls" or
// "implicit" it loads the certificate.
func New(relay *proxy.Relay, lc config.Listener) (*Server, error) {
	tc, err := proxy.ServerTLS(lc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		relay: relay,
		lc:    lc,
		tls:   tc,
		log:   relay.Logger().With("proto", "imap"),

		preAuthTimeout: preAuthTimeout,
		ctx:            ctx,
		cancel:         cancel,
		listeners:      make(map[net.Listener]struct{}),
		sessions:       make(map[*session]struct{}),
	}, nil
}

// busyLine greets a connection that a proxy.Listener refuses because too
// many have not logged in (RFC 9051 §7.1.5: BYE as the greeting when the
// server is unwilling to accept the connection).
const busyLine = "* BYE Too many connections, try again later"

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
	pl.Proto, pl.Observer, pl.Logger, pl.Busy = "imap", s.relay.Observer(), s.log, busyLine

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
		c, err := pl.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			return err
		}
		sess := newSession(s, c)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.sessions, sess)
				s.mu.Unlock()
			}()
			sess.serve()
		}()
	}
}

// Shutdown stops accepting connections, says "* BYE Server shutting down"
// to every client that has not logged in, and waits for the logged-in
// (proxied) sessions to end by themselves. When ctx is done first, the
// remaining connections are closed and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	s.mu.Lock()
	for sess := range s.sessions {
		sess.interrupt()
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
	for sess := range s.sessions {
		sess.close()
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
