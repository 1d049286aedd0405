package smtp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// cmdCtx is the context of the commands relayed upstream. go-smtp gives
// session methods no context; each upstream exchange is bounded by
// smtpclient's timeouts (5 minutes a command, 30 a message), and a session
// that ends closes its upstream connection, which interrupts any exchange.
// A cancellable context here would cost a registration per command.
var cmdCtx = context.Background()

// session is one app connection. go-smtp calls its methods one at a time,
// except that a BDAT message's Data runs on a goroutine of its own, beside
// RSET's Reset and the Logout of a connection that ends: mu serialises them.
type session struct {
	srv    *Server
	conn   *smtp.Conn
	view   *view // the wire's connection; nil only if go-smtp was given another
	log    *slog.Logger
	remote netip.Addr

	mu sync.Mutex
	// busy: a Data is running; streaming: the upstream it sends to. Logout
	// interrupts both rather than wait on a stalled client or upstream.
	busy      atomic.Bool
	streaming atomic.Pointer[upstream]

	// acct is set by a successful AUTH; token gets its access token again
	// when the upstream connection has to be re-established.
	acct  *proxy.Account
	token func(context.Context) (string, error)

	up *upstream
	// inTx: MAIL was accepted upstream and the transaction is open.
	inTx bool
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	id := make([]byte, 4)
	rand.Read(id)
	remote := proxy.AddrOf(c.Conn().RemoteAddr())
	v, _ := c.Conn().(*view)
	sess := &session{
		srv:    s,
		conn:   c,
		view:   v,
		remote: remote,
		log:    s.log.With("session", hex.EncodeToString(id), "remote", remote.String()),
	}
	s.relay.Observer().Connection("smtp", 1)
	sess.log.Debug("connection opened")
	return sess, nil
}

// authenticated frees the connection's place among those waiting for a
// login (proxy.Listener's caps): after AUTH, or when a relay_from client
// is let in by its address.
func (s *session) authenticated() {
	if s.view != nil {
		proxy.MarkAuthenticated(s.view)
	}
}

// AuthMechanisms implements smtp.AuthSession. Nothing is offered where a
// password would cross the network in the clear.
func (s *session) AuthMechanisms() []string {
	if !s.plaintextAllowed() {
		return nil
	}
	return []string{gosasl.Plain, sasl.Login}
}

func (s *session) plaintextAllowed() bool {
	_, isTLS := s.conn.TLSConnectionState()
	if s.view != nil {
		isTLS = s.view.TLS()
	}
	return proxy.PlaintextAuthAllowed(s.srv.lc, s.conn.Conn().RemoteAddr(), isTLS)
}

// gone reports whether the client connection was ended by the wire (a
// failure in the middle of a message, a timeout): nothing more is done for
// it, and the upstream is not touched. go-smtp should not call again, as
// its reads fail; this holds even if it did.
func (s *session) gone() bool { return s.view != nil && s.view.w.closed.Load() }

// setTx records whether a transaction is open, which Shutdown lets finish.
func (s *session) setTx(open bool) {
	s.inTx = open
	if s.view != nil {
		s.view.txOpen.Store(open)
	}
}

// traced logs a command and the reply it got at debug level: the protocol
// debug log. Callers pass no secret: AUTH is logged by mechanism only.
func (s *session) traced(cmd string, err error, args ...any) error {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		reply := "250 (relay's own text)"
		if se, ok := isReply(err); ok {
			reply = fmt.Sprintf("%d %s", se.Code, se.Message)
			if se.EnhancedCode != smtp.NoEnhancedCode {
				reply = fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
			}
		} else if err != nil {
			reply = err.Error()
		}
		s.log.Debug("command", append([]any{"cmd", cmd, "reply", reply}, args...)...)
	}
	return err
}

// Auth implements smtp.AuthSession.
func (s *session) Auth(mech string) (gosasl.Server, error) {
	s.log.Debug("command", "cmd", "AUTH", "mechanism", mech, "payload", "[redacted]")
	if s.gone() {
		return nil, errClientEnded
	}
	if !s.plaintextAllowed() {
		return nil, errEncryptionRequired
	}
	switch mech {
	case gosasl.Plain:
		return gosasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return errBadCredentials
			}
			return s.login(username, password)
		}), nil
	case sasl.Login:
		return sasl.NewLoginServer(s.login), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks the local password, then logs in upstream; the app's AUTH is
// answered with the outcome. It returns only *smtp.SMTPError values, so
// go-smtp never echoes an internal error text to the app.
func (s *session) login(username, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone() {
		return errClientEnded
	}
	ctx, cancel := context.WithTimeout(context.Background(), loginTimeout)
	defer cancel()
	relay := s.srv.relay
	a, err := relay.Login(ctx, s.remote, username, password)
	if err != nil {
		return s.authFailed(nil, username, err)
	}
	// Only a passthrough account needs the password again (to redial
	// upstream later in the session); others do not keep it.
	pw := ""
	if a.PasswordPassthrough {
		pw = password
	}
	token := func(ctx context.Context) (string, error) { return relay.Token(ctx, s.remote, a, pw) }
	up, err := s.dial(ctx, a, token)
	if err != nil {
		return s.authFailed(a, username, err)
	}
	s.closeUpstream()
	s.acct, s.token, s.up = a, token, up
	s.log = s.log.With("account", a.Name)
	relay.Observer().Login("smtp", a, "ok")
	s.authenticated()
	s.log.Info("login", "username", username, "mailbox", a.Mailbox)
	return nil
}

// dial gets a token and connects upstream as a.
func (s *session) dial(ctx context.Context, a *proxy.Account, token func(context.Context) (string, error)) (*upstream, error) {
	tok, err := token(ctx)
	if err != nil {
		return nil, err
	}
	up, err := connect(ctx, s.srv.relay, a, tok)
	if se, ok := isReply(err); ok && se.Code == 535 {
		// The upstream refused a token the identity platform just gave
		// out (revoked, or permissions changed): get a fresh one next time.
		a.Source.Invalidate()
	}
	return up, err
}

// authFailed logs a failed login in plain words and returns the reply.
func (s *session) authFailed(a *proxy.Account, username string, err error) error {
	reply, result := authReply(err)
	log := s.log.With("username", username)
	if a != nil {
		log = log.With("account", a.Name)
	}
	if se, ok := isReply(err); ok {
		log.Warn("upstream refused the XOAUTH2 login", "reply", se.Error(), "explanation", proxy.ExplainSMTP(se.Code, se.EnhancedCode, se.Message))
	} else {
		log.Warn("login failed", "result", result, "err", err)
	}
	s.srv.relay.Observer().Login("smtp", a, result)
	return reply
}

// authReply maps a login failure to the AUTH reply and a result label.
func authReply(err error) (*smtp.SMTPError, string) {
	if se, ok := isReply(err); ok {
		return se, proxy.UpstreamRejected.String()
	}
	var le *proxy.LoginError
	if errors.As(err, &le) {
		switch le.Failure {
		case proxy.BadCredentials:
			return errBadCredentials, le.Failure.String()
		case proxy.NeedsAttention:
			return errNeedsAttention, le.Failure.String()
		}
		return errTempAuth, le.Failure.String()
	}
	return errTempAuth, proxy.Unavailable.String()
}

// Mail implements smtp.Session.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone() {
		return errClientEnded
	}
	err := s.mail(from, opts)
	return s.traced("MAIL", err, "from", from, "body", opts.Body, "size", opts.Size, "smtputf8", opts.UTF8)
}

func (s *session) mail(from string, opts *smtp.MailOptions) error {
	a := s.acct
	if a == nil {
		a = s.srv.relay.AccountForRelay(s.remote, from)
		if a == nil {
			s.log.Info("MAIL refused: not authenticated and no relay_from account matches", "from", from)
			return errAuthRequired
		}
		s.authenticated()
		if s.up != nil && s.up.acct != a {
			s.closeUpstream()
		}
		s.token = func(ctx context.Context) (string, error) { return s.srv.relay.Token(ctx, s.remote, a, "") }
	} else if !a.AllowsSender(from) {
		s.log.Warn("MAIL FROM not in allowed_from", "from", from)
		return errSenderDenied
	}
	err := s.mailUpstream(a, from, opts)
	if err == nil {
		s.setTx(true)
	}
	return err
}

// mailUpstream sends MAIL on the upstream connection, (re)connecting when
// there is none or the one kept since AUTH has died (Exchange closes idle
// sessions): a dead kept connection is retried once on a new one.
func (s *session) mailUpstream(a *proxy.Account, from string, opts *smtp.MailOptions) error {
	for attempt := 0; attempt < 2; attempt++ {
		reused := s.up != nil && !s.up.broken
		if !reused {
			s.closeUpstream()
			ctx, cancel := context.WithTimeout(context.Background(), loginTimeout)
			up, err := s.dial(ctx, a, s.token)
			cancel()
			if err != nil {
				return s.txDialFailed(a, err)
			}
			s.up = up
		}
		err := s.up.c.Mail(cmdCtx, from, opts)
		if se, ok := isReply(err); ok {
			if se.Code == 421 {
				s.up.broken = true
			}
			return se
		}
		if err == nil {
			return nil
		}
		s.up.broken = true
		s.log.Info("upstream connection lost before MAIL", "err", err)
		if !reused {
			return errUpstreamUnavailable
		}
	}
	return errUpstreamUnavailable
}

// txDialFailed maps a failed (re)connection at MAIL time. Token failures
// that need an administrator are still temporary here: the app keeps the
// message queued until the account is signed in again, rather than bouncing
// it.
func (s *session) txDialFailed(a *proxy.Account, err error) error {
	if se, ok := isReply(err); ok {
		s.log.Warn("upstream refused the XOAUTH2 login", "account", a.Name, "reply", se.Error(),
			"explanation", proxy.ExplainSMTP(se.Code, se.EnhancedCode, se.Message))
		return se
	}
	var le *proxy.LoginError
	if errors.As(err, &le) && le.Failure == proxy.NeedsAttention {
		s.log.Error("the account cannot get a token: it needs attention", "account", a.Name, "reason", le.Reason, "err", err)
		return errTxNeedsAttention
	}
	s.log.Warn("cannot reach the upstream for a transaction", "account", a.Name, "err", err)
	return errUpstreamUnavailable
}

// Rcpt implements smtp.Session.
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone() {
		return errClientEnded
	}
	return s.traced("RCPT", s.rcpt(to, opts), "to", to)
}

func (s *session) rcpt(to string, opts *smtp.RcptOptions) error {
	if !s.inTx || s.up == nil {
		return errNoTransaction
	}
	err := s.up.c.Rcpt(cmdCtx, to, opts)
	if err == nil {
		return nil
	}
	if se, ok := isReply(err); ok {
		return se
	}
	s.up.broken = true
	s.setTx(false)
	s.log.Warn("upstream connection lost at RCPT", "err", err)
	return errUpstreamUnavailable
}

// Data implements smtp.Session. The message is streamed to the upstream's
// DATA; the app gets 250 only with the upstream's own 250 reply, which it
// sends only after the whole message arrived.
func (s *session) Data(r io.Reader) error {
	s.busy.Store(true)
	defer s.busy.Store(false)
	r = s.messageReader(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone() {
		return errClientEnded
	}
	err := s.data(r)
	s.setTx(false)
	return s.traced("DATA", err)
}

// messageReader is where the message comes from: a DATA body is read from
// the wire (go-smtp has just sent 354, and its own reader would lose the CR
// of ".\rX"); a BDAT message through go-smtp's pipe, refused at its end if
// a chunk was cut short.
func (s *session) messageReader(r io.Reader) io.Reader {
	if s.view == nil {
		return r
	}
	if _, chunked := r.(*io.PipeReader); chunked {
		return bdatReader{r: r, v: s.view}
	}
	if body := s.view.w.beginBody(s.srv.smtp.MaxMessageBytes); body != nil {
		return body
	}
	return r
}

func (s *session) data(r io.Reader) error {
	if !s.inTx || s.up == nil {
		return errNoTransaction
	}
	s.inTx = false
	if s.up.acct.EnforceHeaderFrom {
		checked, err := s.checkHeaderFrom(r)
		if err != nil {
			return err
		}
		r = checked
	}
	s.streaming.Store(s.up)
	text, n, err := s.up.c.Data(cmdCtx, r)
	s.streaming.Store(nil)
	if err == nil {
		s.srv.relay.Observer().Message(s.up.acct, n)
		s.log.Info("message relayed", "bytes", n)
		// Pass the upstream's own 250 text (its queue id) to the app.
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.NoEnhancedCode, Message: text}
	}
	var re *smtpclient.ReadError
	readFailed := errors.As(err, &re)
	if se, ok := isReply(err); ok && !readFailed {
		return se // the upstream's refusal
	}
	// Never let a partial message be accepted: drop the upstream
	// connection without the final dot. (A read failure may wrap a reply,
	// the size limit's 552, but the upstream is still in the middle of
	// DATA.)
	s.up.broken = true
	s.closeUpstream()
	if readFailed {
		return s.readFailed(re.Err)
	}
	s.log.Warn("upstream connection lost during DATA: message not acknowledged", "err", err)
	return errLostDuringData
}

// readFailed maps a failure to read the app's message (the upstream was
// left without the final dot).
func (s *session) readFailed(err error) error {
	var ce *clientError
	if errors.As(err, &ce) {
		s.log.Info("message from the app ended early: not delivered", "err", ce.err)
		return ce.reply
	}
	s.log.Info("message from the app ended early", "err", err)
	if se, ok := isReply(err); ok {
		return se // e.g. 552 message too big
	}
	return errLostDuringData
}

// Reset implements smtp.Session: RSET is relayed.
func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inTx && s.up != nil && !s.up.broken && !s.gone() {
		s.resetUpstream()
	}
	s.setTx(false)
}

// resetUpstream relays RSET.
func (s *session) resetUpstream() {
	if err := s.up.c.Reset(cmdCtx); err != nil {
		if _, ok := isReply(err); !ok {
			s.up.broken = true
		}
	}
}

// Logout implements smtp.Session: QUIT is relayed. A Data still running
// (a BDAT message whose connection ended, or Server.Close) has its client
// connection and upstream closed first: the message is not complete, and
// Logout must not wait on either.
func (s *session) Logout() error {
	if s.busy.Load() {
		if s.view != nil {
			s.view.Close()
		}
		if up := s.streaming.Load(); up != nil {
			up.c.Close()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeUpstream()
	s.srv.relay.Observer().Connection("smtp", -1)
	s.log.Debug("connection closed")
	return nil
}

func (s *session) closeUpstream() {
	if s.up != nil {
		s.up.close()
		s.up = nil
	}
	s.setTx(false)
}
