package imap

import (
	"bytes"
	"encoding/base64"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/splice"
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
		if s.werr != nil {
			return true
		}
		s.conn.SetReadDeadline(time.Now().Add(s.srv.preAuthTimeout))
		if s.srv.shutdown.Load() {
			s.writeLine("* BYE Server shutting down")
			return true
		}
		line, err := splice.ReadLine(s.br, maxLineLength)
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
	msg, ok := decodeBase64(resp)
	if !ok {
		s.reply(cmd.tag, "BAD", "", "Invalid base64 data")
		return false
	}
	authz, user, pass, ok := parsePlain(msg)
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

// decodeBase64 decodes a SASL response; "=" and "" are empty (RFC 4959).
// Padding may be left out.
func decodeBase64(s string) ([]byte, bool) {
	if s == "=" || s == "" {
		return nil, true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	return b, err == nil
}

// parsePlain splits a PLAIN message: authzid NUL authcid NUL passwd
// (RFC 4616 §2).
func parsePlain(msg []byte) (authz, user, pass string, ok bool) {
	parts := bytes.Split(msg, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return "", "", "", false
	}
	return string(parts[0]), string(parts[1]), string(parts[2]), true
}
