package imap

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// loginError maps an upstream login failure to the session's classes: a
// token failure is Relay.Token's own *proxy.LoginError; the upstream's
// refusal is UpstreamRejected.
func loginError(acct *proxy.Account, err error) error {
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

// The replies to a failed login (RFC 5530 response codes). The reason is
// logged, never sent: the app gets one of these fixed texts.
const (
	textAuthFailed  = "Authentication failed."
	textUnavailable = "Service temporarily unavailable, try again later."
	textNeedsAdmin  = "Authentication failed; the relay's administrator has been told why."
)

// handleLogin is LOGIN userid password (RFC 9051 §6.2.3), each an atom, a
// quoted string or a literal.
func (s *session) handleLogin(cmd *command) (done bool) {
	if !s.plaintextOK() {
		s.reply(cmd.tag, errPrivacy.status, errPrivacy.code, errPrivacy.text)
		return false
	}
	if len(cmd.args) != 2 {
		s.reply(cmd.tag, "BAD", "", "LOGIN expects a user name and a password")
		return false
	}
	user, ok1 := cmd.args[0].astring()
	pass, ok2 := cmd.args[1].astring()
	if !ok1 || !ok2 {
		s.reply(cmd.tag, "BAD", "", "LOGIN expects a user name and a password")
		return false
	}
	return s.login(cmd.tag, "LOGIN", user, pass)
}

// login checks the local credentials, gets the account's token, logs in
// upstream and, on success, answers the app's command with the upstream's
// capabilities and copies bytes until the session ends (done is then
// true). On failure the app gets NO and the session continues.
//
// method is "LOGIN" or "AUTHENTICATE <mechanism>": the OK names the
// command the app sent ("LOGIN completed"), not the upstream's text, which
// answers the relay's own AUTHENTICATE XOAUTH2.
func (s *session) login(tag, method, username, password string) (done bool) {
	ctx, cancel := context.WithTimeout(s.srv.ctx, loginTimeout)
	defer cancel()
	relay := s.srv.relay
	obs := relay.Observer()
	addr := proxy.AddrOf(s.remote)
	log := s.log.With("user", username, "method", method)
	if s.client != "" {
		log = log.With("client", s.client)
	}

	acct, err := relay.Login(ctx, addr, username, password)
	if err != nil {
		s.loginFailed(tag, err, log)
		return false
	}
	log = log.With("account", acct.Name)

	start := time.Now()
	up, err := upstream.IMAP(ctx, acct.Target(events.IMAP), relay.Credentials(addr, acct, password))
	took := time.Since(start)
	if err != nil {
		s.loginFailed(tag, loginError(acct, err), log)
		return false
	}
	for _, w := range up.Warnings {
		log.Warn("upstream login", "warning", w)
	}
	if err := s.setUpstream(up.Conn); err != nil {
		log.Debug("session closed during login")
		return true
	}
	obs.Login(events.IMAP, acct.Info(), events.LoginOK)
	log.Info("login", "result", "ok", "upstream", acct.ProviderRef.IMAP.Addr, "upstream_ms", took.Milliseconds(),
		"upstream_text", truncate(up.Text, 64))
	// The session no longer counts against the listener's cap on
	// connections that have not logged in.
	proxy.MarkAuthenticated(s.conn)

	code := ""
	if up.Caps != "" {
		code = "CAPABILITY " + up.Caps
	}
	command, _, _ := strings.Cut(method, " ")
	s.reply(tag, "OK", code, command+" completed")
	if s.werr != nil {
		up.Close()
		log.Debug("client went away at login", "err", s.werr)
		return true
	}
	s.pipe(acct, up, log)
	return true
}

// loginFailed answers a failed login and logs why.
func (s *session) loginFailed(tag string, err error, log *slog.Logger) {
	le := &proxy.LoginError{Failure: proxy.Unavailable, Reason: "internal error", Err: err}
	errors.As(err, &le)
	s.srv.relay.Observer().Login(events.IMAP, le.Account.Info(), le.Failure.Result())
	attrs := []any{"result", le.Failure.String(), "reason", le.Reason}
	if le.Err != nil {
		attrs = append(attrs, "err", le.Err)
	}
	switch le.Failure {
	case proxy.BadCredentials:
		log.Info("login failed", attrs...)
		s.reply(tag, "NO", "AUTHENTICATIONFAILED", textAuthFailed)
	case proxy.NeedsAttention:
		log.Error("login failed: the account needs attention", attrs...)
		s.reply(tag, "NO", "AUTHENTICATIONFAILED", textNeedsAdmin)
	case proxy.UpstreamRejected:
		log.Error("login failed: the upstream refused the token", attrs...)
		s.reply(tag, "NO", "AUTHENTICATIONFAILED", textAuthFailed)
	default:
		log.Warn("login failed: temporarily unavailable", attrs...)
		s.reply(tag, "NO", "UNAVAILABLE", textUnavailable)
	}
}
