// Package smtp is oauthrelay's SMTP front end: a go-smtp server that offers
// AUTH PLAIN and LOGIN to the legacy app, logs in to the provider's SMTP
// server with XOAUTH2 before answering the app's AUTH (so the app sees the
// truth at AUTH time), and relays MAIL, RCPT and DATA one by one, passing
// the upstream's replies back unchanged. DATA is streamed: memory does not
// grow with the message.
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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// readTimeout bounds each read from the app (RFC 5321 §4.5.3.2
	// suggests 5 minutes for commands).
	readTimeout = 5 * time.Minute
	// writeTimeout bounds each write to the app.
	writeTimeout = time.Minute
	// loginTimeout bounds a whole login: token, dial, XOAUTH2.
	loginTimeout = 90 * time.Second
	// probeTimeout bounds the start-up EHLO that learns the upstream SIZE.
	probeTimeout = 10 * time.Second
	// quitTimeout bounds the polite QUIT when a session ends.
	quitTimeout = 10 * time.Second
	// localName is what the relay calls itself in EHLO upstream.
	localName = "localhost"
	// defaultMaxMessageBytes is what Exchange Online advertises, used when
	// no upstream answers the probe.
	defaultMaxMessageBytes = 157286400
)

// Server is the SMTP front end of one listener.
type Server struct {
	relay *proxy.Relay
	lc    config.Listener
	log   *slog.Logger
	smtp  *smtp.Server

	closeOnce sync.Once
}

// New builds the server for listener lc. It asks each provider's SMTP
// server for its SIZE limit (EHLO, no login) so the app is told the real
// limit; if none answers, Exchange Online's 150 MB is advertised.
func New(ctx context.Context, relay *proxy.Relay, lc config.Listener) (*Server, error) {
	tc, err := proxy.ServerTLS(lc)
	if err != nil {
		return nil, err
	}
	s := &Server{relay: relay, lc: lc, log: relay.Logger().With("proto", "smtp")}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain, _ = os.Hostname()
	if srv.Domain == "" {
		srv.Domain = "localhost"
	}
	if lc.TLS == "starttls" {
		srv.TLSConfig = tc
	}
	// AUTH is offered or refused per connection in AuthMechanisms/Auth, by
	// proxy.PlaintextAuthAllowed.
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = readTimeout
	srv.WriteTimeout = writeTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	// An app's AUTH PLAIN line is short, but leave room for long
	// addresses and parameters.
	srv.MaxLineLength = 4000
	srv.ErrorLog = slogErrorLog{s.log}
	srv.MaxMessageBytes = s.probeSize(ctx)
	s.smtp = srv
	return s, nil
}

// Serve accepts connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	err := s.smtp.Serve(ln)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets sessions finish until ctx is done, then
// closes the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.smtp.Shutdown(ctx)
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	if err != nil {
		s.smtp.Close()
	}
	return err
}

// Close closes the listener and every connection at once.
func (s *Server) Close() error {
	err := s.smtp.Close()
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
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
			size, err := probeUpstreamSize(ctx, s.relay, a)
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
