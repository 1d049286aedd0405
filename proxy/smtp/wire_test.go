package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// Regression tests for what the wire fixes in go-smtp's reading of the
// client (see wire.go). Timeouts are shortened through worldOptions.tune so
// that they expire; no test asserts how fast anything is.

// transcript collects what the relay sends on c until it closes the
// connection (or the deadline passes), in the background.
type transcript struct {
	done chan struct{}
	text string
	err  error
}

func collect(c net.Conn) *transcript {
	tr := &transcript{done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		b, err := io.ReadAll(c)
		tr.text, tr.err = string(b), err
	}()
	return tr
}

// wait returns everything the relay sent; closed is false when the
// connection was still open at the test deadline.
func (tr *transcript) wait() (text string, closed bool) {
	<-tr.done
	return tr.text, tr.err == nil || !isTimeout(tr.err)
}

// inTransaction returns a raw session after EHLO and AUTH, with a
// transaction open for recipient.
func (w *world) inTransaction() *rawSession {
	s := w.raw()
	s.want("EHLO app.test", "250")
	s.want("AUTH PLAIN "+plainIR(username, password), "235")
	s.want("MAIL FROM:<"+mailbox+">", "250")
	s.want("RCPT TO:<"+recipient+">", "250")
	return s
}

// deliverOther sends one more message on a new connection and checks it is
// the only one the upstream ever got: an earlier message was not delivered,
// even late.
func (w *world) deliverOther(t *testing.T) {
	t.Helper()
	if _, err := send(w.login(), mailbox, []string{recipient}, message(mailbox, recipient, "the other", "x")); err != nil {
		t.Fatal(err)
	}
	msgs := w.waitMessages(1)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Subject: the other") {
		t.Fatalf("upstream got %d messages, first %q; want only the other one", len(msgs), msgs[0].Data)
	}
}

// waitLog waits (boundedly) for the relay to log substr.
func (w *world) waitLog(t *testing.T, substr string) {
	t.Helper()
	for i := 0; i < 200 && !strings.Contains(w.log.String(), substr); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(w.log.String(), substr) {
		t.Fatalf("the relay did not log %q", substr)
	}
}

// A BDAT chunk announced as 1000 bytes that ends after 45 (the client
// half-closes) is not a message: go-smtp passed the 45 bytes on as one and
// the app got 250.
func TestBDATShortLastChunkNotDelivered(t *testing.T) {
	w := newWorld(t, worldOptions{})
	s := w.inTransaction()
	part := "Subject: cut\r\n\r\n" + strings.Repeat("x", 45-16-2) + "\r\n" // 45 bytes
	fmt.Fprintf(s.c, "BDAT 1000 LAST\r\n%s", part)
	s.c.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(s.r)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if !strings.HasPrefix(string(rest), "421 4.4.2 ") || strings.Count(string(rest), "\r\n") != 1 {
		t.Fatalf("relay answered %q; want one 421 4.4.2 and the connection closed", rest)
	}
	if !strings.Contains(string(rest), "not delivered") {
		t.Errorf("reply %q does not say the message was not delivered", rest)
	}
	w.waitLog(t, "client connection ended in the middle of a message")
	w.deliverOther(t)
}

// A pause inside DATA longer than the data idle timeout ends the
// connection with 421 saying the client timed out, and what the client
// sends afterwards is never read as commands (go-smtp answered "upstream
// lost" and then ran the rest of the body as MAIL/RCPT/DATA).
func TestDataTimeoutEndsConnection(t *testing.T) {
	w := newWorld(t, worldOptions{tune: func(s *Server) { s.DataTimeout = 300 * time.Millisecond }})
	s := w.inTransaction()
	s.want("DATA", "354")
	tr := collect(s.c)
	io.WriteString(s.c, "Subject: stalled\r\n\r\nfirst line\r\n")
	time.Sleep(time.Second) // past DataTimeout
	io.WriteString(s.c, "MAIL FROM:<"+mailbox+">\r\nRCPT TO:<intruder@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n")
	text, closed := tr.wait()
	if !strings.HasPrefix(text, "421 4.4.2 ") || !strings.Contains(text, "Timeout") || strings.Count(text, "\r\n") != 1 {
		t.Fatalf("after the pause the relay sent %q; want one 421 4.4.2 timeout reply", text)
	}
	if !closed {
		t.Fatal("connection still open after the 421")
	}
	w.waitLog(t, "message from the app ended early: not delivered")
	if strings.Contains(w.log.String(), "upstream connection lost") {
		t.Error("the client's timeout was logged as a lost upstream")
	}
	w.deliverOther(t)
	for _, m := range w.ms.Messages() {
		for _, to := range m.To {
			if to == "intruder@example.net" {
				t.Fatal("the body after the timeout was run as a transaction")
			}
		}
	}
}

// The data timeout bounds pauses, not the transfer: a message sent a line
// at a time, each well within the timeout, for several times the timeout
// in total, is delivered whole (go-smtp's per-command deadline cut it).
func TestSlowDataWithinIdleTimeout(t *testing.T) {
	w := newWorld(t, worldOptions{tune: func(s *Server) { s.DataTimeout = 400 * time.Millisecond }})
	s := w.inTransaction()
	s.want("DATA", "354")
	body := "Subject: slow link\r\n\r\n"
	io.WriteString(s.c, body)
	for i := 0; i < 12; i++ {
		line := fmt.Sprintf("line %d\r\n", i)
		body += line
		io.WriteString(s.c, line)
		time.Sleep(100 * time.Millisecond)
	}
	s.want(".", "250")
	if m := w.waitMessages(1)[0]; string(m.Data) != body {
		t.Fatalf("upstream got %q, want %q", m.Data, body)
	}
}

// A command line trickled a byte at a time must be complete within
// LineTimeout of its first byte; the partial line is not executed (go-smtp
// answered "NOOP xxx" with 250 after 5 minutes and kept the connection).
func TestSlowCommandLineIsCut(t *testing.T) {
	w := newWorld(t, worldOptions{tune: func(s *Server) { s.LineTimeout = 500 * time.Millisecond }})
	s := w.raw()
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	tr := collect(s.c)
	for _, b := range []byte("NOOP xxx\r\n") {
		s.c.Write([]byte{b})
		time.Sleep(100 * time.Millisecond)
	}
	text, closed := tr.wait()
	if !strings.HasPrefix(text, "421 4.4.2 ") || strings.Contains(text, "250") || !closed {
		t.Fatalf("relay sent %q (closed %v); want 421 4.4.2 and the connection closed, never 250", text, closed)
	}
}

// A partial command line when the idle timeout expires is dropped, not run
// (bufio's ReadLine returns the partial line and swallows the timeout).
func TestPartialLineAtIdleTimeoutNotExecuted(t *testing.T) {
	w := newWorld(t, worldOptions{tune: func(s *Server) { s.CommandTimeout = 400 * time.Millisecond }})
	s := w.raw()
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	tr := collect(s.c)
	io.WriteString(s.c, "NOOP")
	text, closed := tr.wait()
	if !strings.HasPrefix(text, "421 4.4.2 ") || strings.Contains(text, "250") || !closed {
		t.Fatalf("relay sent %q (closed %v); want 421 4.4.2 and the connection closed, the partial NOOP not run", text, closed)
	}
}

// An HTTP request (a browser tricked into the SMTP port) closes the
// connection at once, unanswered, as its first command or later.
func TestHTTPRequestClosesConnection(t *testing.T) {
	for _, tc := range []struct {
		name, before, request string
	}{
		{"GET first", "", "GET / HTTP/1.1\r\nHost: 127.0.0.1:25\r\n\r\n"},
		{"POST after EHLO", "EHLO app.test", "POST /x HTTP/1.0\r\nContent-Length: 4\r\n\r\nQUIT"},
		{"CONNECT", "", "CONNECT smtp.example:25 HTTP/1.1\r\n\r\n"},
		{"other method", "EHLO app.test", "PROPFIND /dav HTTP/1.1\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{})
			s := w.raw()
			if tc.before != "" {
				s.want(tc.before, "250")
			}
			s.c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(s.c, tc.request)
			rest, err := io.ReadAll(s.r)
			if err != nil || len(rest) > 0 {
				t.Fatalf("after the HTTP request the relay sent %q (%v); want the connection closed without a reply", rest, err)
			}
		})
	}
}

// A line that starts with "." and a bare CR loses the transparency dot and
// nothing else (RFC 5321 §4.5.2; net/textproto's DotReader and Postfix read
// it so). go-smtp's reader, which the fake upstream uses too, dropped the
// CR as well: ".\rX" arrived as "X".
func TestDotFollowedByCR(t *testing.T) {
	lines := []struct{ sent, meant string }{
		{".\rX\r\n", "\rX\r\n"},
		{"..\rX\r\n", ".\rX\r\n"},
		{"..\r\n", ".\r\n"},
		{"...x\r\n", "..x\r\n"},
		{".\r.\r\n", "\r.\r\n"},
		{"a.\rb\r\n", "a.\rb\r\n"},
	}
	sent, meant := "Subject: dots\r\n\r\n", "Subject: dots\r\n\r\n"
	for _, l := range lines {
		sent += l.sent
		meant += l.meant
	}
	w := newWorld(t, worldOptions{})
	s := w.inTransaction()
	s.want("DATA", "354")
	io.WriteString(s.c, sent)
	s.want(".", "250")
	if got := string(w.waitMessages(1)[0].Data); got != meant {
		t.Fatalf("DATA: upstream got %q, want %q", got, meant)
	}
	// BDAT is not dot-stuffed: the same bytes arrive as they are.
	s.want("MAIL FROM:<"+mailbox+">", "250")
	s.want("RCPT TO:<"+recipient+">", "250")
	fmt.Fprintf(s.c, "BDAT %d LAST\r\n%s", len(sent), sent)
	s.expect("250")
	if got := string(w.waitMessages(2)[1].Data); got != sent {
		t.Fatalf("BDAT: upstream got %q, want %q", got, sent)
	}
}

// Shutdown tells a session waiting for a command outside a transaction
// 421 4.3.2 (errShuttingDown, unused before), while one in the middle of a
// transaction finishes it and QUITs normally.
func TestShutdownTellsIdleSessions(t *testing.T) {
	w := newWorld(t, worldOptions{})
	idle := w.raw()
	idle.want("EHLO app.test", "250")
	idle.want("AUTH PLAIN "+plainIR(username, password), "235")
	idle.c.SetDeadline(time.Now().Add(10 * time.Second))
	tr := collect(idle.c)
	busy := w.login()
	if err := busy.Mail(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	if err := busy.Rcpt(recipient, nil); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- w.srv.Shutdown(ctx) }()

	text, closed := tr.wait()
	if !strings.HasPrefix(text, "421 4.3.2 ") || !closed {
		t.Errorf("idle session at shutdown got %q (closed %v); want 421 4.3.2 and the connection closed", text, closed)
	}
	wc, err := busy.Data()
	if err != nil {
		t.Fatalf("DATA during shutdown: %v", err)
	}
	io.WriteString(wc, message(mailbox, recipient, "in flight", "finish me"))
	if err := wc.Close(); err != nil {
		t.Fatalf("end of DATA during shutdown: %v", err)
	}
	if err := busy.Quit(); err != nil {
		t.Errorf("QUIT during shutdown: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if m := w.waitMessages(1)[0]; !strings.Contains(string(m.Data), "Subject: in flight") {
		t.Errorf("upstream got %q", m.Data)
	}
}

// The wire performs STARTTLS itself and hands the connection to a fresh
// go-smtp connection: everything before TLS is forgotten (RFC 3207 §4.2),
// EHLO no longer offers STARTTLS, and commands pipelined after STARTTLS in
// the clear are taken as TLS bytes, never run.
func TestSTARTTLSStartsAfresh(t *testing.T) {
	w := newWorld(t, worldOptions{listenTLS: "starttls"})
	s := w.raw()
	if l := s.cmd("EHLO app.test"); !strings.Contains(l, "250") {
		t.Fatalf("EHLO: %q", l)
	}
	// A transaction opened in the clear (loopback may AUTH without TLS).
	s.want("AUTH PLAIN "+plainIR(username, password), "235")
	s.want("MAIL FROM:<"+mailbox+">", "250")
	s.want("STARTTLS", "220")
	tc := tls.Client(s.c, w.cert.ClientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	ts := &rawSession{t: t, c: tc, r: bufio.NewReader(tc)}
	ts.want("RCPT TO:<"+recipient+">", "502") // go-smtp's "please introduce yourself": nothing kept
	var ehlo []string
	fmt.Fprintf(tc, "EHLO app.test\r\n")
	for {
		l, err := ts.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		ehlo = append(ehlo, l)
		if len(l) < 4 || l[3] != '-' {
			break
		}
	}
	if e := strings.Join(ehlo, ""); strings.Contains(e, "STARTTLS") || !strings.Contains(e, "AUTH PLAIN") {
		t.Fatalf("EHLO after STARTTLS: %q", e)
	}
	ts.want("RCPT TO:<"+recipient+">", "502") // the MAIL before TLS is gone
	ts.want("AUTH PLAIN "+plainIR(username, password), "235")
	ts.want("MAIL FROM:<"+mailbox+">", "250")
	ts.want("RCPT TO:<"+recipient+">", "250")
	ts.want("DATA", "354")
	fmt.Fprintf(tc, "Subject: after STARTTLS\r\n\r\nx\r\n")
	ts.want(".", "250")
	if m := w.waitMessages(1)[0]; !strings.Contains(string(m.Data), "Subject: after STARTTLS") {
		t.Fatalf("upstream got %q", m.Data)
	}

	// Commands sent right behind STARTTLS in the clear are not commands.
	s2 := w.raw()
	s2.want("EHLO app.test", "250")
	io.WriteString(s2.c, "STARTTLS\r\nNOOP\r\nQUIT\r\n")
	s2.expect("220")
	rest, _ := io.ReadAll(s2.r)
	if strings.Contains(string(rest), "250") || strings.Contains(string(rest), "221") {
		t.Fatalf("commands pipelined after STARTTLS were run: %q", rest)
	}
}

// A body over the advertised SIZE is refused with 552 after its end (the
// wire reads the rest and drops it), and the session goes on.
func TestDataTooLargeSessionGoesOn(t *testing.T) {
	w := newWorld(t, worldOptions{ms: fakems.Options{SMTPMaxMessageBytes: 10000}})
	c := w.login()
	_, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "big", strings.Repeat("y", 20000)))
	wantCode(t, err, 552, "5.3.4")
	if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "small", "x")); err != nil {
		t.Fatalf("after the refused message: %v", err)
	}
	if msgs := w.waitMessages(1); len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Subject: small") {
		t.Fatalf("upstream got %d messages", len(msgs))
	}
}

// A command line longer than maxCommandLine closes the connection with 500;
// no part of it is run.
func TestLongCommandLineClosesConnection(t *testing.T) {
	w := newWorld(t, worldOptions{})
	s := w.raw()
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	tr := collect(s.c)
	io.WriteString(s.c, "NOOP "+strings.Repeat("x", 3000))
	time.Sleep(50 * time.Millisecond) // two reads: a partial line first
	io.WriteString(s.c, strings.Repeat("x", 3000)+"\r\n")
	text, closed := tr.wait()
	if !strings.HasPrefix(text, "500 ") || strings.Contains(text, "250") || !closed {
		t.Fatalf("relay sent %q (closed %v); want 500 and the connection closed", text, closed)
	}
}
