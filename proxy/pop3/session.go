package pop3

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

const (
	// maxLineLength bounds a line before login (without CRLF). RFC 2449 §4
	// caps commands at 255 octets, but an AUTH PLAIN response is not a
	// command and a long password may make USER/PASS longer; anything past
	// this is not an app logging in.
	maxLineLength = 8 << 10
	// maxBadCommands is how many rejected commands a client may send before
	// it is disconnected (as the IMAP front end; Dovecot allows 10).
	maxBadCommands = 20
)

// The relay's own replies before login.
const (
	greeting        = "+OK oauthrelay POP3 proxy ready"
	textBye         = "+OK oauthrelay POP3 proxy signing off"
	textShutdown    = "-ERR [SYS/TEMP] Server shutting down"
	textPrivacy     = "-ERR [AUTH] Plaintext authentication is not allowed here; use TLS (STLS)"
	textNotYet      = "-ERR Command not valid before login"
	textUnknown     = "-ERR Unknown command"
	textTooMany     = "-ERR Too many invalid commands"
	textLineTooLong = "-ERR Line too long"
)

// session is one client connection: POP3's AUTHORIZATION state on a
// preauth.Conn.
type session struct {
	*preauth.Conn
	srv *preauth.Server
	log *slog.Logger

	user string // the name of an accepted USER, until PASS
	bad  int    // -ERR replies to commands sent
}

func newSession(c *preauth.Conn) *session {
	return &session{Conn: c, srv: c.Server(), log: c.Log}
}

func (s *session) serve() {
	s.WriteLine(greeting)
	for s.Err() == nil {
		if !s.Wait() {
			s.WriteLine(textShutdown)
			return
		}
		line, err := s.ReadLine(maxLineLength)
		if err != nil {
			switch {
			case errors.Is(err, splice.ErrLineTooLong):
				s.WriteLine(textLineTooLong)
			case s.ReadFailed(err) == preauth.EndShutdown:
				s.WriteLine(textShutdown)
			}
			// RFC 1939 §3: an autologout closes without a response.
			return
		}
		if s.handle(line) {
			return
		}
		if s.bad >= maxBadCommands {
			s.WriteLine(textTooMany)
			return
		}
	}
}

// handle runs one line of the AUTHORIZATION state; true ends the session's
// read loop (QUIT, a line that is not POP3, or logged in and proxied to the
// end).
func (s *session) handle(line []byte) (done bool) {
	name, arg, _ := bytes.Cut(line, []byte{' '})
	cmd := strings.ToUpper(string(name))
	s.debugCommand(cmd)
	switch cmd {
	case "CAPA":
		s.capa()
	case "NOOP":
		s.WriteLine("+OK")
	case "QUIT":
		s.WriteLine(textBye)
		return true
	case "STLS":
		return s.handleSTLS()
	case "USER":
		s.handleUser(string(arg))
	case "PASS":
		return s.handlePass(string(arg))
	case "AUTH":
		return s.handleAuth(string(arg))
	case "":
		s.refuse("-ERR Empty command")
	default:
		if !pop3Commands[cmd] {
			// Another protocol sent to this port (an HTTP request from a
			// browser, whose body could otherwise carry POP3 commands):
			// nothing more it sends is read.
			s.log.Debug("unknown command before login; closing the connection", "command", preauth.Truncate(cmd, 32))
			s.WriteLine(textUnknown)
			return true
		}
		s.refuse(textNotYet)
	}
	return false
}

// pop3Commands are the commands of RFC 1939 and its extensions (RFC 2449,
// 2595, 5034, 6856) and the obsolete ones clients still send (LAST, RPOP,
// XTND). Before login those the relay does not run get -ERR; anything else
// ends the session.
var pop3Commands = map[string]bool{
	"USER": true, "PASS": true, "APOP": true, "QUIT": true, "STAT": true, "LIST": true, "RETR": true,
	"DELE": true, "NOOP": true, "RSET": true, "TOP": true, "UIDL": true, "CAPA": true, "STLS": true,
	"AUTH": true, "UTF8": true, "LANG": true, "LAST": true, "RPOP": true, "XTND": true,
}

// capa answers CAPA (RFC 2449 §5) for the AUTHORIZATION state: USER and
// SASL PLAIN only where a password may be sent now, STLS while it is
// offered, the response codes the relay sends (RFC 2449 §8, RFC 3206 §6),
// and TOP and UIDL, which every server the relay logs in to (Exchange,
// Gmail, Dovecot) has: after login CAPA is the upstream's own.
func (s *session) capa() {
	lines := []string{"+OK Capability list follows", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"}
	if s.StartTLSOffered() {
		lines = append(lines, "STLS")
	}
	if s.PlaintextOK() {
		lines = append(lines, "USER", "SASL PLAIN")
	}
	lines = append(lines, "IMPLEMENTATION oauthrelay", ".")
	for _, l := range lines {
		s.WriteLine(l)
	}
}

// handleSTLS is STLS (RFC 2595 §4): +OK, the handshake, and a fresh
// AUTHORIZATION state (a USER given in the clear is forgotten).
func (s *session) handleSTLS() (done bool) {
	switch {
	case s.srv.Listener().TLS != config.TLSStartTLS:
		s.refuse("-ERR STLS is not available")
		return false
	case s.TLS():
		s.refuse("-ERR TLS is already active")
		return false
	}
	s.WriteLine("+OK Begin TLS negotiation now")
	if !s.StartTLS() {
		return true
	}
	s.user = ""
	return false
}

// refuse sends a -ERR for a command the client should not have sent and
// counts it.
func (s *session) refuse(line string) {
	s.bad++
	s.log.Debug("reply", "line", line)
	s.WriteLine(line)
}

// debugCommand logs a command's name at debug level: never its arguments,
// which are user names, passwords and SASL payloads.
func (s *session) debugCommand(name string) {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("command", "name", preauth.Truncate(name, 32))
	}
}
