package imap

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

const (
	// maxBadCommands is how many rejected commands a client may send before
	// it is disconnected (Dovecot does the same with 10).
	maxBadCommands = 20
)

// session is one client connection: IMAP's state before login on a
// preauth.Conn.
type session struct {
	*preauth.Conn
	srv *preauth.Server
	log *slog.Logger

	cr     commandReader
	client string // the app's ID name and version, for the log
	bad    int    // BAD replies sent
}

func newSession(c *preauth.Conn) *session {
	s := &session{Conn: c, srv: c.Server(), log: c.Log}
	s.cr.br = c.Reader()
	s.cr.continuation = func() error {
		s.writeLine("+ Ready for literal data")
		return s.Err()
	}
	s.cr.mayLiteral = s.mayLiteral
	return s
}

func (s *session) serve() {
	s.writeLine("* OK [CAPABILITY " + s.capabilities() + "] oauthrelay IMAP proxy ready")
	for s.Err() == nil {
		if !s.Wait() {
			s.writeLine("* BYE Server shutting down")
			return
		}
		cmd, err := s.cr.read()
		if err != nil {
			var ce *cmdError
			if errors.As(err, &ce) {
				if ce.name != "" && !knownCommand(ce.name) {
					s.unknownCommand(ce.name)
					return
				}
				s.replyError(ce)
				if ce.fatal {
					s.writeLine("* BYE " + ce.text)
					return
				}
				if s.bad >= maxBadCommands {
					s.writeLine("* BYE Too many invalid commands")
					return
				}
				continue
			}
			switch s.ReadFailed(err) {
			case preauth.EndShutdown:
				s.writeLine("* BYE Server shutting down")
			case preauth.EndTimeout:
				s.writeLine("* BYE Autologout; idle for too long")
			}
			return
		}
		if s.handle(cmd) {
			return
		}
		if s.bad >= maxBadCommands {
			s.writeLine("* BYE Too many invalid commands")
			return
		}
	}
}

// handle runs one pre-authentication command; true ends the session's read
// loop (logged out, or logged in and proxied to the end).
func (s *session) handle(cmd *command) (done bool) {
	s.debugCommand(cmd)
	switch cmd.name {
	case "CAPABILITY":
		if len(cmd.args) != 0 {
			s.reply(cmd.tag, "BAD", "", "CAPABILITY takes no arguments")
			return false
		}
		s.writeLine("* CAPABILITY " + s.capabilities())
		s.reply(cmd.tag, "OK", "", "CAPABILITY completed")
	case "NOOP":
		s.reply(cmd.tag, "OK", "", "NOOP completed")
	case "LOGOUT":
		s.writeLine("* BYE oauthrelay logging out")
		s.reply(cmd.tag, "OK", "", "LOGOUT completed")
		return true
	case "ID":
		s.handleID(cmd)
	case "STARTTLS":
		return s.handleStartTLS(cmd)
	case "LOGIN":
		return s.handleLogin(cmd)
	case "AUTHENTICATE":
		return s.handleAuthenticate(cmd)
	default:
		if !knownCommand(cmd.name) {
			s.unknownCommand(cmd.name)
			return true
		}
		s.reply(cmd.tag, "BAD", "", "Command unknown or not valid before login")
	}
	return false
}

// imapCommands are the commands of IMAP4rev1 (RFC 3501), IMAP4rev2
// (RFC 9051) and the extensions clients commonly send. Before login those
// the proxy does not run get BAD (a client may try one too early), and
// anything else ends the session (unknownCommand).
var imapCommands = map[string]bool{
	"CAPABILITY": true, "NOOP": true, "LOGOUT": true, "STARTTLS": true, "AUTHENTICATE": true, "LOGIN": true,
	"ENABLE": true, "SELECT": true, "EXAMINE": true, "CREATE": true, "DELETE": true, "RENAME": true,
	"SUBSCRIBE": true, "UNSUBSCRIBE": true, "LIST": true, "LSUB": true, "NAMESPACE": true, "STATUS": true,
	"APPEND": true, "IDLE": true, "CHECK": true, "CLOSE": true, "UNSELECT": true, "EXPUNGE": true,
	"SEARCH": true, "FETCH": true, "STORE": true, "COPY": true, "MOVE": true, "UID": true,
	"ID": true, "COMPRESS": true, "UNAUTHENTICATE": true, "XLIST": true, "NOTIFY": true, "REPLACE": true,
	"SORT": true, "THREAD": true, "ESEARCH": true, "GETQUOTA": true, "GETQUOTAROOT": true, "SETQUOTA": true,
	"GETACL": true, "SETACL": true, "DELETEACL": true, "LISTRIGHTS": true, "MYRIGHTS": true,
	"GETMETADATA": true, "SETMETADATA": true,
}

// knownCommand reports whether name (upper case) is an IMAP command.
func knownCommand(name string) bool { return imapCommands[name] }

// unknownCommand ends a session whose client sent, before login, a command
// that is not IMAP: it is most likely another protocol sent to this port
// (an HTTP request from a browser, whose body could otherwise carry IMAP
// commands), so nothing more it sends is read. Only a BYE is sent (RFC 9051
// §7.1.5), as go-imap's imapserver does.
func (s *session) unknownCommand(name string) {
	s.log.Debug("unknown command before login; closing the connection", "command", preauth.Truncate(name, 32))
	s.writeLine("* BYE Unknown command")
}

// capabilities is the pre-authentication capability list.
func (s *session) capabilities() string {
	caps := []string{"IMAP4rev1", "SASL-IR", "LITERAL+", "ID"}
	if s.StartTLSOffered() {
		caps = append(caps, "STARTTLS")
	}
	if s.plaintextOK() {
		caps = append(caps, "AUTH=PLAIN")
	} else {
		caps = append(caps, "LOGINDISABLED")
	}
	return strings.Join(caps, " ")
}

// plaintextOK reports whether the client may send a password now.
func (s *session) plaintextOK() bool { return s.PlaintextOK() }

var errPrivacy = &cmdError{status: "NO", code: "PRIVACYREQUIRED", text: "Plaintext login is not allowed here; use TLS (STARTTLS)"}

// mayLiteral is the commandReader's literal policy: only LOGIN and ID take
// literals before login, and LOGIN only where a password may be sent.
func (s *session) mayLiteral(tag, name string) *cmdError {
	switch name {
	case "ID":
		return nil
	case "LOGIN":
		if s.plaintextOK() {
			return nil
		}
		e := *errPrivacy
		e.tag = tag
		return &e
	}
	// Fatal for a command that is not IMAP: the session ends without
	// reading the literal (see unknownCommand).
	return &cmdError{tag: tag, status: "BAD", text: "Command unknown or not valid before login", fatal: !knownCommand(name)}
}

func (s *session) handleID(cmd *command) {
	if len(cmd.args) != 1 || (!cmd.args[0].isNil() && cmd.args[0].kind != listArg) {
		s.reply(cmd.tag, "BAD", "", "ID expects NIL or a parenthesized list")
		return
	}
	var fields []string
	for i, a := range cmd.args[0].list {
		v, ok := a.astring()
		if !ok {
			s.reply(cmd.tag, "BAD", "", "ID expects strings")
			return
		}
		if i%2 == 0 {
			v = strings.ToLower(v)
		} else if a.isNil() {
			v = ""
		}
		fields = append(fields, v)
	}
	for i := 0; i+1 < len(fields); i += 2 {
		if (fields[i] == "name" || fields[i] == "version") && len(fields[i+1]) <= 64 {
			s.client = strings.TrimSpace(s.client + " " + fields[i+1])
		}
	}
	s.writeLine(`* ID ("name" "oauthrelay")`)
	s.reply(cmd.tag, "OK", "", "ID completed")
}

func (s *session) handleStartTLS(cmd *command) (done bool) {
	switch {
	case s.Server().Listener().TLS != config.TLSStartTLS:
		s.reply(cmd.tag, "BAD", "", "STARTTLS is not available")
		return false
	case s.TLS():
		s.reply(cmd.tag, "BAD", "", "TLS is already active")
		return false
	}
	s.reply(cmd.tag, "OK", "", "Begin TLS negotiation now")
	if !s.StartTLS() {
		return true
	}
	s.cr.br = s.Reader()
	return false
}

// reply sends a tagged (or, with an empty tag, untagged) status response.
func (s *session) reply(tag, status, code, text string) {
	if tag == "" {
		tag = "*"
	}
	if status == "BAD" {
		s.bad++
	}
	line := tag + " " + status + " "
	if code != "" {
		line += "[" + code + "] "
	}
	s.log.Debug("reply", "line", line+text)
	s.writeLine(line + text)
}

// debugCommand logs a pre-authentication command at debug level. The
// arguments of LOGIN and AUTHENTICATE (user names and passwords, SASL
// payloads) never reach the log: only the command and its argument count.
func (s *session) debugCommand(cmd *command) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	switch cmd.name {
	case "LOGIN", "AUTHENTICATE":
		s.log.Debug("command", "tag", cmd.tag, "name", cmd.name, "args", "[redacted]", "nargs", len(cmd.args))
	default:
		s.log.Debug("command", "tag", cmd.tag, "name", cmd.name, "nargs", len(cmd.args))
	}
}

func (s *session) replyError(e *cmdError) { s.reply(e.tag, e.status, e.code, e.text) }

// writeLine sends one line and flushes it (preauth.Conn.WriteLine).
func (s *session) writeLine(line string) { s.WriteLine(line) }
