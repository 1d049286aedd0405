package imap

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// preAuthTimeout is how long a client that has not logged in may take
	// to send its next command (imapserver allows 30 s; RFC 9051 §5.4 sets
	// no minimum before login).
	preAuthTimeout = 60 * time.Second
	// writeTimeout bounds each write of a reply before login.
	writeTimeout = 30 * time.Second
	// tlsHandshakeTimeout bounds the local TLS handshake (implicit TLS and
	// STARTTLS).
	tlsHandshakeTimeout = 30 * time.Second
	// loginTimeout bounds a whole login: throttling, the token, the upstream
	// dial and its XOAUTH2 exchange.
	loginTimeout = 90 * time.Second
	// maxBadCommands is how many rejected commands a client may send before
	// it is disconnected (Dovecot does the same with 10).
	maxBadCommands = 20
	// keepAliveIdle is the TCP keepalive idle time of the client
	// connection: after login there is no read deadline (IDLE may last 30
	// minutes and more), so keepalives find dead peers.
	keepAliveIdle = time.Minute
	// keepAliveInterval and keepAliveCount: a peer that answers none of
	// keepAliveCount probes sent keepAliveInterval apart is dead.
	keepAliveInterval = 15 * time.Second
	keepAliveCount    = 4
)

// session is one client connection.
type session struct {
	srv    *Server
	id     string
	remote net.Addr
	log    *slog.Logger

	// Owned by the session goroutine; conn is replaced after STARTTLS
	// (under mu, for close).
	conn   net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	cr     commandReader
	isTLS  bool
	werr   error  // first write error; the session ends
	client string // the app's ID name and version, for the log
	bad    int    // BAD replies sent

	mu       sync.Mutex
	up       net.Conn // upstream connection, once dialled
	proxying bool     // logged in: bytes are copied, no deadlines
	closed   bool
}

func newSession(srv *Server, c net.Conn) *session {
	s := &session{srv: srv, id: newID(), remote: c.RemoteAddr(), conn: c}
	s.log = srv.log.With("session", s.id, "remote", s.remote.String())
	s.setConn(c)
	s.cr.continuation = func() error {
		s.writeLine("+ Ready for literal data")
		return s.werr
	}
	s.cr.mayLiteral = s.mayLiteral
	return s
}

// newID returns a short random session id for the log.
func newID() string {
	b := make([]byte, 5)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.EncodeToString(b))
}

func (s *session) setConn(c net.Conn) {
	s.mu.Lock()
	s.conn = c
	s.mu.Unlock()
	s.br = bufio.NewReader(c)
	s.bw = bufio.NewWriter(c)
	s.cr.br = s.br
}

// interrupt asks a session that has not logged in to say BYE and end
// (Shutdown): its pending read fails at once and the loop sees the flag.
// Logged-in sessions are left alone.
func (s *session) interrupt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.proxying && !s.closed {
		s.conn.SetReadDeadline(time.Now())
	}
}

// close closes the client and upstream connections. A TLS connection's
// socket is closed directly: tls.Conn.Close would first try to send
// close_notify, which can block for seconds on a peer that does not read,
// and Server.Close calls this with the server's lock held. (A clean end of
// the copy has already sent close_notify with CloseWrite.)
func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	closeSocket(s.conn)
	if s.up != nil {
		closeSocket(s.up)
	}
}

func closeSocket(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn() // the proxy.Listener's connection: closing it frees its slot
	}
	c.Close()
}

// setUpstream registers the upstream connection so close reaches it.
func (s *session) setUpstream(c net.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return net.ErrClosed
	}
	s.up = c
	return nil
}

func (s *session) serve() {
	obs := s.srv.relay.Observer()
	obs.Connection(events.IMAP, 1)
	defer obs.Connection(events.IMAP, -1)
	defer s.close()
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic in IMAP session", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	s.log.Debug("connected")

	if tc, ok := s.conn.(*tls.Conn); ok || s.srv.lc.TLS == config.TLSImplicit {
		if !ok {
			tc = tls.Server(s.conn, s.srv.tls)
			s.setConn(tc)
		}
		tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
		if err := tc.Handshake(); err != nil {
			s.log.Debug("TLS handshake failed", "err", err)
			return
		}
		s.isTLS = true
	}
	setKeepAlive(s.conn)

	s.writeLine("* OK [CAPABILITY " + s.capabilities() + "] oauthrelay IMAP proxy ready")
	for s.werr == nil {
		s.conn.SetReadDeadline(time.Now().Add(s.srv.preAuthTimeout))
		// Checked after setting the deadline: a Shutdown that comes later
		// moves the deadline to now (see interrupt).
		if s.srv.shutdown.Load() {
			s.writeLine("* BYE Server shutting down")
			return
		}
		cmd, err := s.cr.read()
		if err != nil {
			var ce *cmdError
			var ne net.Error
			switch {
			case errors.As(err, &ce):
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
			case s.srv.shutdown.Load():
				s.writeLine("* BYE Server shutting down")
			case errors.As(err, &ne) && ne.Timeout():
				s.writeLine("* BYE Autologout; idle for too long")
				s.log.Debug("pre-auth timeout")
			case errors.Is(err, io.EOF):
				s.log.Debug("client closed the connection")
			default:
				s.log.Debug("read failed", "err", err)
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
	if s.werr != nil {
		s.log.Debug("write failed", "err", s.werr)
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
	s.log.Debug("unknown command before login; closing the connection", "command", truncate(name, 32))
	s.writeLine("* BYE Unknown command")
}

// capabilities is the pre-authentication capability list.
func (s *session) capabilities() string {
	caps := []string{"IMAP4rev1", "SASL-IR", "LITERAL+", "ID"}
	if s.srv.lc.TLS == config.TLSStartTLS && !s.isTLS {
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
func (s *session) plaintextOK() bool {
	return proxy.PlaintextAuthAllowed(s.srv.lc, s.remote, s.isTLS)
}

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
	case s.srv.lc.TLS != config.TLSStartTLS:
		s.reply(cmd.tag, "BAD", "", "STARTTLS is not available")
		return false
	case s.isTLS:
		s.reply(cmd.tag, "BAD", "", "TLS is already active")
		return false
	}
	s.reply(cmd.tag, "OK", "", "Begin TLS negotiation now")
	if s.werr != nil {
		return true
	}
	if n := s.br.Buffered(); n > 0 {
		// Plaintext sent after STARTTLS would be taken as if it had come
		// over TLS (command injection, CVE-2011-0411 style): drop it.
		s.log.Warn("discarding plaintext pipelined after STARTTLS", "bytes", n)
		s.br.Discard(n)
	}
	tc := tls.Server(s.conn, s.srv.tls)
	tc.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		s.log.Debug("STARTTLS handshake failed", "err", err)
		return true
	}
	tc.SetDeadline(time.Time{})
	s.setConn(tc)
	s.isTLS = true
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

// writeLine sends one line and flushes it. The first error sticks in werr.
func (s *session) writeLine(line string) {
	if s.werr != nil {
		return
	}
	s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	s.bw.WriteString(line)
	s.bw.WriteString("\r\n")
	s.werr = s.bw.Flush()
}

// setKeepAlive turns on TCP keepalive on c's TCP connection, found under
// the wrappers (tls.Conn, proxy.Listener's) that unwrap with NetConn.
func setKeepAlive(c net.Conn) {
	for range maxUnwrap {
		switch v := c.(type) {
		case *net.TCPConn:
			v.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: keepAliveIdle, Interval: keepAliveInterval, Count: keepAliveCount})
			return
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return
		}
	}
}

// maxUnwrap bounds the walk down connection wrappers in setKeepAlive.
const maxUnwrap = 8

// truncate cuts s to at most n bytes, for logging what a client sent.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
