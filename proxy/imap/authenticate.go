package imap

import (
	"strings"

	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

// handleAuthenticate is AUTHENTICATE PLAIN (RFC 9051 §6.2.2, RFC 4616),
// with the response as an initial response (SASL-IR, RFC 4959) or after an
// empty "+ " continuation. "*" cancels; "=" is an empty response.
func (s *session) handleAuthenticate(cmd *command) (done bool) {
	if len(cmd.args) < 1 || len(cmd.args) > 2 || cmd.args[0].kind != atomArg {
		s.reply(cmd.tag, "BAD", "", "AUTHENTICATE expects a mechanism and an optional initial response")
		return false
	}
	if !strings.EqualFold(cmd.args[0].s, "PLAIN") {
		s.reply(cmd.tag, "NO", "", "Unsupported authentication mechanism")
		return false
	}
	if !s.plaintextOK() {
		s.reply(cmd.tag, errPrivacy.status, errPrivacy.code, errPrivacy.text)
		return false
	}

	var resp string
	if len(cmd.args) == 2 {
		if cmd.args[1].kind != atomArg {
			s.reply(cmd.tag, "BAD", "", "Invalid initial response")
			return false
		}
		resp = cmd.args[1].s
	} else {
		s.writeLine("+ ")
		if s.Err() != nil {
			return true
		}
		if !s.Wait() {
			s.writeLine("* BYE Server shutting down")
			return true
		}
		line, err := s.ReadLine(maxLineLength)
		if err == errLineTooLong {
			s.reply(cmd.tag, "BAD", "", "Response too long")
			s.writeLine("* BYE Response too long")
			return true
		} else if err != nil {
			s.log.Debug("read of the AUTHENTICATE response failed", "err", err)
			return true
		}
		resp = string(line)
	}
	if resp == "*" {
		s.reply(cmd.tag, "BAD", "", "Authentication cancelled")
		return false
	}
	msg, ok := preauth.DecodeSASL(resp)
	if !ok {
		s.reply(cmd.tag, "BAD", "", "Invalid base64 data")
		return false
	}
	authz, user, pass, ok := preauth.ParsePlain(msg)
	if !ok {
		s.reply(cmd.tag, "BAD", "", "Invalid PLAIN response")
		return false
	}
	if authz != "" && !strings.EqualFold(authz, user) {
		s.reply(cmd.tag, "NO", "AUTHORIZATIONFAILED", "Authorization identity must be empty or the user name")
		return false
	}
	return s.login(cmd.tag, "AUTHENTICATE PLAIN", user, pass)
}
