// Package upstream is the one login to the provider's mail servers: it
// dials an upstream server with verified TLS, gets the account's access
// token and authenticates with XOAUTH2, once per protocol (SMTP here, IMAP
// in imap.go). The relay's front ends, its deliveries and `oauthrelay check`
// all log in through it, so `check` passes exactly when the relay would.
//
// Every failure is an *Error whose Kind says what the caller must tell the
// app: the upstream refused (its reply is passed on), the upstream or the
// token endpoint is unavailable for now (retry), or the account needs a new
// sign-in or a fixed app registration (an administrator must act). The
// observer hears about each login attempt here and nowhere else.
//
// Out of scope: local authentication of the app, and what is done on the
// connection after the login (relaying SMTP commands, copying IMAP bytes).
package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/splice"
)

const (
	// dialTimeout bounds the TCP connect when the dialer sets none.
	dialTimeout = 15 * time.Second
	// handshakeTimeout bounds a TLS handshake with the upstream.
	handshakeTimeout = 15 * time.Second
	// localName is what the relay calls itself in EHLO upstream.
	localName = "localhost"
)

// Credentials give the access token to log in with. *oauth.Source has
// these methods; a password-passthrough login wraps the app's password.
type Credentials interface {
	// Token returns an access token; failures should be *oauth.Error so
	// they are classified.
	Token(ctx context.Context) (string, error)
	// Invalidate drops a token the upstream refused, so the next login
	// gets a fresh one instead of the same again.
	Invalidate()
}

// Target is one account's way to one upstream server.
type Target struct {
	// Account names the account in events.
	Account events.Account
	// Server is the upstream's address and TLS mode (implicit, starttls,
	// or none for loopback test servers).
	Server config.Upstream
	// TLS is the verified client configuration (roots, minimum version,
	// session cache); ServerName is filled in from Server.Addr. Nil: the
	// system roots, TLS 1.2 or newer.
	TLS *tls.Config
	// Dialer connects; nil: a net.Dialer with dialTimeout.
	Dialer *net.Dialer
	// Observer hears about each login; nil: events.Nop.
	Observer events.Observer
	// CheckMailbox (IMAP): after the login, make sure the mailbox can be
	// opened (see IMAPSession.checkMailbox), so that a mailbox the token
	// gives no access to fails the login rather than the app's first
	// command. Set for mailboxes an app chose by its login name.
	CheckMailbox bool
}

// Kind is what a failed login means for the app.
type Kind int

const (
	// Refused: the upstream answered and refused the login. For SMTP its
	// reply is in Error.Reply and goes to the app unchanged.
	Refused Kind = iota + 1
	// Unavailable: the upstream or the token endpoint failed for now; the
	// app should retry.
	Unavailable
	// NeedsSignIn: the grant needs a new sign-in or the app registration
	// is wrong; retrying will not help until an administrator acts.
	NeedsSignIn
)

func (k Kind) String() string {
	switch k {
	case Refused:
		return "refused"
	case Unavailable:
		return "unavailable"
	case NeedsSignIn:
		return "needs_sign_in"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a failed upstream login. Reason is plain words for the log and
// `check`; it is never sent to the app.
type Error struct {
	Kind  Kind
	Proto events.Proto
	Addr  string
	// Reply is the SMTP upstream's refusal (Kind Refused), else nil.
	Reply *smtp.SMTPError
	// Reason says what happened and, for replies Exchange documents, what
	// to do about it.
	Reason string
	// Err is the underlying error: an *oauth.Error for token failures, a
	// network error, or nil.
	Err error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s login to %s: %s: %s", e.Proto, e.Addr, e.Kind, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// TokenError classifies a failure of Credentials.Token for a login to t
// over p, as the logins here do: a caller that checks the token without
// logging in (a delivery that reuses a session) fails alike.
func TokenError(t Target, p events.Proto, err error) *Error {
	e := &Error{Kind: Unavailable, Proto: p, Addr: t.Server.Addr, Reason: "token request failed", Err: err}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		e.Reason = oe.Reason
		if oe.Class == oauth.NeedsSignIn {
			e.Kind = NeedsSignIn
		}
	}
	return e
}

func (t Target) observer() events.Observer {
	if t.Observer == nil {
		return events.Nop{}
	}
	return t.Observer
}

// observe reports a login attempt's outcome: the one place it is done.
func (t Target) observe(p events.Proto, err error, start time.Time) {
	r := events.UpstreamOK
	var e *Error
	switch {
	case err == nil:
	case errors.As(err, &e) && e.Kind == Refused:
		r = events.UpstreamRejected
	default:
		r = events.UpstreamUnavailable
	}
	t.observer().Upstream(p, t.Account, r, time.Since(start))
}

// Dial connects to the target. With TLS "implicit" the verified handshake
// is done here; with "starttls" and "none" the connection is plain and the
// protocol upgrades it itself.
func (t Target) Dial(ctx context.Context) (net.Conn, error) {
	d := t.Dialer
	if d == nil {
		d = &net.Dialer{Timeout: dialTimeout}
	}
	c, err := d.DialContext(ctx, "tcp", t.Server.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", t.Server.Addr, err)
	}
	if t.Server.TLS != config.TLSImplicit {
		return c, nil
	}
	tc, err := t.Handshake(ctx, c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// Handshake runs a verified TLS handshake on c (implicit TLS, or after
// STARTTLS). The TLS connection runs on a splice.RecordConn, which lets a
// proxied session's copy write a stream of records to the app in large
// writes.
func (t Target) Handshake(ctx context.Context, c net.Conn) (*tls.Conn, error) {
	tc := tls.Client(splice.NewRecordConn(c), t.ClientTLS())
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with upstream %s: %w", t.Server.Addr, err)
	}
	return tc, nil
}

// ClientTLS is the client configuration for the target's host: always
// verified, TLS 1.2 or newer. A TLS that already names the host and asks
// for TLS 1.2 or newer is that configuration, and is returned as it is:
// proxy.Account prepares one per server, so that thousands of sessions
// share it rather than each holding a copy (crypto/tls keeps the config a
// connection was made with, and never changes it).
func (t Target) ClientTLS() *tls.Config {
	host, _, err := net.SplitHostPort(t.Server.Addr)
	if err != nil {
		host = t.Server.Addr
	}
	if t.TLS != nil && t.TLS.ServerName == host && t.TLS.MinVersion >= tls.VersionTLS12 {
		return t.TLS
	}
	var cfg *tls.Config
	if t.TLS != nil {
		cfg = t.TLS.Clone()
	} else {
		cfg = &tls.Config{}
	}
	cfg.ServerName = host
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	return cfg
}

// unavailable is an Unavailable failure of a login to t over p.
func unavailable(t Target, p events.Proto, reason string, err error) *Error {
	return &Error{Kind: Unavailable, Proto: p, Addr: t.Server.Addr, Reason: reason, Err: err}
}

// interruptible runs f, a login's exchange on conn (the connection as
// dialled: deadlines set on it reach a TLS layer started later), with
// ctx's deadline on conn, and ends its pending I/O when ctx ends; the
// deadline is cleared afterwards. When ctx has ended, a failure for want of
// an answer, or a success just then, is a cancelled Unavailable; a refusal
// the upstream sent stays what it is.
func interruptible(ctx context.Context, t Target, p events.Proto, conn net.Conn, f func() error) error {
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	err := f()
	stop()
	var e *Error
	if ctx.Err() != nil && (err == nil || errors.As(err, &e) && e.Kind == Unavailable) {
		reason := "cancelled"
		if e != nil {
			reason = e.Reason + " (cancelled)"
		}
		return unavailable(t, p, reason, ctx.Err())
	}
	if err == nil {
		conn.SetDeadline(time.Time{})
	}
	return err
}

// login is the frame of every protocol's login: the token from cred (its
// failure classified by TokenError, the upstream not contacted), then
// do with it, observed once; a refusal for which invalidate says so drops
// the token (revoked, expired early, permissions changed), so the next
// login fetches a fresh one instead of this one again.
func login[S any](ctx context.Context, t Target, p events.Proto, cred Credentials, invalidate func(*Error) bool,
	do func(ctx context.Context, t Target, token string) (S, error)) (S, error) {
	var zero S
	tok, err := cred.Token(ctx)
	if err != nil {
		return zero, TokenError(t, p, err)
	}
	start := time.Now()
	s, err := do(ctx, t, tok)
	t.observe(p, err, start)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Kind == Refused && invalidate(e) {
			cred.Invalidate()
		}
		return zero, err
	}
	return s, nil
}

// refused is login's invalidate for IMAP and POP3: every refusal.
func refused(*Error) bool { return true }

// dialFor connects to t for a login over p; the failure is Unavailable.
func dialFor(ctx context.Context, t Target, p events.Proto) (net.Conn, error) {
	conn, err := t.Dial(ctx)
	if err != nil {
		reason := reasonCannotConnect
		if ctx.Err() != nil {
			reason += " (cancelled)"
		}
		return nil, unavailable(t, p, reason, err)
	}
	return conn, nil
}

// statusLine is an upstream's status reply: a status word, an optional
// bracketed response code (IMAP's RFC 9051 §7.1, POP3's RFC 2449 §8) and
// the text.
type statusLine struct {
	status string
	code   string // without brackets
	text   string
}

func (r *statusLine) String() string {
	s := r.status
	if r.code != "" {
		s += " [" + r.code + "]"
	}
	if r.text != "" {
		s += " " + r.text
	}
	return s
}

// Session is what a logged-in upstream connection of a proxied protocol
// (IMAP, POP3) hands the front end that copies its bytes.
type Session struct {
	// Conn is the connection, TLS unless the target's TLS is "none", with
	// no deadline set.
	Conn net.Conn
	// Pending holds bytes the upstream sent after the reply the relay read
	// last: they belong to the app and go first when bytes are copied.
	Pending []byte
	// Text is the text of the upstream's reply to the login, for the log.
	Text string
	// Warnings are oddities of the login that did not fail it, in plain
	// words for the caller's log.
	Warnings []string
}

// upgrade finishes STARTTLS (IMAP) or STLS (POP3), named by command,
// whose reply r (or failure err) was just read: unless it is the success
// status ok the login is unavailable; bytes the upstream sent after the
// reply, already in br, would be taken as sent under TLS (a
// command-injection attack on STARTTLS) and fail it too. Then the verified
// handshake; it returns the TLS connection and a reader over it.
func (t Target) upgrade(ctx context.Context, p events.Proto, command string, r *statusLine, err error, ok string,
	conn net.Conn, br *bufio.Reader) (net.Conn, *bufio.Reader, error) {
	switch {
	case err != nil:
		return nil, nil, unavailable(t, p, command+" failed", err)
	case r.status != ok:
		return nil, nil, unavailable(t, p, command+" refused: "+r.String(), nil)
	case br.Buffered() > 0:
		return nil, nil, unavailable(t, p, "the upstream sent data after its "+command+" reply", nil)
	}
	tc, err := t.Handshake(ctx, conn)
	if err != nil {
		return nil, nil, unavailable(t, p, "TLS failed", err)
	}
	return tc, bufio.NewReaderSize(tc, upstreamBufferSize), nil
}

// Close closes the connection without logging out.
func (s *Session) Close() error { return s.Conn.Close() }

// afterLogin runs f, a command after login, with ctx's deadline
// (interruptible) and a reader that gives Pending before Conn's bytes; what
// the reader holds unread afterwards is Pending again.
func (s *Session) afterLogin(ctx context.Context, t Target, p events.Proto, br **bufio.Reader, f func() error) error {
	*br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(s.Pending), s.Conn), upstreamBufferSize)
	s.Pending = nil
	defer func() {
		s.Pending = splice.TakeBuffered(*br)
		*br = nil
	}()
	return interruptible(ctx, t, p, s.Conn, f)
}
