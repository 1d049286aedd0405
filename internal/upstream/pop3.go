package upstream

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/splice"
)

// maxPOP3Line bounds a reply line from a POP3 upstream while the relay
// itself reads it: RFC 2449 §4 allows 512 octets; the bound leaves room
// for servers that send more (an XOAUTH2 error challenge, a long greeting).
const maxPOP3Line = 8 << 10

// POP3Session is a logged-in upstream POP3 connection (RFC 1939, in the
// TRANSACTION state). The front end copies bytes between the app and Conn,
// Pending first; `check` calls Stat and Quit. It is not safe for concurrent
// use.
type POP3Session struct {
	// Session is the connection; its Pending are the bytes after the +OK
	// to the login (or to the last command), its Text that +OK's text.
	Session

	t  Target
	br *bufio.Reader
}

// pop3Reply is one POP3 status line: status is +OK, -ERR, or "+" for a
// continuation of AUTH (RFC 5034 §4); the code is RFC 2449 §8's / RFC
// 3206's.
type pop3Reply = statusLine

// POP3 gets a token from cred, dials t (STLS, RFC 2595 §4, when the target
// says starttls) and logs in with AUTH XOAUTH2 (RFC 5034): the command
// without an initial response, whose 255-octet bound (RFC 5034 §4) no
// token fits, then the token after the server's "+", as Microsoft
// documents it.
//
// Failures are *Error, as for IMAP: Unavailable when the server cannot be
// reached, fails TLS, greets with -ERR or answers -ERR [SYS/TEMP] or
// [IN-USE] (RFC 2449 §8.1.1, RFC 3206 §4); Refused when it refuses the
// token (any other -ERR, or an error challenge, which is answered with an
// empty line and fails the login whatever follows), and the token is then
// invalidated; the token's own failures as TokenError classifies them. The
// observer hears about every attempt that got a token. ctx bounds the whole
// login and interrupts pending I/O when it ends.
func POP3(ctx context.Context, t Target, cred Credentials) (*POP3Session, error) {
	return login(ctx, t, events.POP3, cred, refused, pop3Login)
}

func pop3Login(ctx context.Context, t Target, token string) (_ *POP3Session, err error) {
	conn, err := dialFor(ctx, t, events.POP3)
	if err != nil {
		return nil, err
	}
	s := &POP3Session{Session: Session{Conn: conn}, t: t, br: bufio.NewReaderSize(conn, upstreamBufferSize)}
	defer func() {
		if err != nil {
			s.Conn.Close()
		}
	}()
	err = interruptible(ctx, t, events.POP3, conn, func() error {
		if err := s.greet(ctx); err != nil {
			return err
		}
		return s.authenticate(t.Account.Mailbox, token)
	})
	if err != nil {
		return nil, err
	}
	s.Pending = splice.TakeBuffered(s.br)
	s.br = nil
	return s, nil
}

// greet reads the greeting and upgrades with STLS when configured.
func (s *POP3Session) greet(ctx context.Context) error {
	g, err := s.read()
	if err != nil {
		return pop3Unavailable(s.t, "no greeting", err)
	}
	if g.status != "+OK" {
		return pop3Unavailable(s.t, "unexpected greeting: "+g.String(), nil)
	}
	if s.t.Server.TLS != config.TLSStartTLS {
		return nil
	}
	r, err := s.command("STLS")
	tc, br, err := s.t.upgrade(ctx, events.POP3, "STLS", r, err, "+OK", s.Conn, s.br)
	if err != nil {
		return err
	}
	s.Conn, s.br = tc, br
	return nil
}

// authenticate runs AUTH XOAUTH2. A challenge after the token is the
// server's error: it is answered with an empty line (RFC 7628 §3.2.3, as
// Google and Microsoft document it for XOAUTH2) and the login fails.
func (s *POP3Session) authenticate(user, token string) error {
	r, err := s.command("AUTH XOAUTH2")
	if err != nil {
		return pop3Unavailable(s.t, "AUTH failed", err)
	}
	challenge := ""
	if r.status == "+" {
		b64 := base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(user, token))
		if r, err = s.command(b64); err != nil {
			return pop3Unavailable(s.t, "AUTH failed", err)
		}
		if r.status == "+" {
			challenge = challengeText(r.text)
			if r, err = s.command(""); err != nil {
				return pop3Unavailable(s.t, "AUTH failed after an error challenge", err)
			}
		}
	}
	if r.status == "+OK" && challenge == "" {
		s.Text = r.text
		return nil
	}
	reason := "the upstream refused the token: " + r.String()
	if challenge != "" {
		reason += " (challenge: " + challenge + ")"
	}
	if hint := ExplainPOP3(r.text); hint != "" {
		reason += "; " + hint
	}
	if r.status == "-ERR" && pop3Temporary(r.code) {
		return pop3Unavailable(s.t, reason, nil)
	}
	return &Error{Kind: Refused, Proto: events.POP3, Addr: s.t.Server.Addr, Reason: reason}
}

// pop3Temporary reports whether a -ERR response code says the failure is
// temporary: SYS/TEMP (RFC 3206 §4) and IN-USE (RFC 2449 §8.1.1).
func pop3Temporary(code string) bool {
	return strings.EqualFold(code, "SYS/TEMP") || strings.EqualFold(code, "IN-USE")
}

// Stat runs STAT (RFC 1939 §5), which shows the maildrop can be read: the
// number of messages and their size in octets. A -ERR is an *Error with
// Kind Refused; a lost connection Kind Unavailable.
func (s *POP3Session) Stat(ctx context.Context) (count int, size int64, err error) {
	r, err := s.run(ctx, "STAT")
	if err != nil {
		return 0, 0, pop3Unavailable(s.t, "STAT failed", err)
	}
	if r.status != "+OK" {
		return 0, 0, &Error{Kind: Refused, Proto: events.POP3, Addr: s.t.Server.Addr, Reason: "STAT: the upstream replied " + r.String()}
	}
	f := strings.Fields(r.text)
	if len(f) >= 2 {
		count, err1 := strconv.Atoi(f[0])
		size, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 == nil && err2 == nil {
			return count, size, nil
		}
	}
	return 0, 0, pop3Unavailable(s.t, "STAT: unexpected reply "+r.String(), nil)
}

// Quit ends the session (QUIT, RFC 1939 §6: nothing is deleted that was
// not marked) and closes Conn.
func (s *POP3Session) Quit(ctx context.Context) error {
	defer s.Conn.Close()
	r, err := s.run(ctx, "QUIT")
	switch {
	case err != nil:
		return pop3Unavailable(s.t, "QUIT failed", err)
	case r.status != "+OK":
		return &Error{Kind: Refused, Proto: events.POP3, Addr: s.t.Server.Addr, Reason: "QUIT: the upstream replied " + r.String()}
	}
	return nil
}

// run sends a command after login and reads its status line, Pending
// first.
func (s *POP3Session) run(ctx context.Context, cmd string) (r *pop3Reply, err error) {
	err = s.afterLogin(ctx, s.t, events.POP3, &s.br, func() error {
		var err error
		r, err = s.command(cmd)
		return err
	})
	return r, err
}

// command sends one line and reads the status line that answers it.
func (s *POP3Session) command(line string) (*pop3Reply, error) {
	if _, err := io.WriteString(s.Conn, line+"\r\n"); err != nil {
		return nil, err
	}
	return s.read()
}

// read reads one status line.
func (s *POP3Session) read() (*pop3Reply, error) {
	line, err := splice.ReadLine(s.br, maxPOP3Line)
	if err != nil {
		return nil, err
	}
	return parsePOP3Reply(string(line))
}

// parsePOP3Reply splits "+OK|-ERR [code] text" or "+ challenge".
func parsePOP3Reply(line string) (*pop3Reply, error) {
	status, rest, _ := strings.Cut(line, " ")
	r := &pop3Reply{status: strings.ToUpper(status)}
	switch r.status {
	case "+":
		r.text = rest
		return r, nil
	case "+OK", "-ERR":
	default:
		return nil, fmt.Errorf("not a POP3 status line: %q", truncateReply(line))
	}
	if strings.HasPrefix(rest, "[") {
		if end := strings.IndexByte(rest, ']'); end > 0 {
			r.code = rest[1:end]
			rest = strings.TrimPrefix(rest[end+1:], " ")
		}
	}
	r.text = rest
	return r, nil
}

// truncateReply keeps an unexpected line short in errors.
func truncateReply(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func pop3Unavailable(t Target, reason string, err error) *Error {
	return unavailable(t, events.POP3, reason, err)
}
