package imap

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// maxUpstreamLine bounds a response line from the upstream during
	// login (the byte copy afterwards has no bound).
	maxUpstreamLine = 64 << 10
	// maxUpstreamLiteral bounds a literal the upstream sends during login
	// (none is expected; it is skipped).
	maxUpstreamLiteral = 1 << 20
	// upstreamBufferSize is the read buffer of the upstream connection
	// during login (lines longer than it are still read whole).
	upstreamBufferSize = 4 << 10
)

// upstream is a logged-in upstream connection.
type upstream struct {
	conn net.Conn
	br   *bufio.Reader // may hold bytes that followed the tagged OK
	caps string        // capability list for the app's OK; "" if unknown
	text string        // text of the upstream's tagged OK
}

// upConn speaks to the upstream during login.
type upConn struct {
	s    *session
	conn net.Conn
	br   *bufio.Reader
}

// response is one parsed upstream response line.
type response struct {
	tag    string // "*", "+" or a command tag
	status string // OK, NO, BAD, BYE, PREAUTH, or the untagged keyword (CAPABILITY)
	code   string // response code without brackets
	text   string // the rest
}

// connectUpstream dials the account's IMAP server and logs in with
// AUTHENTICATE XOAUTH2. Failures are *proxy.LoginError: Unavailable when
// the server cannot be reached or says BYE, UpstreamRejected when it refuses
// the token.
func (s *session) connectUpstream(ctx context.Context, acct *proxy.Account, token string, log *slog.Logger) (*upstream, error) {
	cfg := acct.ProviderRef.IMAP
	unavailable := func(reason string, err error) error {
		return &proxy.LoginError{Failure: proxy.Unavailable, Account: acct, Reason: reason, Err: err}
	}
	conn, err := s.srv.relay.Dial(ctx, acct, cfg)
	if err != nil {
		return nil, unavailable("upstream unreachable", err)
	}
	if err := s.setUpstream(conn); err != nil {
		return nil, unavailable("session closed", err)
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	// A cancelled login (timeout, Close) breaks off any pending I/O.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if dl, has := ctx.Deadline(); has {
		conn.SetDeadline(dl)
	}

	u := &upConn{s: s, conn: conn, br: bufio.NewReaderSize(conn, upstreamBufferSize)}
	g, err := u.read()
	if err != nil {
		return nil, unavailable("no greeting from upstream", err)
	}
	log.Debug("upstream greeting", "status", g.status, "text", g.text)
	switch g.status {
	case "OK":
	case "BYE":
		return nil, unavailable("upstream said BYE at greeting: "+g.text, nil)
	default:
		return nil, unavailable("unexpected upstream greeting: "+g.status+" "+g.text, nil)
	}
	caps := capabilityCode(g.code)

	if cfg.TLS == config.TLSStartTLS {
		r, err := u.command("STARTTLS", nil)
		if err != nil {
			return nil, unavailable("upstream STARTTLS failed", err)
		}
		if r.status != "OK" {
			return nil, unavailable("upstream refused STARTTLS: "+r.status+" "+r.text, nil)
		}
		if u.br.Buffered() > 0 {
			return nil, unavailable("upstream sent data after its STARTTLS reply", nil)
		}
		tc, err := s.srv.relay.ClientTLS(ctx, conn, acct, cfg.Addr)
		if err != nil {
			return nil, unavailable("upstream TLS failed", err)
		}
		u.conn = tc
		u.br = bufio.NewReaderSize(tc, upstreamBufferSize)
		caps = "" // capabilities before TLS are not to be trusted (RFC 9051 §6.2.1)
	}
	if caps == "" {
		var untagged string
		r, err := u.command("CAPABILITY", func(r *response) {
			if r.status == "CAPABILITY" {
				untagged = r.text
			}
		})
		if err != nil {
			return nil, unavailable("upstream CAPABILITY failed", err)
		}
		if r.status != "OK" {
			return nil, unavailable("upstream CAPABILITY failed: "+r.status+" "+r.text, nil)
		}
		caps = untagged
	}
	if !hasCap(caps, "AUTH=XOAUTH2") {
		log.Warn("upstream does not advertise AUTH=XOAUTH2; trying it anyway", "capabilities", caps)
	}

	res, err := u.authenticate(acct.Mailbox, token, hasCap(caps, "SASL-IR"), log)
	if err != nil {
		return nil, unavailable("upstream AUTHENTICATE failed", err)
	}
	if res.r.status != "OK" || res.challenged {
		reason := fmt.Sprintf("upstream refused the token: %s %s", res.r.status, res.r.text)
		if res.challenge != "" {
			reason += " (challenge: " + res.challenge + ")"
		}
		if hint := proxy.ExplainIMAP(res.r.text); hint != "" {
			reason += "; " + hint
		}
		if strings.EqualFold(res.r.code, "UNAVAILABLE") {
			return nil, unavailable(reason, nil)
		}
		return nil, &proxy.LoginError{Failure: proxy.UpstreamRejected, Account: acct, Reason: reason}
	}
	up := &upstream{caps: capabilityCode(res.r.code), text: res.r.text}
	if up.caps == "" {
		up.caps = res.caps
	}
	if up.caps == "" {
		// Exchange's OK carries no capabilities. Ask, so the app's OK
		// does: apps that never ask again after login (and imapclient,
		// which asks asynchronously) would otherwise go on with the
		// proxy's pre-login list and miss IDLE, MOVE, UIDPLUS...
		r, err := u.command("CAPABILITY", func(r *response) {
			if r.status == "CAPABILITY" {
				up.caps = r.text
			}
		})
		if err != nil {
			return nil, unavailable("upstream CAPABILITY after login failed", err)
		}
		if r.status != "OK" {
			up.caps = ""
			log.Warn("upstream refused CAPABILITY after login", "status", r.status, "text", r.text,
				"hint", proxy.ExplainIMAP(r.text))
		}
	}
	if !stop() {
		return nil, unavailable("login cancelled", ctx.Err())
	}
	u.conn.SetDeadline(time.Time{})
	ok = true
	up.conn, up.br = u.conn, u.br
	return up, nil
}

type authResult struct {
	r          *response // the tagged reply
	caps       string    // an untagged CAPABILITY seen during the exchange
	challenged bool      // the server sent a challenge after the token
	challenge  string    // its decoded text (an error JSON), for the log
}

// authenticate runs AUTHENTICATE XOAUTH2. The token is sent as an initial
// response when the server offers SASL-IR, else after its "+". A challenge
// after the token is the server's error: it is answered with an empty line
// and the login counts as failed whatever the tagged reply says.
func (u *upConn) authenticate(user, token string, ir bool, log *slog.Logger) (*authResult, error) {
	b64 := base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(user, token))
	tag := u.nextTag()
	line := tag + " AUTHENTICATE XOAUTH2"
	sent := ir
	if ir {
		line += " " + b64
	}
	if err := u.send(line); err != nil {
		return nil, err
	}
	res := &authResult{}
	for {
		r, err := u.read()
		if err != nil {
			return nil, err
		}
		switch {
		case r.tag == "+" && !sent:
			if err := u.send(b64); err != nil {
				return nil, err
			}
			sent = true
		case r.tag == "+":
			res.challenged = true
			if b, ok := decodeBase64(strings.TrimSpace(r.text)); ok {
				var e sasl.XOAuth2Error
				if json.Unmarshal(b, &e) == nil {
					res.challenge = "status " + e.Status
				}
			}
			if err := u.send(""); err != nil {
				return nil, err
			}
		case r.tag == "*" && r.status == "CAPABILITY":
			res.caps = r.text
		case r.tag == "*":
			log.Debug("upstream untagged response during login", "status", r.status, "text", r.text)
		case r.tag == tag:
			res.r = r
			return res, nil
		}
	}
}

// command sends "<tag> <name>" and reads to its tagged reply, giving each
// untagged response to f.
func (u *upConn) command(name string, f func(*response)) (*response, error) {
	tag := u.nextTag()
	if err := u.send(tag + " " + name); err != nil {
		return nil, err
	}
	for {
		r, err := u.read()
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

func (u *upConn) nextTag() string {
	u.s.upTag++
	return "oar" + strconv.Itoa(u.s.upTag)
}

func (u *upConn) send(line string) error {
	_, err := io.WriteString(u.conn, line+"\r\n")
	return err
}

// read reads one response; literals in it are skipped.
func (u *upConn) read() (*response, error) {
	line, err := readLine(u.br, maxUpstreamLine)
	if err != nil {
		return nil, err
	}
	first := line
	for {
		n, _, ok := literalMarker(line)
		if !ok {
			break
		}
		if n > maxUpstreamLiteral {
			return nil, errors.New("upstream literal too big")
		}
		if _, err := u.br.Discard(n); err != nil {
			return nil, err
		}
		if line, err = readLine(u.br, maxUpstreamLine); err != nil {
			return nil, err
		}
	}
	return parseResponse(string(first)), nil
}

// parseResponse splits "tag status [code] text". Untagged data responses
// such as "* CAPABILITY a b" have the keyword as status and the rest as
// text.
func parseResponse(line string) *response {
	r := &response{}
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
