package pop3

import (
	"context"
	"errors"
	"strings"

	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

// The replies to a login (RFC 3206 response codes, advertised with
// AUTH-RESP-CODE). The reason of a failure is logged, never sent: the app
// gets one of these fixed texts.
const (
	textLoggedIn    = "+OK Logged in."
	textAuthFailed  = "-ERR [AUTH] Authentication failed."
	textNeedsAdmin  = "-ERR [AUTH] Authentication failed; the relay's administrator has been told why."
	textUnavailable = "-ERR [SYS/TEMP] Service temporarily unavailable, try again later."
)

// handleUser is USER name (RFC 1939 §7): remembered for PASS.
func (s *session) handleUser(name string) {
	switch {
	case !s.PlaintextOK():
		s.refuse(textPrivacy)
	case name == "":
		s.refuse("-ERR USER expects a user name")
	default:
		s.user = name
		s.WriteLine("+OK")
	}
}

// handlePass is PASS password (RFC 1939 §7) after USER: the rest of the line
// is the password, spaces included, as the RFC allows.
func (s *session) handlePass(password string) (done bool) {
	switch {
	case !s.PlaintextOK():
		s.refuse(textPrivacy)
		return false
	case s.user == "":
		s.refuse("-ERR USER first")
		return false
	}
	user := s.user
	s.user = ""
	return s.login("USER", user, password)
}

// handleAuth is AUTH PLAIN (RFC 5034 §4, RFC 4616) with the response as an
// initial response or after an empty "+ " challenge; "*" cancels, "=" is an
// empty response. AUTH alone lists the mechanisms, as servers did before
// CAPA (clients such as fetchmail still ask).
func (s *session) handleAuth(arg string) (done bool) {
	mech, resp, hasResp := strings.Cut(arg, " ")
	switch {
	case mech == "":
		s.WriteLine("+OK")
		if s.PlaintextOK() {
			s.WriteLine("PLAIN")
		}
		s.WriteLine(".")
		return false
	case !strings.EqualFold(mech, "PLAIN"):
		s.refuse("-ERR Unsupported authentication mechanism")
		return false
	case !s.PlaintextOK():
		s.refuse(textPrivacy)
		return false
	}
	s.user = ""
	if !hasResp {
		s.WriteLine("+ ")
		if s.Err() != nil {
			return true
		}
		if !s.Wait() {
			s.WriteLine(textShutdown)
			return true
		}
		line, err := s.ReadLine(maxLineLength)
		if err != nil {
			s.log.Debug("read of the AUTH response failed", "err", err)
			if errors.Is(err, splice.ErrLineTooLong) {
				s.WriteLine(textLineTooLong)
			}
			return true
		}
		resp = string(line)
	}
	if resp == "*" {
		s.refuse("-ERR Authentication cancelled")
		return false
	}
	msg, ok := preauth.DecodeSASL(resp)
	if !ok {
		s.refuse("-ERR Invalid base64 data")
		return false
	}
	authz, user, pass, ok := preauth.ParsePlain(msg)
	if !ok {
		s.refuse("-ERR Invalid PLAIN response")
		return false
	}
	if authz != "" && !strings.EqualFold(authz, user) {
		s.refuse("-ERR [AUTH] Authorization identity must be empty or the user name")
		return false
	}
	return s.login("AUTH PLAIN", user, pass)
}

// login logs in through preauth.Conn.Login with upstream.POP3 and, on
// success, answers +OK and copies bytes until the session ends (done is
// then true). On failure the app gets -ERR with the RFC 3206 code of the
// failure's class and the session stays in the AUTHORIZATION state.
func (s *session) login(method, username, password string) (done bool) {
	log := s.log.With("user", username, "method", method)
	dial := func(ctx context.Context, t upstream.Target, cred upstream.Credentials) (*preauth.Upstream, error) {
		up, err := upstream.POP3(ctx, t, cred)
		if err != nil {
			return nil, err
		}
		return &up.Session, nil
	}
	sess, le, closed := s.Login(log, username, password, dial)
	switch {
	case closed:
		return true
	case le != nil:
		s.WriteLine(failureReply(le.Failure))
		return false
	}
	s.WriteLine(textLoggedIn)
	if s.Err() != nil {
		sess.Up.Conn.Close()
		sess.Log.Debug("client went away at login", "err", s.Err())
		return true
	}
	s.Pipe(sess)
	return true
}

// failureReply is the app's reply to a failed login of class f.
func failureReply(f proxy.Failure) string {
	switch f {
	case proxy.BadCredentials, proxy.UpstreamRejected:
		return textAuthFailed
	case proxy.NeedsAttention:
		return textNeedsAdmin
	}
	return textUnavailable
}
