package fakems

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"slices"
	"strings"
	"sync"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// newSMTPServer configures go-smtp like smtp.office365.com. TLS is done by
// smtpConn (see wire.go), hence no TLSConfig and AllowInsecureAuth.
func (s *Server) newSMTPServer() *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(s.newSMTPSession))
	srv.Domain = exchangeHost
	srv.MaxMessageBytes = s.opts.SMTPMaxMessageBytes
	// go-smtp's default of 2000 would refuse a 3 KB inline XOAUTH2 line and
	// close the connection; AUTH line length is policed in Auth instead, and
	// the rest of this limit only guards against a runaway DATA line.
	srv.MaxLineLength = 1 << 20
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableBINARYMIME = true
	srv.ErrorLog = slogPrintf{s.log.With("server", "smtp")}
	return srv
}

// slogPrintf adapts slog to go-smtp's and go-imap's Printf loggers.
type slogPrintf struct{ log *slog.Logger }

func (l slogPrintf) Printf(format string, v ...any) { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l slogPrintf) Println(v ...any)               { l.log.Warn(fmt.Sprint(v...)) }

// smtpSession is one SMTP connection's state.
type smtpSession struct {
	s    *Server
	conn *smtp.Conn
	wire *smtpConn
	log  *slog.Logger

	user      string // authenticated mailbox (lower case), "" before AUTH
	clientID  string
	appOnly   bool
	counted   bool // holds one of the mailbox's concurrent-connection slots
	cutAtMail bool // FaultAfterAuth: reset the connection at the next MAIL

	from   string
	params MailParams
	to     []string
}

func (s *Server) newSMTPSession(c *smtp.Conn) (smtp.Session, error) {
	w, _ := c.Conn().(*smtpConn)
	return &smtpSession{
		s:    s,
		conn: c,
		wire: w,
		log:  s.log.With("server", "smtp", "cid", randString(8), "remote", c.Conn().RemoteAddr().String()),
	}, nil
}

func (ss *smtpSession) tls() bool { return ss.wire != nil && ss.wire.TLS() }

// AuthMechanisms is what EHLO advertises after STARTTLS: "AUTH LOGIN
// XOAUTH2", like Exchange.
func (ss *smtpSession) AuthMechanisms() []string { return []string{sasl.Login, sasl.XOAuth2} }

// Auth starts a login. LOGIN exists only to be refused (basic
// authentication is off in Exchange Online).
func (ss *smtpSession) Auth(mech string) (gosasl.Server, error) {
	if !ss.tls() {
		return nil, replyUnknownMech
	}
	switch mech {
	case sasl.Login:
		return sasl.NewLoginServer(func(user, _ string) error {
			ss.log.Info("smtp: basic auth refused", "user", user)
			return replyBasicDisabled
		}), nil
	case sasl.XOAuth2:
		return &xoauth2Server{check: ss.loginXOAuth2, lineLimit: ss.s.authLineLimit()}, nil
	}
	return nil, replyUnknownMech
}

func (s *Server) authLineLimit() int {
	if s.opts.SMTPMaxLineLength > 0 {
		return s.opts.SMTPMaxLineLength
	}
	return defaultAuthLineLimit
}

// xoauth2Server is the server side of XOAUTH2 for both protocols: it takes
// the token as an initial response or after an empty challenge, and leaves
// the decision to check, whose error is the reply.
type xoauth2Server struct {
	check     func(user, token string) error
	lineLimit int // SMTP only: longest AUTH line with an initial response
	started   bool
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if !x.started {
		x.started = true
		if resp == nil {
			// An empty challenge: "334 " in SMTP, "+ " in IMAP (go-imap
			// would send "+ =" for a non-nil empty one).
			return nil, false, nil
		}
		// "AUTH XOAUTH2 " plus the base64 of the response, plus CRLF.
		if x.lineLimit > 0 && len("AUTH XOAUTH2 ")+base64.StdEncoding.EncodedLen(len(resp))+2 > x.lineLimit {
			return nil, true, replyLineTooLong
		}
	}
	user, token, err := sasl.ParseXOAuth2Response(resp)
	if err != nil {
		return nil, true, x.check("", "")
	}
	return nil, true, x.check(user, token)
}

// loginXOAuth2 is Exchange's decision on an SMTP XOAUTH2 login.
func (ss *smtpSession) loginXOAuth2(user, token string) error {
	ss.s.pause(ss.s.opts.SMTPLoginLatency) // Exchange's token validation, over the internet
	m, at, reason := ss.s.checkBearer(user, token, scopeSMTP, roleSMTP)
	if m == nil {
		ss.log.Info("smtp: XOAUTH2 refused", "user", user, "reason", reason)
		return replyAuthFailed
	}
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if s := ss.s; s.smtpAuthOffTenant {
		ss.log.Info("smtp: XOAUTH2 refused", "user", user, "reason", "SMTP AUTH disabled for the tenant")
		return replySMTPAuthDisabledTenant
	}
	if m.smtpAuthDisabled {
		ss.log.Info("smtp: XOAUTH2 refused", "user", user, "reason", "SMTP AUTH disabled for the mailbox")
		return replySMTPAuthDisabled
	}
	counted, ok := ss.s.loginLocked(m)
	if !ok {
		ss.log.Info("smtp: XOAUTH2 refused", "user", user, "reason", "concurrent connections limit")
		return replyConcurrent
	}
	ss.counted = counted
	ss.s.smtpLogins++
	ss.cutAtMail = ss.s.takeFaultLocked(FaultAfterAuth)
	ss.user, ss.clientID, ss.appOnly = lower(user), at.clientID, at.appOnly()
	ss.log = ss.log.With("user", ss.user)
	ss.log.Info("smtp: XOAUTH2 accepted", "client_id", at.clientID, "app_only", ss.appOnly)
	return nil
}

// Mail checks the sender: the mailbox itself or an address it has SendAs
// on.
func (ss *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	switch {
	case !ss.tls():
		return replyStartTLSFirst
	case ss.user == "":
		return replyNotAuthenticated
	case ss.cutAtMail, ss.s.takeFault(FaultAfterMail):
		return ss.cut()
	}
	ss.s.mu.Lock()
	m := ss.s.mailboxes[ss.user]
	allowed := m != nil && (lower(from) == ss.user || m.sendAs[lower(from)])
	ss.s.mu.Unlock()
	if !allowed {
		ss.log.Info("smtp: send-as refused", "from", from)
		return replySendAsDenied
	}
	ss.from = from
	ss.params = MailParams{
		Body:     string(opts.Body),
		SMTPUTF8: opts.UTF8,
		Size:     opts.Size,
		Ret:      string(opts.Return),
		EnvID:    opts.EnvelopeID,
	}
	if opts.Auth != nil {
		ss.params.Auth = *opts.Auth
		if ss.params.Auth == "" {
			ss.params.Auth = "<>"
		}
	}
	return nil
}

func (ss *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if ss.s.takeFault(FaultAfterRcpt) {
		return ss.cut()
	}
	if ss.s.tooManyRcpts(len(ss.to)) {
		ss.log.Info("smtp: recipient refused", "reason", "recipients per message", "limit", ss.s.recipientsPerMessage())
		return replyTooManyRcpts
	}
	rp := RcptParams{ORcpt: opts.OriginalRecipient}
	for _, n := range opts.Notify {
		rp.Notify = append(rp.Notify, string(n))
	}
	ss.to = append(ss.to, to)
	ss.params.Rcpt = append(ss.params.Rcpt, rp)
	return nil
}

// copyBuffers serve Data, so that a benchmark sending thousands of small
// messages measures the relay, not the fake's garbage.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Data receives a message (DATA or BDAT). It honours DropNextDataAfter, the
// per-minute and per-day limits and DiscardData, and answers like Exchange:
// "250 2.0.0 OK <message-id> [Hostname=...]".
func (ss *smtpSession) Data(r io.Reader) error {
	hw := newHashingWriter(ss.s.opts.DiscardData)
	if n, drop := ss.s.takeDrop(); drop {
		_, _ = io.CopyN(hw, r, n)
		ss.log.Info("smtp: dropping the connection during DATA", "after_bytes", n)
		_ = ss.conn.Conn().Close()
		return errors.New("fakems: connection dropped during DATA")
	}
	if ss.s.takeFault(FaultMidData) {
		_, _ = io.CopyN(hw, r, midDataBytes)
		return ss.cut()
	}
	buf := copyBuffers.Get().(*[]byte)
	_, err := io.CopyBuffer(hw, r, *buf)
	copyBuffers.Put(buf)
	if err != nil {
		// go-smtp's size limit and aborted BDAT end up here; it has the reply.
		return err
	}
	if ss.s.takeFault(FaultAfterDot) {
		return ss.cut()
	}
	msgID := messageID(hw.buf)

	ss.s.mu.Lock()
	refused := ss.s.admitLocked(ss.s.mailboxes[ss.user], len(ss.to))
	ss.s.mu.Unlock()
	if refused != nil {
		ss.log.Info("smtp: message refused", "reason", refused.Message, "rcpts", len(ss.to))
		return refused
	}

	msg := Message{
		AuthUser: ss.user,
		ClientID: ss.clientID,
		AppOnly:  ss.appOnly,
		From:     ss.from,
		To:       slices.Clone(ss.to),
		Size:     hw.size,
		SHA256:   hw.sum(),
		Params:   ss.params,
		Received: time.Now(),
	}
	if !ss.s.opts.DiscardData {
		msg.Data = hw.buf
	}
	ss.s.addMessage(msg)
	ss.log.Info("smtp: message accepted", "from", ss.from, "rcpts", len(ss.to), "size", hw.size)
	if ss.s.takeFault(FaultAfterDotKept) {
		return ss.cut()
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: "OK " + msgID + " [Hostname=" + exchangeHost + "]"}
}

// messageID is the message's Message-ID, or a new one in Exchange's shape.
func messageID(data []byte) string {
	if data != nil {
		if m, err := mail.ReadMessage(strings.NewReader(string(headerOf(data)))); err == nil {
			if id := strings.TrimSpace(m.Header.Get("Message-Id")); id != "" {
				return id
			}
		}
	}
	return "<" + strings.ToUpper(randString(32)) + "@" + strings.ToLower(exchangeHost) + ">"
}

// headerOf returns the header block, so a 100 MB body is not copied to find
// the Message-ID.
func headerOf(data []byte) []byte {
	for _, sep := range []string{"\r\n\r\n", "\n\n"} {
		if i := strings.Index(string(data[:min(len(data), 64<<10)]), sep); i >= 0 {
			return data[:i+len(sep)]
		}
	}
	return data[:min(len(data), 64<<10)]
}

// cut resets the connection (an injected fault); go-smtp's reply to the
// error it returns goes nowhere.
func (ss *smtpSession) cut() error {
	if ss.wire != nil {
		_ = reset(ss.wire.raw)
	} else {
		_ = reset(ss.conn.Conn())
	}
	return errFault
}

func (ss *smtpSession) Reset() {
	ss.from, ss.to, ss.params = "", nil, MailParams{}
}

// Logout frees the connection's slot in the per-mailbox limit.
func (ss *smtpSession) Logout() error {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	if ss.counted {
		ss.counted = false
		if m := ss.s.mailboxes[ss.user]; m != nil {
			m.smtpConns--
		}
	}
	return nil
}
