package preauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// loginTimeout bounds a whole login: throttling, the token, the
	// upstream dial and its XOAUTH2 exchange.
	loginTimeout = 90 * time.Second
	// closeGrace is how long the second direction of the copy may go on
	// after the first one ended.
	closeGrace = splice.DefaultCloseGrace
)

// Upstream is a logged-in upstream connection as a front end's dial returns
// it.
type Upstream = upstream.Session

// Dial logs in upstream for a front end's protocol: upstream.IMAP,
// upstream.POP3.
type Dial func(ctx context.Context, t upstream.Target, cred upstream.Credentials) (*Upstream, error)

// Session is a logged-in session, ready for the app's success reply and
// then Pipe.
type Session struct {
	Account *proxy.Account
	Up      *Upstream
	// Log carries the account and the login's fields.
	Log *slog.Logger
}

// Login is the login path of every proxied front end: the local login
// (Relay.Login: lookup, password, throttle), then dial with the account's
// target for the server's protocol and the session's Credentials. On
// success the observer and the log hear of it and the connection no longer
// counts against the listener's cap on connections that have not logged
// in; the front end answers the app and calls Pipe.
//
// A failure is a *proxy.LoginError, already logged and observed: the front
// end maps its Failure to its protocol's reply. Closed is true (with a nil
// error and session) when the session was closed during the login; the
// front end ends without a reply.
func (c *Conn) Login(log *slog.Logger, username, password string, dial Dial) (_ *Session, le *proxy.LoginError, closed bool) {
	ctx, cancel := context.WithTimeout(c.srv.ctx, loginTimeout)
	defer cancel()
	relay := c.srv.relay
	proto := c.srv.proto.Proto
	addr := proxy.AddrOf(c.Remote)

	acct, err := relay.Login(ctx, addr, username, password)
	if err != nil {
		return nil, c.loginFailed(loginError(nil, err), log), false
	}
	log = log.With("account", acct.Name)

	t := acct.Target(proto)
	start := time.Now()
	up, err := dial(ctx, t, relay.Credentials(addr, acct, password))
	took := time.Since(start)
	if err != nil {
		return nil, c.loginFailed(loginError(acct, err), log), false
	}
	for _, w := range up.Warnings {
		log.Warn("upstream login", "warning", w)
	}
	if err := c.setUpstream(up.Conn); err != nil {
		log.Debug("session closed during login")
		return nil, nil, true
	}
	relay.Observer().Login(proto, acct.Info(), events.LoginOK)
	log.Info("login", "result", "ok", "upstream", t.Server.Addr, "upstream_ms", took.Milliseconds(),
		"upstream_text", Truncate(up.Text, 64))
	// The session no longer counts against the listener's cap on
	// connections that have not logged in.
	proxy.MarkAuthenticated(c.conn)
	return &Session{Account: acct, Up: up, Log: log}, nil, false
}

// loginError maps a login failure to the session's classes: the local
// login's and a token failure are Relay's own *proxy.LoginError; the
// upstream's refusal is UpstreamRejected, its NeedsSignIn NeedsAttention.
func loginError(acct *proxy.Account, err error) *proxy.LoginError {
	var le *proxy.LoginError
	if errors.As(err, &le) {
		return le
	}
	le = &proxy.LoginError{Failure: proxy.Unavailable, Account: acct, Reason: "upstream login failed", Err: err}
	var e *upstream.Error
	if errors.As(err, &e) {
		le.Reason, le.Err = e.Reason, e.Err
		switch e.Kind {
		case upstream.Refused:
			le.Failure = proxy.UpstreamRejected
		case upstream.NeedsSignIn:
			le.Failure = proxy.NeedsAttention
		}
	}
	return le
}

// loginFailed reports a failed login to the observer and the log, at the
// level its class deserves, and returns it.
func (c *Conn) loginFailed(le *proxy.LoginError, log *slog.Logger) *proxy.LoginError {
	c.srv.relay.Observer().Login(c.srv.proto.Proto, le.Account.Info(), le.Failure.Result())
	attrs := []any{"result", le.Failure.String(), "reason", le.Reason}
	if le.Err != nil {
		attrs = append(attrs, "err", le.Err)
	}
	switch le.Failure {
	case proxy.BadCredentials:
		log.Info("login failed", attrs...)
	case proxy.NeedsAttention:
		log.Error("login failed: the account needs attention", attrs...)
	case proxy.UpstreamRejected:
		log.Error("login failed: the upstream refused the token", attrs...)
	default:
		log.Warn("login failed: temporarily unavailable", attrs...)
	}
	return le
}

// Pipe hands the session over to the byte copy between the app and the
// logged-in upstream (splice.Start) and returns at once; the front end's
// Serve then returns, and its goroutine with it. When both directions have
// ended, the copy reports the bytes and ends the session. What the app
// pipelined after its login goes upstream first; the connection's read
// buffer is dropped before the copy (a front end must drop its own
// references to Reader too), so an idle session holds only the copy's two
// goroutines and small buffers.
func (c *Conn) Pipe(s *Session) {
	c.mu.Lock()
	c.proxying = true
	client := c.conn
	c.mu.Unlock()
	fromApp := splice.TakeBuffered(c.br)
	c.br, c.bw = nil, nil
	c.spliced = true
	fromUp := s.Up.Pending
	s.Up.Pending = nil
	obs, proto := c.srv.relay.Observer(), c.srv.proto.Proto
	splice.Start(client, s.Up.Conn, fromApp, fromUp, splice.Options{CloseGrace: closeGrace, Close: c.close, Logger: s.Log},
		func(r splice.Result) {
			obs.Transferred(proto, s.Account.Info(), r.In, r.Out)
			s.Log.Info("session ended", "bytes_in", r.In, "bytes_out", r.Out, "closed_first", string(r.ClosedFirst),
				"duration", r.Duration.Round(time.Millisecond).String())
			c.end()
		})
}

// DecodeSASL decodes a base64 SASL response; "=" and "" are empty
// (RFC 4959, RFC 5034 §4). Padding may be left out.
func DecodeSASL(s string) ([]byte, bool) {
	if s == "=" || s == "" {
		return nil, true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	return b, err == nil
}

// ParsePlain splits a PLAIN message: authzid NUL authcid NUL passwd
// (RFC 4616 §2).
func ParsePlain(msg []byte) (authz, user, pass string, ok bool) {
	parts := bytes.Split(msg, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return "", "", "", false
	}
	return string(parts[0]), string(parts[1]), string(parts[2]), true
}
