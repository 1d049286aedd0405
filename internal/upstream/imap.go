package upstream

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/splice"
)

const (
	// maxUpstreamLine bounds a response line from the upstream while the
	// relay itself speaks to it (the byte copy afterwards has no bound).
	maxUpstreamLine = 64 << 10
	// maxUpstreamLiteral bounds a literal the upstream sends in a response
	// the relay reads (none is expected; it is skipped).
	maxUpstreamLiteral = 1 << 20
	// upstreamBufferSize is the read buffer while the relay speaks to the
	// upstream (longer lines are still read whole, up to maxUpstreamLine).
	upstreamBufferSize = 4 << 10
	// tagPrefix starts the relay's command tags (oar1, oar2...).
	tagPrefix = "oar"
)

// IMAPSession is a logged-in upstream IMAP connection. The front end copies
// bytes between the app and Conn, Pending first; `check` calls Examine and
// Logout. It is not safe for concurrent use.
type IMAPSession struct {
	// Session is the connection; its Pending are the bytes after the reply
	// the relay read last (its tagged OK to the login, or to the last
	// command), its Text the tagged OK's text, its Warnings oddities such
	// as no AUTH=XOAUTH2 advertised or CAPABILITY after login refused.
	Session
	// Caps is the upstream's capability list after login, for the app's
	// OK ("" if the upstream would not tell).
	Caps string

	t   Target
	tag int // last tag number used
	br  *bufio.Reader
}

// imapResponse is one parsed upstream response line: status is OK, NO,
// BAD, BYE, PREAUTH, or the untagged keyword (CAPABILITY).
type imapResponse struct {
	tag string // "*", "+" or a command tag
	statusLine
}

// IMAP gets a token from cred, dials t (STARTTLS when configured) and logs in
// with AUTHENTICATE XOAUTH2 (RFC 9051 §6.2.2, SASL-IR per RFC 4959 when
// offered). On success the session's Caps are the upstream's capabilities
// after login, asked for if its OK carried none, so that the app's OK can
// carry them.
//
// Failures are *Error: Unavailable when the server cannot be reached, says
// BYE, fails TLS or answers NO [UNAVAILABLE]; Refused when it refuses the
// token (NO, BAD, or an error challenge, which is answered with an empty line
// and fails the login whatever the tagged reply says), and the token is then
// invalidated so the next login fetches a new one; the token's own failures
// as TokenError classifies them. The observer hears about every attempt that
// got a token. ctx bounds the whole login and interrupts pending I/O when it
// ends.
func IMAP(ctx context.Context, t Target, cred Credentials) (*IMAPSession, error) {
	// Only a refusal of the login itself drops the token: a mailbox the
	// check cannot open (CheckMailbox) says nothing against it.
	tokenRefused := false
	return login(ctx, t, events.IMAP, cred, func(*Error) bool { return tokenRefused },
		func(ctx context.Context, t Target, tok string) (*IMAPSession, error) {
			s, err := imapLogin(ctx, t, tok)
			if err != nil {
				tokenRefused = true
				return nil, err
			}
			if t.CheckMailbox {
				if err := s.checkMailbox(ctx); err != nil {
					s.Close()
					return nil, err
				}
			}
			return s, nil
		})
}

func imapLogin(ctx context.Context, t Target, token string) (_ *IMAPSession, err error) {
	conn, err := dialFor(ctx, t, events.IMAP)
	if err != nil {
		return nil, err
	}
	s := &IMAPSession{Session: Session{Conn: conn}, t: t, br: bufio.NewReaderSize(conn, upstreamBufferSize)}
	defer func() {
		if err != nil {
			s.Conn.Close()
		}
	}()
	err = s.interruptible(ctx, func() error {
		caps, err := s.greet(ctx)
		if err != nil {
			return err
		}
		return s.authenticate(t.Account.Mailbox, token, caps)
	})
	if err != nil {
		return nil, err
	}
	s.Pending = splice.TakeBuffered(s.br)
	s.br = nil
	return s, nil
}

// interruptible runs f with ctx's deadline on the connection
// (upstream.interruptible).
func (s *IMAPSession) interruptible(ctx context.Context, f func() error) error {
	return interruptible(ctx, s.t, events.IMAP, s.Conn, f)
}

// greet reads the greeting, upgrades with STARTTLS when configured and
// returns the capabilities, asking for them when the greeting has none or
// TLS began after it.
func (s *IMAPSession) greet(ctx context.Context) (string, error) {
	g, err := s.read()
	if err != nil {
		return "", imapUnavailable(s.t, "no greeting", err)
	}
	switch g.status {
	case "OK":
	case "BYE":
		return "", imapUnavailable(s.t, "the upstream said BYE at greeting: "+g.text, nil)
	default:
		return "", imapUnavailable(s.t, "unexpected greeting: "+g.String(), nil)
	}
	caps := capabilityCode(g.code)
	if s.t.Server.TLS == config.TLSStartTLS {
		if err := s.startTLS(ctx); err != nil {
			return "", err
		}
		caps = "" // capabilities before TLS are not to be trusted (RFC 9051 §6.2.1)
	}
	if caps != "" {
		return caps, nil
	}
	r, untagged, err := s.capability()
	if err != nil {
		return "", imapUnavailable(s.t, "CAPABILITY failed", err)
	}
	if r.status != "OK" {
		return "", imapUnavailable(s.t, "CAPABILITY refused: "+r.String(), nil)
	}
	return untagged, nil
}

// startTLS runs STARTTLS (RFC 9051 §6.2.1) and the verified handshake.
func (s *IMAPSession) startTLS(ctx context.Context) error {
	r, err := s.command("STARTTLS", nil)
	var st *statusLine
	if r != nil {
		st = &r.statusLine
	}
	tc, br, err := s.t.upgrade(ctx, events.IMAP, "STARTTLS", st, err, "OK", s.Conn, s.br)
	if err != nil {
		return err
	}
	s.Conn, s.br = tc, br
	return nil
}

// authenticate runs AUTHENTICATE XOAUTH2 and, after an OK without
// capabilities, CAPABILITY.
func (s *IMAPSession) authenticate(user, token, caps string) error {
	if !hasCap(caps, "AUTH=XOAUTH2") {
		s.Warnings = append(s.Warnings, "the upstream does not advertise AUTH=XOAUTH2 ("+caps+"); tried anyway")
	}
	res, err := s.xoauth2(user, token, hasCap(caps, "SASL-IR"))
	if err != nil {
		return imapUnavailable(s.t, "AUTHENTICATE failed", err)
	}
	if res.r.status != "OK" || res.challenged {
		reason := "the upstream refused the token: " + res.r.String()
		if res.challenge != "" {
			reason += " (challenge: " + res.challenge + ")"
		}
		if hint := ExplainIMAP(res.r.text); hint != "" {
			reason += "; " + hint
		}
		if strings.EqualFold(res.r.code, "UNAVAILABLE") {
			return imapUnavailable(s.t, reason, nil)
		}
		return &Error{Kind: Refused, Proto: events.IMAP, Addr: s.t.Server.Addr, Reason: reason}
	}
	s.Text = res.r.text
	s.Caps = capabilityCode(res.r.code)
	if s.Caps == "" {
		s.Caps = res.caps
	}
	if s.Caps != "" {
		return nil
	}
	// Exchange's OK carries no capabilities. Ask, so the app's OK does:
	// apps that never ask again after login (and imapclient, which asks
	// asynchronously) would otherwise go on with the relay's pre-login
	// list and miss IDLE, MOVE, UIDPLUS...
	r, untagged, err := s.capability()
	if err != nil {
		return imapUnavailable(s.t, "CAPABILITY after login failed", err)
	}
	if r.status != "OK" {
		w := "the upstream refused CAPABILITY after login: " + r.String()
		if hint := ExplainIMAP(r.text); hint != "" {
			w += "; " + hint
		}
		s.Warnings = append(s.Warnings, w)
		return nil
	}
	s.Caps = untagged
	return nil
}

type authResult struct {
	r          *imapResponse // the tagged reply
	caps       string        // an untagged CAPABILITY seen during the exchange
	challenged bool          // the server sent a challenge after the token
	challenge  string        // what it says (from its error JSON), for the log
}

// xoauth2 runs AUTHENTICATE XOAUTH2. The token is sent as an initial
// response when the server offers SASL-IR, else after its "+". A challenge
// after the token is the server's error: it is answered with an empty line
// (RFC 7628 §3.2.3, as Google and Microsoft document it for XOAUTH2) and
// the login counts as failed whatever the tagged reply says.
func (s *IMAPSession) xoauth2(user, token string, ir bool) (*authResult, error) {
	b64 := base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(user, token))
	tag := s.nextTag()
	line := tag + " AUTHENTICATE XOAUTH2"
	sent := ir
	if ir {
		line += " " + b64
	}
	if err := s.send(line); err != nil {
		return nil, err
	}
	res := &authResult{}
	for {
		r, err := s.read()
		if err != nil {
			return nil, err
		}
		switch {
		case r.tag == "+" && !sent:
			if err := s.send(b64); err != nil {
				return nil, err
			}
			sent = true
		case r.tag == "+" && res.challenged:
			return nil, errors.New("a second challenge after the empty response")
		case r.tag == "+":
			res.challenged = true
			res.challenge = challengeText(r.text)
			if err := s.send(""); err != nil {
				return nil, err
			}
		case r.tag == "*" && r.status == "CAPABILITY":
			res.caps = r.text
		case r.tag == tag:
			res.r = r
			return res, nil
		}
	}
}

// challengeText is what an XOAUTH2 error challenge says ("status 401"), or
// "" if it is not the JSON Microsoft and Google send.
func challengeText(b64 string) string {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil {
		return ""
	}
	var e sasl.XOAuth2Error
	if json.Unmarshal(b, &e) != nil || e.Status == "" {
		return ""
	}
	return "status " + e.Status
}

// Examine opens mailbox read-only (EXAMINE, RFC 9051 §6.3.3), which shows
// whether the mailbox can be reached at all: Exchange may accept the login
// and only then answer "BAD User is authenticated but not connected". A NO
// or BAD is an *Error with Kind Refused whose Reason explains it; a lost
// connection Kind Unavailable.
func (s *IMAPSession) Examine(ctx context.Context, mailbox string) error {
	q, err := quoteMailbox(mailbox)
	if err != nil {
		return err
	}
	r, bye, err := s.run(ctx, "EXAMINE "+q)
	what := "EXAMINE " + mailbox
	if err != nil {
		reason := what + " failed"
		if bye != "" {
			reason += " (the upstream said " + bye + ")"
		}
		return imapUnavailable(s.t, reason, err)
	}
	if r.status != "OK" {
		reason := what + ": the upstream replied " + r.String()
		if hint := ExplainIMAP(r.text); hint != "" {
			reason += "; " + hint
		}
		return &Error{Kind: Refused, Proto: events.IMAP, Addr: s.t.Server.Addr, Reason: reason}
	}
	return nil
}

// checkMailbox asks for the INBOX's message count (STATUS, RFC 9051
// §6.3.11), which needs the mailbox and changes no state the app sees:
// Exchange accepts an app-only token for a mailbox the app has no
// permission on and fails every command after, so without it the app's
// login would pass and its first command fail. A NO or BAD is an *Error
// with Kind Refused (the token itself was accepted: it is not
// invalidated).
func (s *IMAPSession) checkMailbox(ctx context.Context) error {
	r, bye, err := s.run(ctx, "STATUS INBOX (MESSAGES)")
	if err != nil {
		reason := "STATUS INBOX after login failed"
		if bye != "" {
			reason += " (the upstream said " + bye + ")"
		}
		return imapUnavailable(s.t, reason, err)
	}
	if r.status != "OK" {
		reason := "the upstream accepted the token but cannot open mailbox " + s.t.Account.Mailbox +
			": STATUS INBOX: " + r.String()
		if hint := ExplainIMAP(r.text); hint != "" {
			reason += "; " + hint
		}
		return &Error{Kind: Refused, Proto: events.IMAP, Addr: s.t.Server.Addr, Reason: reason}
	}
	return nil
}

// Logout ends the session (LOGOUT, RFC 9051 §6.1.3) and closes Conn. A
// server that closes after its BYE without the tagged OK has logged out
// too.
func (s *IMAPSession) Logout(ctx context.Context) error {
	defer s.Conn.Close()
	r, bye, err := s.run(ctx, "LOGOUT")
	switch {
	case err != nil && bye != "" && errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return imapUnavailable(s.t, "LOGOUT failed", err)
	case r.status != "OK":
		return &Error{Kind: Refused, Proto: events.IMAP, Addr: s.t.Server.Addr, Reason: "LOGOUT: the upstream replied " + r.String()}
	}
	return nil
}

// run sends a command after login and reads to its tagged reply, noting
// an untagged BYE ("BYE [code] text"); other untagged responses are skipped.
// Pending bytes are read first, and what the upstream sent after the reply
// is Pending again. The error is an I/O error (io.EOF if the upstream
// closed) or a cancelled *Error.
func (s *IMAPSession) run(ctx context.Context, cmd string) (r *imapResponse, bye string, err error) {
	err = s.afterLogin(ctx, s.t, events.IMAP, &s.br, func() error {
		var err error
		r, err = s.command(cmd, func(r *imapResponse) {
			if r.status == "BYE" {
				bye = r.String()
			}
		})
		return err
	})
	return r, bye, err
}

// capability runs CAPABILITY and returns its tagged reply and the list of
// its untagged response.
func (s *IMAPSession) capability() (*imapResponse, string, error) {
	var caps string
	r, err := s.command("CAPABILITY", func(r *imapResponse) {
		if r.status == "CAPABILITY" {
			caps = r.text
		}
	})
	return r, caps, err
}

// command sends "<tag> <name>" and reads to its tagged reply, giving each
// untagged response to f.
func (s *IMAPSession) command(name string, f func(*imapResponse)) (*imapResponse, error) {
	tag := s.nextTag()
	if err := s.send(tag + " " + name); err != nil {
		return nil, err
	}
	for {
		r, err := s.read()
		if err != nil {
			return nil, err
		}
		switch {
		case r.tag == tag:
			return r, nil
		case r.tag == "*" && f != nil:
			f(r)
		case r.tag == "+":
			return nil, fmt.Errorf("unexpected continuation request after %s", name)
		}
	}
}

func (s *IMAPSession) nextTag() string {
	s.tag++
	return tagPrefix + strconv.Itoa(s.tag)
}

func (s *IMAPSession) send(line string) error {
	_, err := io.WriteString(s.Conn, line+"\r\n")
	return err
}

// read reads one response; literals in it are skipped.
func (s *IMAPSession) read() (*imapResponse, error) {
	line, err := splice.ReadLine(s.br, maxUpstreamLine)
	if err != nil {
		return nil, err
	}
	first := line
	for {
		n, _, ok := splice.LiteralMarker(line)
		if !ok {
			break
		}
		if n > maxUpstreamLiteral {
			return nil, errors.New("upstream literal too big")
		}
		if _, err := s.br.Discard(n); err != nil {
			return nil, err
		}
		if line, err = splice.ReadLine(s.br, maxUpstreamLine); err != nil {
			return nil, err
		}
	}
	return parseResponse(string(first)), nil
}

func imapUnavailable(t Target, reason string, err error) *Error {
	return unavailable(t, events.IMAP, reason, err)
}

// parseResponse splits "tag status [code] text". Untagged data responses
// such as "* CAPABILITY a b" have the keyword as status and the rest as
// text.
func parseResponse(line string) *imapResponse {
	r := &imapResponse{}
	r.tag, line, _ = strings.Cut(line, " ")
	if r.tag == "+" {
		r.text = line
		return r
	}
	r.status, line, _ = strings.Cut(line, " ")
	r.status = strings.ToUpper(r.status)
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			r.code = line[1:end]
			line = strings.TrimPrefix(line[end+1:], " ")
		}
	}
	r.text = line
	return r
}

// capabilityCode returns the list of a "CAPABILITY ..." response code.
func capabilityCode(code string) string {
	name, rest, _ := strings.Cut(code, " ")
	if !strings.EqualFold(name, "CAPABILITY") {
		return ""
	}
	return strings.TrimSpace(rest)
}

func hasCap(caps, c string) bool {
	for _, f := range strings.Fields(caps) {
		if strings.EqualFold(f, c) {
			return true
		}
	}
	return false
}

// quoteMailbox makes an IMAP quoted string of a mailbox name (RFC 9051
// §4.3). Names that need modified UTF-7 or a literal are not supported.
func quoteMailbox(name string) (string, error) {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e {
			return "", fmt.Errorf("mailbox name %q: only printable ASCII is supported", name)
		}
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(name) + `"`, nil
}
