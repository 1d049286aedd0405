// Package fakems is a fake Microsoft 365 on loopback for tests, benchmarks and
// the `oauthrelay demo` command: an Entra ID token service (every grant the
// relay uses, refresh-token rotation, AADSTS error bodies, injectable failures
// and delays, plus an RFC 7662 introspection endpoint for Dovecot), Exchange
// Online SMTP submission on STARTTLS, IMAP and POP3 on implicit TLS. The mail
// servers validate XOAUTH2 tokens against the fake token service, answer with
// Exchange's replies and record what they receive, so tests can drive the
// relay end to end with real protocol clients.
//
// Permissions are Exchange's: an app-only token logs in only as the
// mailboxes its app has permission on (GrantApp, Options.AppGrants), a
// delegated token as its own user and, over IMAP, as the shared mailboxes
// that user has FullAccess on (AddSharedMailbox, GrantFullAccess), and MAIL
// FROM must be the mailbox logged in or one it has SendAs on (GrantSendAs;
// 550 5.7.60 otherwise).
//
// It is built from go-smtp and go-imap's in-memory server; where their
// replies differ from Exchange's, the connection wrappers in wire.go rewrite
// the reply lines, so clients see Microsoft's texts.
//
// Microsoft Graph's mail sending is served too (graph.go), over HTTPS.
//
// Out of scope: EWS, the rest of Graph, conditional access, consent prompts
// (every app is consented for every user), token signatures (access tokens
// are opaque; they only look like JWTs), and anything off loopback: all
// listeners are on 127.0.0.1 and the certificates come from a CA generated at
// Start.
package fakems

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-smtp"
)

// exchangeHost is the server name the fake puts in greetings and replies,
// shaped like the front-end names Exchange Online shows.
const exchangeHost = "SN4PR0201CA0041.namprd02.prod.outlook.com"

// Defaults that mirror Exchange Online.
const (
	defaultTenant          = "contoso.onmicrosoft.com"
	defaultMaxMessageBytes = 157286400 // EHLO SIZE of smtp.office365.com
	defaultAuthLineLimit   = 16 << 10
	defaultRefreshGrace    = time.Minute
)

// Options configures a fake. The zero value is a usable Microsoft 365.
type Options struct {
	// Logger receives one line per request, connection and login decision.
	// Tokens and passwords are never logged. Nil discards.
	Logger *slog.Logger

	// Tenant is the tenant in the endpoint URLs
	// ({BaseURL}/{Tenant}/oauth2/v2.0/...). Empty means
	// "contoso.onmicrosoft.com". "common" and "organizations" are accepted
	// as well, as Entra does.
	Tenant string

	// TokenLifetime is the access-token lifetime. Zero picks a random
	// lifetime between 60 and 90 minutes for each token, as Entra does; tests
	// set a few seconds to exercise refresh.
	TokenLifetime time.Duration

	// RefreshTokenGrace is how long a refresh token stays usable after it was
	// rotated (redeemed for a new one), so a client that lost the response
	// can retry. Zero means one minute; negative means none.
	RefreshTokenGrace time.Duration

	// DeviceCodeInterval is the polling interval (seconds) announced by the
	// device-code endpoint. Zero means 1 (Entra says 5; tests want speed).
	DeviceCodeInterval int

	// HTTPS serves the Entra endpoints over TLS with the generated CA
	// instead of plain HTTP; use Server.HTTPClient.
	HTTPS bool

	// SMTPMaxLineLength emulates a submission server with a short command
	// line (Dovecot submission-login): an AUTH line longer than this is
	// answered "500 5.5.2 Line too long" and the connection stays open, but
	// the same token sent after "334 " is accepted. Zero accepts AUTH lines
	// up to 16 KiB (longer ones get the same 500).
	SMTPMaxLineLength int

	// SMTPMaxMessageBytes is the EHLO SIZE and the DATA limit. Zero means
	// 157286400, as smtp.office365.com announces.
	SMTPMaxMessageBytes int64

	// SMTPLimits enforces Exchange Online's SMTP AUTH limits per mailbox
	// (limits.go), on Clock: 3 concurrent authenticated connections (the
	// 4th AUTH gets "432 4.3.2 Concurrent connections limit exceeded"),
	// 30 messages in any minute (the 31st DATA gets "432 4.3.2
	// STOREDRV.ClientSubmit; sender thread limit exceeded") and
	// RecipientsPerDay recipients in any 24 hours (the message that would
	// pass it gets "554 5.2.0
	// STOREDRV.Submission.Exception:SubmissionQuotaExceededException").
	// LimitReplies counts the refusals.
	SMTPLimits bool

	// RecipientsPerDay is the daily recipient quota SMTPLimits keeps. Zero
	// means 10,000, Exchange Online's.
	RecipientsPerDay int

	// RecipientsPerMessage is how many RCPTs one message may have; the
	// next gets "452 4.5.3 Too many recipients" (counted in LimitReplies),
	// with or without SMTPLimits. Zero means 500, Exchange Online's default
	// (tenants may set 1 to 1,000).
	RecipientsPerMessage int

	// Clock is the time SMTPLimits are kept by; nil is the system clock.
	// Benchmarks pass a clock that runs faster than real time (a
	// *delivery.ScaledClock), so a burst against 30 messages a minute
	// drains in seconds; the relay under test must keep its own limits on
	// a clock of the same speed.
	Clock Clock

	// SMTPLoginLatency delays the greeting and the reply to AUTH of every
	// SMTP connection, each by this much: what a new connection to
	// Exchange Online costs over the internet (TCP, TLS and XOAUTH2 take
	// tens of milliseconds) and a fake on loopback does not, for
	// benchmarks of a relay that keeps its upstream sessions. Zero adds
	// nothing.
	SMTPLoginLatency time.Duration

	// SMTPReplyLatency delays every SMTP reply after the greeting (EHLO,
	// STARTTLS, MAIL, RCPT, DATA, RSET..., and AUTH's on top of
	// SMTPLoginLatency) by this much: the round trip of a command to
	// Exchange. Zero adds nothing.
	SMTPReplyLatency time.Duration

	// DiscardData keeps only the size and SHA-256 of received messages, for
	// benchmarks that send 100 MB messages. By default the data is kept.
	DiscardData bool

	// AppGrants are the mailboxes each app (by client ID) has permission
	// on at Start, as GrantApp gives them: its app-only tokens log in as
	// those mailboxes and are refused for every other (SMTP "535 5.7.3
	// Authentication unsuccessful", IMAP "NO AUTHENTICATE failed.").
	AppGrants map[string][]string

	// IMAPNotConnected makes an app-only IMAP login to a mailbox the app
	// has no permission on succeed, and every command after it fail with
	// "BAD User is authenticated but not connected.": what Exchange Online
	// does in the field. By default the login itself is refused.
	IMAPNotConnected bool
}

// Server is a running fake. Its fields are read-only after Start; all methods
// are safe for concurrent use.
type Server struct {
	// BaseURL stands for https://login.microsoftonline.com, e.g.
	// "http://127.0.0.1:41234" (https with Options.HTTPS).
	BaseURL string
	// Tenant is the tenant in the endpoint URLs.
	Tenant string
	// TokenURL, AuthorizeURL and DeviceURL are the Entra v2 endpoints;
	// IntrospectURL is an RFC 7662 endpoint Entra does not have, for
	// Dovecot's oauth2 passdb (see handleIntrospect).
	TokenURL, AuthorizeURL, DeviceURL, IntrospectURL string
	// DeviceLoginURL is the verification_uri of the device flow; a browser
	// can approve a code there.
	DeviceLoginURL string

	// SMTPAddr is smtp.office365.com:587: plain TCP, STARTTLS required.
	SMTPAddr string
	// IMAPAddr is outlook.office365.com:993: implicit TLS.
	IMAPAddr string
	// POP3Addr is outlook.office365.com:995: implicit TLS (pop3.go).
	POP3Addr string
	// GraphURL stands for https://graph.microsoft.com (HTTPS with the
	// generated CA; see graph.go), e.g. "https://127.0.0.1:41235".
	GraphURL string

	// CAFile is the PEM file of the generated CA, in a temporary directory
	// that Close removes. CAPool holds the same CA.
	CAFile string
	CAPool *x509.CertPool

	opts   Options
	log    *slog.Logger
	pki    *pki
	tmpDir string
	clock  Clock // opts.Clock or the system clock

	httpSrv  *http.Server
	graphSrv *http.Server
	graph    *graphState
	smtpSrv  *smtp.Server
	imapSrv  *imapserver.Server
	// listeners are closed by Close as well: a Serve that has not yet
	// registered its listener with its server would otherwise never return.
	listeners []net.Listener
	wg        sync.WaitGroup // the Serve goroutines
	pop3Conns sync.WaitGroup // the POP3 connections' goroutines
	conns     *connSet       // the connections being served (lifetime.go)

	closeOnce sync.Once
	closed    chan struct{}
	closeErr  error
	// stopCtx stops the AfterFunc that closes the fake when Start's ctx
	// ends; if that has begun, Close waits for afterDone, its end.
	stopCtx   func() bool
	stopOnce  sync.Once
	afterDone chan struct{}

	// mu guards dir, the tenant and organisation state, which the HTTP,
	// SMTP and IMAP handlers and the test-facing methods all share, and
	// limitCounts. It is never held across network I/O.
	mu          sync.Mutex
	limitCounts LimitCounts
	// peakSMTPConns is the most authenticated SMTP sessions one mailbox
	// held at once (SMTPLimits); smtpLogins the successful AUTHs.
	peakSMTPConns, smtpLogins int
	dir
}

// Start listens on four loopback ports (HTTP, SMTP, IMAP, POP3) and serves until
// Close is called or ctx is done.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	if opts.Tenant == "" {
		opts.Tenant = defaultTenant
	}
	if opts.SMTPMaxMessageBytes == 0 {
		opts.SMTPMaxMessageBytes = defaultMaxMessageBytes
	}
	if opts.RefreshTokenGrace == 0 {
		opts.RefreshTokenGrace = defaultRefreshGrace
	}
	if opts.DeviceCodeInterval <= 0 {
		opts.DeviceCodeInterval = 1
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fakems: start: %w", err)
	}

	s := &Server{
		Tenant:    opts.Tenant,
		opts:      opts,
		log:       logger,
		closed:    make(chan struct{}),
		afterDone: make(chan struct{}),
		conns:     newConnSet(),
		dir:       newDir(),
		clock:     opts.Clock,
		graph:     newGraphState(),
	}
	if s.clock == nil {
		s.clock = realClock{}
	}
	for app, mailboxes := range opts.AppGrants {
		for _, mb := range mailboxes {
			s.GrantApp(app, mb)
		}
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	if s.pki, err = newPKI(); err != nil {
		return nil, err
	}
	s.CAPool = s.pki.caPool
	if s.tmpDir, err = os.MkdirTemp("", "fakems-"); err != nil {
		return nil, fmt.Errorf("fakems: temp dir: %w", err)
	}
	if s.CAFile, err = s.pki.writeCAFile(s.tmpDir); err != nil {
		return nil, err
	}

	var lc net.ListenConfig
	listen := func(what string) (net.Listener, error) {
		ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("fakems: listen for %s: %w", what, err)
		}
		s.listeners = append(s.listeners, ln)
		return ln, nil
	}

	httpLn, err := listen("Entra endpoints")
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if opts.HTTPS {
		scheme = "https"
		httpLn = tls.NewListener(httpLn, s.pki.serverTLSConfig())
	}
	s.BaseURL = scheme + "://" + httpLn.Addr().String()
	prefix := s.BaseURL + "/" + s.Tenant + "/oauth2/v2.0/"
	s.TokenURL = prefix + "token"
	s.AuthorizeURL = prefix + "authorize"
	s.DeviceURL = prefix + "devicecode"
	s.IntrospectURL = prefix + "introspect"
	s.DeviceLoginURL = s.BaseURL + "/devicelogin"
	s.httpSrv = &http.Server{
		Handler:           s.entraHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ConnState:         s.conns.httpState,
	}
	s.goServe("http", func() error { return s.httpSrv.Serve(httpLn) })

	graphLn, err := listen("Graph")
	if err != nil {
		return nil, err
	}
	s.GraphURL = "https://" + graphLn.Addr().String()
	s.graphSrv = &http.Server{
		Handler:           s.graphHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		ConnState:         s.conns.httpState,
	}
	s.goServe("graph", func() error { return s.graphSrv.Serve(tls.NewListener(graphLn, s.pki.serverTLSConfig())) })

	smtpLn, err := listen("SMTP")
	if err != nil {
		return nil, err
	}
	s.SMTPAddr = smtpLn.Addr().String()
	s.smtpSrv = s.newSMTPServer()
	s.goServe("smtp", func() error { return s.smtpSrv.Serve(s.wrapSMTPListener(smtpLn)) })

	imapLn, err := listen("IMAP")
	if err != nil {
		return nil, err
	}
	s.IMAPAddr = imapLn.Addr().String()
	s.imapSrv = s.newIMAPServer()
	s.goServe("imap", func() error { return s.imapSrv.Serve(s.wrapIMAPListener(imapLn)) })

	pop3Ln, err := listen("POP3")
	if err != nil {
		return nil, err
	}
	s.POP3Addr = pop3Ln.Addr().String()
	s.goServe("pop3", func() error { return s.servePOP3(pop3Ln) })

	s.stopCtx = context.AfterFunc(ctx, func() {
		defer close(s.afterDone)
		s.shutdown()
	})
	logger.Info("fakems started", "base_url", s.BaseURL, "graph", s.GraphURL, "smtp", s.SMTPAddr, "imap", s.IMAPAddr, "pop3", s.POP3Addr, "tenant", s.Tenant)
	return s, nil
}

func (s *Server) goServe(name string, serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := serve()
		select {
		case <-s.closed:
		default:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("fakems: server stopped", "server", name, "err", err)
			}
		}
	}()
}

// Close stops the listeners, drops every connection and removes CAFile. It is
// idempotent, and returns when every goroutine of the fake has: the Serve
// goroutines, each connection's, and the one that closes the fake when
// Start's ctx ends.
func (s *Server) Close() error {
	s.stopOnce.Do(func() {
		if s.stopCtx != nil && !s.stopCtx() {
			<-s.afterDone // ctx ended first: its shutdown is running or ran
		}
	})
	return s.shutdown()
}

// shutdown is Close but for the AfterFunc goroutine, which runs it.
func (s *Server) shutdown() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		var errs []error
		if s.httpSrv != nil {
			errs = append(errs, s.httpSrv.Close())
		}
		if s.graphSrv != nil {
			errs = append(errs, s.graphSrv.Close())
		}
		for _, ln := range s.listeners {
			_ = ln.Close() // the SMTP and IMAP Serve loops end
		}
		s.conns.closeAll()
		if s.smtpSrv != nil {
			// The one go-smtp call that waits for its connection
			// goroutines; their sockets are closed, so they end now. It
			// closes the listener again.
			if err := s.smtpSrv.Shutdown(context.Background()); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
		s.wg.Wait()
		s.pop3Conns.Wait() // their sockets are closed: they end now
		s.conns.wait()
		if s.imapSrv != nil {
			// Nothing is left to close; it marks the server closed.
			errs = append(errs, s.imapSrv.Close())
		}
		if s.tmpDir != "" {
			errs = append(errs, os.RemoveAll(s.tmpDir))
		}
		s.closeErr = errors.Join(errs...)
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("fakems: close: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// pause waits d (SMTPLoginLatency, SMTPReplyLatency), or until Close.
func (s *Server) pause(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closed:
	}
}

// HTTPClient returns a client for the Entra endpoints that trusts the
// generated CA (needed with Options.HTTPS; harmless without).
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: s.ClientTLSConfig()},
		Timeout:   30 * time.Second,
	}
}

// ClientTLSConfig trusts the generated CA, for SMTP and IMAP clients.
func (s *Server) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.CAPool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// Message is one message accepted over SMTP.
type Message struct {
	AuthUser string // the XOAUTH2 user= of the session
	ClientID string // the app the session's token was issued to
	AppOnly  bool   // the token came from client credentials
	From     string
	To       []string
	Data     []byte // nil with Options.DiscardData
	Size     int64
	SHA256   [32]byte
	Params   MailParams
	Received time.Time // on the system clock, not Options.Clock
}

// MailParams are the ESMTP parameters the client sent, so tests can check
// that the relay forwards them.
type MailParams struct {
	Body     string // BODY=: "", "7BIT", "8BITMIME" or "BINARYMIME"
	SMTPUTF8 bool
	Size     int64  // SIZE=, 0 if absent
	Ret      string // RET=: "", "FULL" or "HDRS"
	EnvID    string // ENVID=, decoded
	Auth     string // AUTH=, decoded; "<>" for AUTH=<>
	// Rcpt holds the per-recipient parameters, in the order of To.
	Rcpt []RcptParams
}

// RcptParams are one RCPT TO's DSN parameters.
type RcptParams struct {
	Notify []string // NOTIFY=, e.g. ["SUCCESS" "FAILURE"]
	ORcpt  string   // ORCPT= address, without its type
}

// Messages returns the messages accepted so far, oldest first. The slices
// inside (To, Data, Params.Rcpt) are shared: read them, do not modify them.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.messages))
	copy(out, s.messages)
	return out
}

// WaitMessages blocks until at least n messages have been accepted and
// returns them, or returns ctx's error.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	for {
		s.mu.Lock()
		have, changed := len(s.messages), s.msgChanged
		s.mu.Unlock()
		if have >= n {
			return s.Messages(), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("fakems: waiting for %d messages (have %d): %w", n, have, ctx.Err())
		case <-s.closed:
			return nil, fmt.Errorf("fakems: waiting for %d messages (have %d): server closed", n, have)
		}
	}
}

func (s *Server) addMessage(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	close(s.msgChanged)
	s.msgChanged = make(chan struct{})
}

// DropNextDataAfter makes the next DATA (or BDAT) transfer close the
// connection after reading n bytes of the message, without a reply: an
// upstream lost in the middle of a message.
func (s *Server) DropNextDataAfter(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropAfter = n
	s.dropArmed = true
}

func (s *Server) takeDrop() (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.dropAfter, s.dropArmed
	s.dropArmed = false
	return n, ok
}

// hashingWriter keeps the size and SHA-256 of what passes through, and the
// bytes unless discard is set.
type hashingWriter struct {
	h       hash.Hash
	buf     []byte
	size    int64
	discard bool
}

func newHashingWriter(discard bool) *hashingWriter {
	return &hashingWriter{h: sha256.New(), discard: discard}
}

func (w *hashingWriter) Write(p []byte) (int, error) {
	w.h.Write(p) // a hash.Hash never fails
	w.size += int64(len(p))
	if !w.discard {
		w.buf = append(w.buf, p...)
	}
	return len(p), nil
}

func (w *hashingWriter) sum() (out [32]byte) {
	copy(out[:], w.h.Sum(nil))
	return out
}

// lower folds an address for lookups: Exchange matches addresses
// case-insensitively.
func lower(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }
