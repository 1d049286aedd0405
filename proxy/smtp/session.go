package smtp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// session is one app connection. It holds the protocol state only: who
// logged in, and the open transaction of the account's delivery; the
// upstream sessions belong to the delivery. go-smtp calls its methods one at
// a time, except that a BDAT message's Data runs on a goroutine of its own,
// beside RSET's Reset and the Logout of a connection that ends: mu
// serialises them.
type session struct {
	srv    *Server
	conn   *smtp.Conn
	view   *view // the wire's connection; nil only if go-smtp was given another
	log    *slog.Logger
	remote netip.Addr

	mu sync.Mutex
	// busy: a Data is running; stop cancels its transaction. Logout uses
	// both rather than wait on a stalled client or upstream.
	busy atomic.Bool
	stop atomic.Pointer[context.CancelFunc]

	// acct and cred are set by a successful AUTH.
	acct *proxy.Account
	cred upstream.Credentials

	// tx is the open transaction (nil: none), of account txAcct (the
	// AUTH account, or the relay_from account chosen at MAIL); txCancel
	// ends its context, a child of the server's, which Close cancels.
	tx       delivery.Tx
	txAcct   *proxy.Account
	txCancel context.CancelFunc
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
	s.relay.Observer().Connection(events.SMTP, 1)
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
	if s.view != nil {
		s.view.txOpen.Store(open)
	}
}

// traced logs a command and the reply it got at debug level: the protocol
// debug log. Callers pass no secret: AUTH is logged by mechanism only.
func (s *session) traced(cmd string, err error, args ...any) error {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		reply := "250 (relay's own text)"
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			reply = upstream.FormatReply(se)
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

// login checks the local password, then asks the account's delivery
// whether it can send now (a token, and an upstream session logged in);
// the app's AUTH is answered with the outcome. It returns only
// *smtp.SMTPError values, so go-smtp never echoes an internal error text to
// the app.
func (s *session) login(username, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone() {
		return errClientEnded
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, loginTimeout)
	defer cancel()
	relay := s.srv.relay
	a, err := relay.Login(ctx, s.remote, username, password)
	if err != nil {
		return s.authFailed(nil, username, err)
	}
	cred := relay.Credentials(s.remote, a, password)
	if err := a.Delivery.Ready(ctx, cred); err != nil {
		return s.authFailed(a, username, err)
	}
	s.abortTx()
	s.acct, s.cred = a, cred
	s.log = s.log.With("account", a.Name)
	relay.Observer().Login(events.SMTP, a.Info(), events.LoginOK)
	s.authenticated()
	s.log.Info("login", "username", username, "mailbox", a.Mailbox)
	return nil
}

// authFailed logs a failed login in plain words and returns the reply.
func (s *session) authFailed(a *proxy.Account, username string, err error) error {
	reply, result := authReply(err)
	log := s.log.With("username", username)
	if a != nil {
		log = log.With("account", a.Name)
	}
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Kind == upstream.Refused {
		log.Warn("upstream refused the XOAUTH2 login", "reply", upstream.FormatReply(ue.Reply), "reason", ue.Reason)
	} else {
		log.Warn("login failed", "result", result, "err", err)
	}
	s.srv.relay.Observer().Login(events.SMTP, a.Info(), result)
	return reply
}

// authReply maps a login failure to the AUTH reply and a result label: the
// one place the classes of proxy and upstream become SMTP replies.
func authReply(err error) (*smtp.SMTPError, events.LoginResult) {
	var le *proxy.LoginError
	if errors.As(err, &le) && le.Failure == proxy.BadCredentials {
		return errBadCredentials, events.LoginBadCredentials
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		switch ue.Kind {
		case upstream.Refused:
			return ue.Reply, events.LoginUpstreamRejected
		case upstream.NeedsSignIn:
			return errNeedsAttention, events.LoginNeedsAttention
		}
		return errTempAuth, events.LoginUnavailable
	}
	if le != nil && le.Failure == proxy.NeedsAttention {
		return errNeedsAttention, events.LoginNeedsAttention
	}
	return errTempAuth, events.LoginUnavailable
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
	a, cred := s.acct, s.cred
	if a == nil {
		a = s.srv.relay.AccountForRelay(s.remote, from)
		if a == nil {
			s.log.Info("MAIL refused: not authenticated and no relay_from account matches", "from", from)
			return errAuthRequired
		}
		s.authenticated()
		cred = s.srv.relay.Credentials(s.remote, a, "")
	} else if !a.AllowsSender(from) {
		s.log.Warn("MAIL FROM not in allowed_from", "from", from)
		return errSenderDenied
	}
	s.abortTx()
	ctx, cancel := context.WithCancel(s.srv.ctx)
	tx, err := a.Delivery.Begin(ctx, cred, from, opts)
	if err != nil {
		cancel()
		return s.txFailed(a, err)
	}
	s.tx, s.txAcct, s.txCancel = tx, a, cancel
	s.setTx(true)
	return nil
}

// txFailed maps a failure of the delivery inside a transaction to the
// reply. Token failures that need an administrator are temporary here:
// the app keeps the message queued until the account is signed in again,
// rather than bouncing it.
func (s *session) txFailed(a *proxy.Account, err error) error {
	var (
		se *smtp.SMTPError
		ue *upstream.Error
		le *delivery.LostError
	)
	switch {
	case errors.As(err, &ue) && ue.Kind == upstream.Refused:
		s.log.Warn("upstream refused the XOAUTH2 login", "account", a.Name, "reply", upstream.FormatReply(ue.Reply), "reason", ue.Reason)
		return ue.Reply
	case errors.As(err, &ue) && ue.Kind == upstream.NeedsSignIn && !badPassthrough(err):
		s.log.Error("the account cannot get a token: it needs attention", "account", a.Name, "reason", ue.Reason, "err", err)
		return errTxNeedsAttention
	case errors.As(err, &ue):
		s.log.Warn("cannot reach the upstream for a transaction", "account", a.Name, "err", err)
		return errUpstreamUnavailable
	case errors.As(err, &le) && le.Stage == "DATA":
		s.log.Warn("upstream connection lost during DATA: message not acknowledged", "err", err)
		return errLostDuringData
	case errors.As(err, &le):
		s.log.Warn("upstream connection lost", "stage", le.Stage, "err", err)
		return errUpstreamUnavailable
	case errors.As(err, &se):
		return se
	case errors.Is(err, context.Canceled):
		// The session or the server ended while the message waited.
		s.log.Info("transaction cancelled", "account", a.Name)
		return errUpstreamUnavailable
	}
	s.log.Error("delivery failed", "account", a.Name, "err", err)
	return errUpstreamUnavailable
}

// badPassthrough reports a password passthrough login the identity
// provider refused: for a transaction that is the upstream being
// unavailable to this app, not the account needing an administrator.
func badPassthrough(err error) bool {
	var le *proxy.LoginError
	return errors.As(err, &le) && le.Failure == proxy.BadCredentials
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
	if s.tx == nil {
		return errNoTransaction
	}
	err := s.tx.Rcpt(to, opts)
	var le *delivery.LostError
	if errors.As(err, &le) {
		// The transaction died with its upstream session.
		s.endTx()
	}
	if err != nil {
		return s.txFailed(s.txAcctOr(), err)
	}
	return nil
}

// txAcctOr is the transaction's account, or the session's after the
// transaction ended.
func (s *session) txAcctOr() *proxy.Account {
	if s.txAcct != nil {
		return s.txAcct
	}
	return s.acct
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
	if s.tx == nil {
		return errNoTransaction
	}
	tx, a := s.tx, s.txAcct
	defer s.endTx()
	if a.EnforceHeaderFrom {
		checked, err := s.checkHeaderFrom(a, r)
		if err != nil {
			tx.Abort()
			return err
		}
		r = checked
	}
	cancel := s.txCancel
	s.stop.Store(&cancel)
	acc, err := tx.Data(r)
	s.stop.Store(nil)
	if err == nil {
		s.log.Info("message relayed", "bytes", acc.Bytes)
		// Pass the upstream's own 250 text (its queue id) to the app.
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.NoEnhancedCode, Message: acc.Reply}
	}
	// The delivery never sends the final dot for a message that did not
	// arrive whole: the upstream discards it.
	var re *smtpclient.ReadError
	if errors.As(err, &re) {
		return s.readFailed(re.Err)
	}
	return s.txFailed(a, err)
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
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se // e.g. 552 message too big
	}
	return errLostDuringData
}

// Reset implements smtp.Session: RSET aborts the transaction (the delivery
// relays it).
func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone() {
		s.endTx()
		return
	}
	s.abortTx()
}

// Logout implements smtp.Session: the transaction is aborted. A Data still
// running (a BDAT message whose connection ended, or Server.Close) has its
// client connection closed and its transaction cancelled first: the message
// is not complete, and Logout must not wait on either.
func (s *session) Logout() error {
	if s.busy.Load() {
		if s.view != nil {
			s.view.Close()
		}
		if stop := s.stop.Load(); stop != nil {
			(*stop)()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.abortTx()
	s.srv.relay.Observer().Connection(events.SMTP, -1)
	s.log.Debug("connection closed")
	return nil
}

// abortTx aborts the open transaction, if any.
func (s *session) abortTx() {
	if s.tx != nil {
		s.tx.Abort()
	}
	s.endTx()
}

// endTx forgets the transaction (finished or dead).
func (s *session) endTx() {
	if s.txCancel != nil {
		s.txCancel()
	}
	s.tx, s.txAcct, s.txCancel = nil, nil, nil
	s.setTx(false)
}
