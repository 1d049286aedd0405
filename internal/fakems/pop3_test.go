package fakems

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// pop3Client is a raw POP3 client over TLS to the fake.
type pop3Client struct {
	t  *testing.T
	c  *tls.Conn
	br *bufio.Reader
}

func dialPOP3(t *testing.T, s *Server) *pop3Client {
	t.Helper()
	c, err := tls.Dial("tcp", s.POP3Addr, s.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := &pop3Client{t: t, c: c, br: bufio.NewReader(c)}
	if g := p.line(); !strings.HasPrefix(g, "+OK The Microsoft Exchange POP3 service is ready.") {
		t.Fatalf("greeting %q", g)
	}
	return p
}

func (p *pop3Client) line() string {
	p.t.Helper()
	l, err := p.br.ReadString('\n')
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends a line and returns the status line that answers it.
func (p *pop3Client) cmd(line string) string {
	p.t.Helper()
	if _, err := p.c.Write([]byte(line + "\r\n")); err != nil {
		p.t.Fatal(err)
	}
	return p.line()
}

// multi reads a multi-line response's lines up to ".", unstuffed.
func (p *pop3Client) multi() []string {
	p.t.Helper()
	var out []string
	for l := p.line(); l != "."; l = p.line() {
		out = append(out, strings.TrimPrefix(l, "."))
	}
	return out
}

func xoauth2(user, token string) string {
	return base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(user, token))
}

// A POP3 session as Exchange runs it: AUTH XOAUTH2 after "+ ", the seeded
// INBOX (also what IMAP APPEND put there), RETR and TOP dot-stuffed, DELE
// undone by RSET, and DELE applied at QUIT, in the IMAP store too.
func TestPOP3Conversation(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	msgs := []string{
		"Subject: one\r\n\r\nfirst\r\n.hidden dot\r\nline 3\r\n",
		"Subject: two\r\n\r\nsecond\r\n",
	}
	for _, m := range msgs {
		if err := s.AppendIMAP(alice, "INBOX", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AppendIMAP(alice, "Archive", []byte("Subject: not in INBOX\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	ic := dialIMAP(t, s)
	if err := ic.Authenticate(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(daemonID, ""))); err != nil {
		t.Fatal(err)
	}
	third := "Subject: three\r\n\r\nappended over IMAP\r\n"
	cmd := ic.Append("INBOX", int64(len(third)), nil)
	cmd.Write([]byte(third))
	cmd.Close()
	if _, err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	msgs = append(msgs, third)

	p := dialPOP3(t, s)
	if l := p.cmd("CAPA"); l != "+OK" {
		t.Fatalf("CAPA: %q", l)
	}
	if caps := strings.Join(p.multi(), ","); !strings.Contains(caps, "SASL PLAIN XOAUTH2") || !strings.Contains(caps, "UIDL") {
		t.Errorf("CAPA %q", caps)
	}
	if l := p.cmd("STAT"); l != "-ERR Command is not valid in this state." {
		t.Errorf("STAT before login: %q", l)
	}
	if l := p.cmd("AUTH XOAUTH2"); l != "+ " {
		t.Fatalf("AUTH XOAUTH2: %q", l)
	}
	if l := p.cmd(xoauth2(alice, s.IssueAccessToken(publicID, alice))); l != "+OK User successfully authenticated." {
		t.Fatalf("token: %q", l)
	}
	size := 0
	for _, m := range msgs {
		size += len(m)
	}
	if l, want := p.cmd("STAT"), "+OK 3 "+strconv.Itoa(size); l != want {
		t.Errorf("STAT %q, want %q", l, want)
	}
	if l := p.cmd("LIST"); l != "+OK" {
		t.Fatalf("LIST %q", l)
	}
	if got := p.multi(); len(got) != 3 || got[0] != "1 "+strconv.Itoa(len(msgs[0])) {
		t.Errorf("LIST %q", got)
	}
	p.cmd("UIDL")
	uidl := p.multi()
	if len(uidl) != 3 || uidl[0] == uidl[1] {
		t.Errorf("UIDL %q", uidl)
	}
	if l := p.cmd("UIDL 2"); l != "+OK "+uidl[1] {
		t.Errorf("UIDL 2: %q, want +OK %s", l, uidl[1])
	}
	if l := p.cmd("RETR 1"); !strings.HasPrefix(l, "+OK ") {
		t.Fatalf("RETR %q", l)
	}
	if got := strings.Join(p.multi(), "\r\n") + "\r\n"; got != msgs[0] {
		t.Errorf("RETR 1 = %q, want %q", got, msgs[0])
	}
	p.cmd("TOP 1 1")
	if got := p.multi(); strings.Join(got, "|") != "Subject: one||first" {
		t.Errorf("TOP 1 1 = %q", got)
	}
	if l := p.cmd("RETR 9"); l != "-ERR The specified message is out of range." {
		t.Errorf("RETR 9: %q", l)
	}
	p.cmd("DELE 1")
	if l := p.cmd("RETR 1"); !strings.HasPrefix(l, "-ERR") {
		t.Errorf("RETR of a deleted message: %q", l)
	}
	p.cmd("RSET")
	if l := p.cmd("STAT"); !strings.HasPrefix(l, "+OK 3 ") {
		t.Errorf("STAT after RSET %q", l)
	}
	p.cmd("DELE 2")
	if l := p.cmd("QUIT"); !strings.HasPrefix(l, "+OK") {
		t.Errorf("QUIT %q", l)
	}
	st, err := s.IMAPUser(alice).Status("INBOX", &imap.StatusOptions{NumMessages: true})
	if err != nil || *st.NumMessages != 2 {
		t.Errorf("INBOX after DELE 2 and QUIT: %+v %v, want 2 messages", st, err)
	}
}

// Exchange's refusals: a bad or unknown token, a token for another user,
// an app without FullAccess, and Basic authentication.
func TestPOP3Refusals(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	for name, resp := range map[string]string{
		"garbage":       "!!!",
		"unknown token": xoauth2(alice, "not-a-token"),
		"other user":    xoauth2(bob, s.IssueAccessToken(publicID, alice)),
		"no FullAccess": xoauth2(bob, s.IssueAccessToken(daemonID, "")),
	} {
		p := dialPOP3(t, s)
		if l := p.cmd("AUTH XOAUTH2 " + resp); l != "-ERR Authentication failure: unknown user name or bad password." {
			t.Errorf("%s: %q", name, l)
		}
	}
	p := dialPOP3(t, s)
	p.cmd("USER " + alice)
	if l := p.cmd("PASS " + alicePass); !strings.HasPrefix(l, "-ERR Authentication failure") {
		t.Errorf("PASS: %q", l)
	}
	if l := p.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+alice+"\x00"+alicePass))); !strings.HasPrefix(l, "-ERR Authentication failure") {
		t.Errorf("AUTH PLAIN: %q", l)
	}
}
