package imap

import (
	"context"
	"strings"

	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

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

// login logs in through preauth.Conn.Login with upstream.IMAP and, on
// success, answers the app's command with the upstream's capabilities and
// copies bytes until the session ends (done is then true). On failure the
// app gets NO and the session continues.
//
// method is "LOGIN" or "AUTHENTICATE <mechanism>": the OK names the
// command the app sent ("LOGIN completed"), not the upstream's text, which
// answers the relay's own AUTHENTICATE XOAUTH2.
func (s *session) login(tag, method, username, password string) (done bool) {
	log := s.log.With("user", username, "method", method)
	if s.client != "" {
		log = log.With("client", s.client)
	}
	var caps string
	dial := func(ctx context.Context, t upstream.Target, cred upstream.Credentials) (*preauth.Upstream, error) {
		up, err := upstream.IMAP(ctx, t, cred)
		if err != nil {
			return nil, err
		}
		caps = up.Caps
		return &up.Session, nil
	}
	sess, le, closed := s.Login(log, username, password, dial)
	switch {
	case closed:
		return true
	case le != nil:
		s.loginFailed(tag, le)
		return false
	}
	code := ""
	if caps != "" {
		code = "CAPABILITY " + caps
	}
	command, _, _ := strings.Cut(method, " ")
	s.reply(tag, "OK", code, command+" completed")
	if s.Err() != nil {
		sess.Up.Conn.Close()
		sess.Log.Debug("client went away at login", "err", s.Err())
		return true
	}
	s.cr.br = nil // the copy drops the read buffer
	s.Pipe(sess)
	return true
}

// loginFailed answers a failed login (already logged by preauth).
func (s *session) loginFailed(tag string, le *proxy.LoginError) {
	switch le.Failure {
	case proxy.BadCredentials, proxy.UpstreamRejected:
		s.reply(tag, "NO", "AUTHENTICATIONFAILED", textAuthFailed)
	case proxy.NeedsAttention:
		s.reply(tag, "NO", "AUTHENTICATIONFAILED", textNeedsAdmin)
	default:
		s.reply(tag, "NO", "UNAVAILABLE", textUnavailable)
	}
}
