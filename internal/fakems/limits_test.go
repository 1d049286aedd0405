package fakems

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// manualClock is a Clock the test moves.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Exchange's limit replies, whole, as the fake must send them.
const (
	wantConcurrent = "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information."
	wantThrottled  = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
	wantQuota      = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
	wantTooMany    = "452 4.5.3 Too many recipients"
)

// rawSMTP is an authenticated SMTP session over a bare socket, so a test
// can pipeline hundreds of RCPTs and read each reply line as sent.
type rawSMTP struct {
	t  *testing.T
	tp *textproto.Conn
}

// dialRaw connects, upgrades with STARTTLS and logs in as user with an
// XOAUTH2 token. The AUTH reply is returned, not checked.
func dialRaw(t *testing.T, s *Server, user, token string) (*rawSMTP, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.SMTPAddr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(time.Minute))
	r := &rawSMTP{t: t, tp: textproto.NewConn(conn)}
	r.expect("", 220)
	r.expect("EHLO test", 250)
	r.expect("STARTTLS", 220)
	tc := tls.Client(conn, s.ClientTLSConfig())
	r.tp = textproto.NewConn(tc)
	r.expect("EHLO test", 250)
	ir := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
	return r, r.cmd("AUTH XOAUTH2 " + ir)
}

// cmd sends line (none if empty) and returns the whole reply as
// "code text" (the last line's text).
func (r *rawSMTP) cmd(line string) string {
	r.t.Helper()
	if line != "" {
		if err := r.tp.PrintfLine("%s", line); err != nil {
			r.t.Fatal(err)
		}
	}
	return r.read()
}

func (r *rawSMTP) read() string {
	r.t.Helper()
	code, msg, err := r.tp.ReadResponse(0)
	if err != nil && code == 0 {
		r.t.Fatalf("reading a reply: %v", err)
	}
	lines := strings.Split(msg, "\n")
	return fmt.Sprintf("%d %s", code, lines[len(lines)-1])
}

func (r *rawSMTP) expect(line string, code int) string {
	r.t.Helper()
	got := r.cmd(line)
	if !strings.HasPrefix(got, fmt.Sprint(code)+" ") {
		r.t.Fatalf("%q: reply %q, want %d", line, got, code)
	}
	return got
}

// send submits one message to n recipients (RCPTs pipelined) and returns
// the reply to the final dot; every RCPT must be accepted.
func (r *rawSMTP) send(from string, n int) string {
	r.t.Helper()
	r.expect("MAIL FROM:<"+from+">", 250)
	r.rcpts(n, n)
	r.expect("DATA", 354)
	return r.cmd("Subject: limits\r\n\r\nx\r\n.")
}

// rcpts pipelines n RCPTs and checks that the first ok are accepted;
// it returns the reply to the first one refused ("" if none).
func (r *rawSMTP) rcpts(n, ok int) string {
	r.t.Helper()
	w := bufio.NewWriter(r.tp.W)
	for i := range n {
		fmt.Fprintf(w, "RCPT TO:<rcpt%d@example.com>\r\n", i)
	}
	if err := w.Flush(); err != nil {
		r.t.Fatal(err)
	}
	if err := r.tp.W.Flush(); err != nil {
		r.t.Fatal(err)
	}
	refused := ""
	for i := range n {
		got := r.read()
		switch {
		case i < ok && !strings.HasPrefix(got, "250 "):
			r.t.Fatalf("RCPT %d: %q, want 250", i+1, got)
		case i >= ok && refused == "":
			refused = got
		}
	}
	return refused
}

func wantPrefix(t *testing.T, what, got, want string) {
	t.Helper()
	if !strings.HasPrefix(got, want) {
		t.Errorf("%s: reply %q, want %q…", what, got, want)
	}
}

func wantCounts(t *testing.T, s *Server, want LimitCounts) {
	t.Helper()
	if got := s.LimitReplies(); got != want {
		t.Errorf("LimitReplies() = %+v, want %+v", got, want)
	}
}

// TestLimitConcurrentConnections: the 4th authenticated session of a
// mailbox gets Exchange's 432 whole, is counted, and holds no slot; the
// slot of a session that ends is free again.
func TestLimitConcurrentConnections(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{SMTPLimits: true})
	tok := s.IssueAccessToken(publicID, alice)
	var held []*rawSMTP
	for i := range 3 {
		r, reply := dialRaw(t, s, alice, tok)
		wantPrefix(t, fmt.Sprint("session ", i+1), reply, "235 ")
		held = append(held, r)
	}
	for i := range 2 {
		_, reply := dialRaw(t, s, alice, tok)
		wantPrefix(t, fmt.Sprint("session ", 4+i), reply, wantConcurrent)
	}
	wantCounts(t, s, LimitCounts{Connections: 2})
	if n := s.PeakSMTPConns(); n != 3 {
		t.Errorf("peak %d sessions of one mailbox, want 3", n)
	}
	if n := s.SMTPLogins(); n != 3 {
		t.Errorf("%d logins, want 3", n)
	}

	held[0].expect("QUIT", 221)
	waitLogin(t, s, alice, tok)
	wantCounts(t, s, LimitCounts{Connections: 2})
}

// waitLogin logs in until a slot is free: the fake frees it when go-smtp
// ends the session, just after the 221.
func waitLogin(t *testing.T, s *Server, user, tok string) {
	t.Helper()
	for range 250 {
		c := dialSMTP(t, s)
		err := c.Auth(sasl.NewXOAuth2Client(user, tok))
		c.Close()
		if err == nil {
			return
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 432 {
			t.Fatalf("login: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the slot of the session that quit was never freed")
}

// TestLimitMessagesPerMinute: the 31st message of a mailbox within a minute
// of its clock, from any of its sessions, gets Exchange's throttling reply
// and is not delivered; the window slides on the clock, not on real time.
func TestLimitMessagesPerMinute(t *testing.T) {
	t.Parallel()
	clk := newManualClock()
	s := newWorld(t, Options{SMTPLimits: true, Clock: clk})
	tok := s.IssueAccessToken(publicID, alice)
	a, _ := dialRaw(t, s, alice, tok)
	b, _ := dialRaw(t, s, alice, tok)
	for i := range 15 {
		wantPrefix(t, fmt.Sprint("message ", i+1), a.send(alice, 1), "250 ")
	}
	clk.advance(30 * time.Second)
	for i := range 15 {
		wantPrefix(t, fmt.Sprint("message ", 16+i), b.send(alice, 1), "250 ")
	}
	wantPrefix(t, "message 31", a.send(alice, 1), wantThrottled)
	wantPrefix(t, "message 31 again", b.send(alice, 1), wantThrottled)
	wantCounts(t, s, LimitCounts{Messages: 2})

	// Another mailbox has its own minute.
	c, _ := dialRaw(t, s, bob, s.IssueAccessToken(publicID, bob))
	wantPrefix(t, "bob's message", c.send(bob, 1), "250 ")

	// A minute after the first 15, they leave the window; the other 15
	// are still in it.
	clk.advance(30*time.Second - time.Millisecond)
	wantPrefix(t, "at 59.999 s", a.send(alice, 1), wantThrottled)
	clk.advance(time.Millisecond)
	for i := range 15 {
		wantPrefix(t, fmt.Sprint("after a minute, message ", i+1), a.send(alice, 1), "250 ")
	}
	wantPrefix(t, "the 16th after a minute", a.send(alice, 1), wantThrottled)
	wantCounts(t, s, LimitCounts{Messages: 4})
	if got, want := len(s.Messages()), 30+1+15; got != want {
		t.Errorf("%d messages delivered, want %d (refused ones are not)", got, want)
	}
}

// TestLimitDailyQuota: a message that would take the mailbox past its
// recipients of the last 24 hours gets Exchange's 554 5.2.0 quota reply;
// the count slides on the clock.
func TestLimitDailyQuota(t *testing.T) {
	t.Parallel()
	clk := newManualClock()
	s := newWorld(t, Options{SMTPLimits: true, RecipientsPerDay: 5, Clock: clk})
	r, _ := dialRaw(t, s, alice, s.IssueAccessToken(publicID, alice))
	wantPrefix(t, "3 recipients", r.send(alice, 3), "250 ")
	clk.advance(time.Hour)
	wantPrefix(t, "3 more recipients", r.send(alice, 3), wantQuota)
	wantPrefix(t, "2 more recipients", r.send(alice, 2), "250 ")
	wantPrefix(t, "the 6th recipient", r.send(alice, 1), wantQuota)
	wantCounts(t, s, LimitCounts{Quota: 2})

	// 24 hours after the first message its 3 recipients free up, not the
	// 2 sent an hour later.
	clk.advance(23 * time.Hour)
	wantPrefix(t, "3 recipients a day later", r.send(alice, 3), "250 ")
	wantPrefix(t, "and one more", r.send(alice, 1), wantQuota)
	wantCounts(t, s, LimitCounts{Quota: 3})
}

// TestLimitDailyQuotaDefault: Exchange's 10,000 recipients a day by
// default: 20 messages of 500 recipients pass, the next recipient does
// not.
func TestLimitDailyQuotaDefault(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{SMTPLimits: true, DiscardData: true})
	r, _ := dialRaw(t, s, alice, s.IssueAccessToken(publicID, alice))
	for i := range 20 {
		wantPrefix(t, fmt.Sprint("message ", i+1, " of 500 recipients"), r.send(alice, 500), "250 ")
	}
	wantPrefix(t, "recipient 10,001", r.send(alice, 1), wantQuota)
	wantCounts(t, s, LimitCounts{Quota: 1})
}

// TestLimitRecipientsPerMessage: the 501st RCPT of a message gets 452
// 4.5.3 (each one past it too, all counted), with or without SMTPLimits,
// and the message goes on with the first 500; RecipientsPerMessage
// changes the limit.
func TestLimitRecipientsPerMessage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts  Options
		limit int
	}{
		{Options{}, 500},
		{Options{SMTPLimits: true}, 500},
		{Options{RecipientsPerMessage: 2}, 2},
	} {
		s := newWorld(t, tc.opts)
		r, _ := dialRaw(t, s, alice, s.IssueAccessToken(publicID, alice))
		r.expect("MAIL FROM:<"+alice+">", 250)
		wantPrefix(t, fmt.Sprint("RCPT ", tc.limit+1), r.rcpts(tc.limit+2, tc.limit), wantTooMany)
		r.expect("DATA", 354)
		wantPrefix(t, "DATA", r.cmd("Subject: many\r\n\r\nx\r\n."), "250 ")
		wantCounts(t, s, LimitCounts{Recipients: 2})
		if m := s.Messages(); len(m) != 1 || len(m[0].To) != tc.limit {
			t.Errorf("%+v: delivered %d messages, want one to %d recipients", tc.opts, len(m), tc.limit)
		}
	}
}

// TestLimitsOff: without SMTPLimits a mailbox may hold more than 3
// sessions and send more than 30 messages a minute, and nothing counts
// as a limit reply.
func TestLimitsOff(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{DiscardData: true})
	tok := s.IssueAccessToken(publicID, alice)
	var rs []*rawSMTP
	for i := range 4 {
		r, reply := dialRaw(t, s, alice, tok)
		wantPrefix(t, fmt.Sprint("session ", i+1), reply, "235 ")
		rs = append(rs, r)
	}
	for i := range 31 {
		wantPrefix(t, fmt.Sprint("message ", i+1), rs[i%4].send(alice, 1), "250 ")
	}
	wantCounts(t, s, LimitCounts{})
}

// TestLatency: SMTPLoginLatency holds the greeting and the AUTH reply,
// SMTPReplyLatency every other reply; each comes no sooner. Close does not
// wait the delays out.
func TestLatency(t *testing.T) {
	t.Parallel()
	const login, reply = 60 * time.Millisecond, 30 * time.Millisecond
	s := newWorld(t, Options{SMTPLoginLatency: login, SMTPReplyLatency: reply})
	tok := s.IssueAccessToken(publicID, alice)

	start := time.Now()
	r, authReply := dialRaw(t, s, alice, tok)
	wantPrefix(t, "AUTH", authReply, "235 ")
	// greeting + AUTH, plus EHLO, STARTTLS, EHLO, AUTH's round trips.
	if got, want := time.Since(start), 2*login+4*reply; got < want {
		t.Errorf("a login took %v, want at least %v", got, want)
	}
	start = time.Now()
	r.expect("NOOP", 250)
	if got := time.Since(start); got < reply {
		t.Errorf("NOOP answered after %v, want at least %v", got, reply)
	}

	slow := newWorld(t, Options{SMTPLoginLatency: time.Hour})
	conn, err := net.Dial("tcp", slow.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Let go-smtp take the connection and begin its greeting.
	for i := 0; ; i++ {
		slow.conns.mu.Lock()
		n := len(slow.conns.socks)
		slow.conns.mu.Unlock()
		if n == 1 {
			break
		}
		if i == 500 {
			t.Fatal("the fake never accepted the connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- slow.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for a greeting delayed by an hour")
	}
}

// TestLatencyPerReply: the delay is added once per reply, however many
// lines it has (go-smtp writes each line of EHLO's reply on its own), and
// the greeting gets the login latency.
func TestLatencyPerReply(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer client.Close()
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(client)
		read <- b
	}()
	var pauses []time.Duration
	const greeting, reply = 1, 2
	c := &smtpConn{Conn: server, raw: server, conns: newConnSet(), ehloHost: exchangeHost,
		lat: latency{greeting: greeting, reply: reply, pause: func(d time.Duration) { pauses = append(pauses, d) }}}
	for _, w := range []string{"220 x ESMTP\r\n", "250-x Hello\r\n", "250-SIZE 1\r\n", "250 AUTH XOAUTH2\r\n", "250 2.0.0 Roger, accepting mail from <a>\r\n"} {
		if _, err := c.Write([]byte(w)); err != nil {
			t.Fatal(err)
		}
	}
	server.Close()
	if got := <-read; bytes.Count(got, []byte("\r\n")) != 5 {
		t.Errorf("wrote %q, want 5 lines", got)
	}
	if want := []time.Duration{greeting, reply, reply}; !slices.Equal(pauses, want) {
		t.Errorf("pauses %v, want %v: one per reply", pauses, want)
	}
}
