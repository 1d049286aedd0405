// Package smtp is oauthrelay's SMTP front end: a go-smtp server that offers
// AUTH PLAIN and LOGIN to the legacy app, logs in to the provider's SMTP
// server with XOAUTH2 before answering the app's AUTH (so the app sees the
// truth at AUTH time), and relays MAIL, RCPT and DATA one by one, passing
// the upstream's replies back unchanged. DATA is streamed: memory does not
// grow with the message.
//
// Reading from the app is the wire's (wire.go), not go-smtp's: it hands
// go-smtp complete command lines only, reads DATA bodies itself (RFC 5321
// §4.5.2 transparency), bounds idle time per read (CommandTimeout,
// DataTimeout) and each command line (LineTimeout), performs STARTTLS, and
// ends the connection with 421 on any failure in the middle of a message:
// a message is acknowledged only when all of it arrived.
//
// With enforce_header_from, the From header of a message must match
// allowed_from too (headerfrom.go).
//
// Clients listed in an account's relay_from may submit without AUTH; the
// account is then chosen per transaction from the client address and MAIL
// FROM. MAIL FROM is always checked against the account's allowed_from: the
// relay is never open.
//
// Out of scope here: spooling (a later "queue" delivery mode) and BINARYMIME
// (go-smtp's client cannot send BDAT, so BDAT from the app becomes DATA
// upstream and BINARYMIME is not offered).
package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// DefaultCommandTimeout is how long the relay waits for the app's next
	// command or the next bytes of one: RFC 5321 §4.5.3.2.7, "at least 5
	// minutes while it is awaiting the next command".
	DefaultCommandTimeout = 5 * time.Minute
	// DefaultLineTimeout bounds one command line from its first byte to its
	// end, whatever the pace of its bytes (a slowloris bound; RFC 5321 has
	// none, so the command timeout is applied to the whole line).
	DefaultLineTimeout = 5 * time.Minute
	// DefaultDataTimeout is the longest pause between two reads of message
	// data (DATA body or BDAT chunk): RFC 5321 §4.5.3.2.6 gives the client 3
	// minutes for each block it sends and §4.5.3.2.5 10 minutes to wait for
	// the reply after the end; the relay waits as long as the longest. The
	// whole transfer is not bounded: 150 MB over a slow link must go through.
	DefaultDataTimeout = 10 * time.Minute
	// shutdownIdleGrace is how long, while shutting down, a session that
	// has just finished a transaction may take for its next command (its
	// QUIT) before it is told errShuttingDown.
	shutdownIdleGrace = 2 * time.Second
	// tlsHandshakeTimeout bounds a TLS handshake (implicit or STARTTLS).
	tlsHandshakeTimeout = time.Minute
	// writeTimeout bounds each write to the app.
	writeTimeout = time.Minute
	// maxCommandLine is the longest command line, CRLF included: an app's
	// AUTH PLAIN line is short, but leave room for long addresses and
	// parameters (RFC 5321 §4.5.3.1.4 says 512 at least).
	maxCommandLine = 4000
	// loginTimeout bounds a whole login: token, dial, XOAUTH2.
	loginTimeout = 90 * time.Second
	// probeTimeout bounds the start-up EHLO that learns the upstream SIZE.
	probeTimeout = 10 * time.Second
	// defaultMaxMessageBytes is what Exchange Online advertises, used when
	// no upstream answers the probe.
	defaultMaxMessageBytes = 157286400
)

// Server is the SMTP front end of one listener.
//
// The timeouts are set to their defaults by New and may be changed before
// Serve.
type Server struct {
	// CommandTimeout is the idle bound between commands and between the
	// bytes of one.
	CommandTimeout time.Duration
	// LineTimeout bounds a command line from its first byte.
	LineTimeout time.Duration
	// DataTimeout is the idle bound inside a message.
	DataTimeout time.Duration

	relay *proxy.Relay
	lc    config.Listener
	log   *slog.Logger
	smtp  *smtp.Server

	// For a STARTTLS listener: the TLS configuration (the wire performs
	// STARTTLS), and the go-smtp server that serves connections after the
	// upgrade, each on a fresh go-smtp connection (RFC 3207 §4.2: all state
	// is reset), without STARTTLS in its EHLO.
	tlsConfig  *tls.Config
	tlsSMTP    *smtp.Server
	handoff    *handoffListener
	handoffRun sync.Once
	handoffWG  sync.WaitGroup

	// ctx bounds every login and transaction; Close cancels it, which
	// interrupts the upstream exchanges in progress.
	ctx    context.Context
	cancel context.CancelFunc

	// stopOnce starts the one call of each go-smtp server's Shutdown: it
	// is the only go-smtp call that waits for the server's connection
	// goroutines (its Close does not, and does nothing after a Shutdown).
	// stopped is closed when every connection goroutine of both servers
	// has returned; stopErr is then what closing their listeners returned.
	// Close waits for stopped: that is what joins the connections.
	stopOnce sync.Once
	stopped  chan struct{}
	stopErr  error

	mu        sync.Mutex
	wires     map[*wire]struct{}
	listeners []net.Listener // those Serve was given, closed by stop
	stopping  bool
	closed    bool // closeWires ran: a connection accepted now is closed at once
}

// New builds the server for listener lc. It asks each provider's SMTP
// server for its SIZE limit (EHLO, no login) so the app is told the real
// limit; if none answers, Exchange Online's 150 MB is advertised.
func New(ctx context.Context, relay *proxy.Relay, lc config.Listener) (*Server, error) {
	tc, err := proxy.ServerTLS(lc)
	if err != nil {
		return nil, err
	}
	s := &Server{
		CommandTimeout: DefaultCommandTimeout,
		LineTimeout:    DefaultLineTimeout,
		DataTimeout:    DefaultDataTimeout,
		relay:          relay,
		lc:             lc,
		log:            relay.Logger().With("proto", "smtp"),
		wires:          make(map[*wire]struct{}),
		stopped:        make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	size := s.probeSize(ctx)
	s.smtp = s.newGoSMTP(size)
	if lc.TLS == "starttls" {
		// Set only so that EHLO offers STARTTLS: the wire performs it.
		s.smtp.TLSConfig = tc
		s.tlsConfig = tc
		s.tlsSMTP = s.newGoSMTP(size)
		s.handoff = newHandoffListener(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	}
	return s, nil
}

// newGoSMTP configures a go-smtp server for this front end.
func (s *Server) newGoSMTP(maxMessageBytes int64) *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain, _ = os.Hostname()
	if srv.Domain == "" {
		srv.Domain = "localhost"
	}
	// AUTH is offered or refused per connection in AuthMechanisms/Auth, by
	// proxy.PlaintextAuthAllowed.
	srv.AllowInsecureAuth = true
	// Reads are bounded by the wire (idle per read, not per command line):
	// go-smtp's ReadTimeout would cut a long DATA after 5 minutes.
	srv.ReadTimeout = 0
	srv.WriteTimeout = writeTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	// The wire enforces maxCommandLine first; go-smtp's own limit is only a
	// backstop.
	srv.MaxLineLength = maxCommandLine + 16
	srv.ErrorLog = slogErrorLog{s.log}
	srv.MaxMessageBytes = maxMessageBytes
	return srv
}

// Serve accepts connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	if s.tlsSMTP != nil {
		s.handoffRun.Do(func() {
			s.handoffWG.Add(1)
			go func() {
				defer s.handoffWG.Done()
				s.tlsSMTP.Serve(s.handoff)
			}()
		})
	}
	pl, ok := ln.(*proxy.Listener)
	if !ok {
		// Accept errors are retried and unauthenticated clients capped
		// by proxy.Listener: every listener goes through one.
		pl = proxy.NewListener(ln, nil)
	}
	pl.Proto, pl.Observer, pl.Logger, pl.Busy = "smtp", s.relay.Observer(), s.log, busyLine
	if !s.register(pl) {
		return nil
	}
	err := s.smtp.Serve(wireListener{Listener: pl, srv: s})
	if errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, net.ErrClosed) && s.stopRequested() {
		return nil
	}
	return err
}

// register records ln for stop to close: go-smtp closes only the listeners
// its Serve has registered, so a Shutdown or Close that ran first would
// leave this Serve accepting for ever. Once stopping it closes ln instead
// and returns false.
func (s *Server) register(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping || s.closed {
		ln.Close()
		return false
	}
	s.listeners = append(s.listeners, ln)
	return true
}

// stopRequested reports whether Shutdown or Close was called.
func (s *Server) stopRequested() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping || s.closed
}

// Shutdown stops accepting and tells idle sessions (waiting for a command
// outside a transaction) 421 errShuttingDown at once; sessions in the middle
// of a command or a transaction finish it, and are told after
// shutdownIdleGrace without a next command. At ctx's end the rest are
// closed and ctx's error is returned; Close then waits for them.
//
// New connections cannot be told anything: go-smtp closes the listener,
// so the kernel refuses them. Only a connection accepted in the moment
// before gets errShuttingDown, after the grace.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	for w := range s.wires {
		w.shutdown()
	}
	s.mu.Unlock()
	s.stop()
	select {
	case <-s.stopped:
		s.handoffWG.Wait()
		return s.stopErr
	case <-ctx.Done():
		// go-smtp's Close does nothing after its Shutdown: close the
		// connections left here. Close joins them.
		s.closeWires()
		return ctx.Err()
	}
}

// Close closes the listener and every connection at once, and returns when
// every connection goroutine has.
func (s *Server) Close() error {
	// The sockets first, so that every session's read fails now; then the
	// upstream exchanges in progress are interrupted. go-smtp's Close is
	// not used: it would not wait for the connection goroutines.
	s.closeWires()
	s.cancel()
	s.stop()
	<-s.stopped
	s.handoffWG.Wait()
	return s.stopErr
}

// stop closes the listeners Serve was given and the handoff listener (the
// STARTTLS server's Serve may not have registered it yet), then runs, once,
// go-smtp's Shutdown of both servers in the background, which waits for
// their connection goroutines. s.stopped is closed when both returned.
// Shutdown and Close set stopping or closed first, so no Serve registers a
// listener after this.
func (s *Server) stop() {
	s.stopOnce.Do(func() {
		var closeErrs []error
		s.mu.Lock()
		for _, ln := range s.listeners {
			closeErrs = append(closeErrs, ln.Close())
		}
		s.mu.Unlock()
		servers := []*smtp.Server{s.smtp}
		if s.tlsSMTP != nil {
			servers = append(servers, s.tlsSMTP)
			s.handoff.Close()
		}
		go func() {
			defer close(s.stopped)
			errs := make([]error, len(servers))
			var wg sync.WaitGroup
			for i, srv := range servers {
				wg.Go(func() {
					// Not bounded: Shutdown and Close bound the wait, by
					// closing the connections and cancelling s.ctx.
					errs[i] = srv.Shutdown(context.Background())
					// It closes the listeners again.
					if errors.Is(errs[i], smtp.ErrServerClosed) || errors.Is(errs[i], net.ErrClosed) {
						errs[i] = nil
					}
				})
			}
			wg.Wait()
			s.stopErr = errors.Join(append(closeErrs, errs...)...)
		}()
	})
}

// closeWires closes every client connection still open, and any accepted
// from now on.
func (s *Server) closeWires() {
	s.mu.Lock()
	s.closed = true
	ws := make([]*wire, 0, len(s.wires))
	for w := range s.wires {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	for _, w := range ws {
		w.closeTransport()
	}
}

// track registers a new connection, for Shutdown. One accepted while
// shutting down is told so at its first command.
func (s *Server) track(w *wire) {
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wires[w] = struct{}{}
		if s.stopping {
			w.shutdown()
		}
	}
	s.mu.Unlock()
	if closed {
		// Accepted as Close ran: its go-smtp connection ends at once.
		w.closeTransport()
	}
}

// forget unregisters a closed connection.
func (s *Server) forget(w *wire) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.wires, w)
}

// MaxMessageBytes is the SIZE advertised to apps.
func (s *Server) MaxMessageBytes() int64 { return s.smtp.MaxMessageBytes }

// probeSize returns the largest SIZE any provider's SMTP server advertises.
// The app is told the largest so no provider's mail is refused by the relay
// itself; a smaller provider limit is still enforced by that provider, whose
// 552 reaches the app unchanged.
func (s *Server) probeSize(ctx context.Context) int64 {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	seen := make(map[string]bool)
	var (
		mu      sync.Mutex
		largest int64
		wg      sync.WaitGroup
	)
	for _, a := range s.relay.Accounts() {
		p := a.ProviderRef
		if seen[p.Name] || p.SMTP.Addr == "" {
			continue
		}
		seen[p.Name] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			size, err := upstream.SMTPSize(ctx, a.Target(events.SMTP))
			if err != nil {
				s.log.Warn("could not learn the upstream SMTP size limit", "provider", p.Name, "addr", p.SMTP.Addr, "err", err)
				return
			}
			mu.Lock()
			largest = max(largest, size)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if largest == 0 {
		return defaultMaxMessageBytes
	}
	return largest
}

// slogErrorLog adapts go-smtp's error log to slog.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Printf(format string, v ...any) { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l slogErrorLog) Println(v ...any)               { l.log.Warn(fmt.Sprint(v...)) }
