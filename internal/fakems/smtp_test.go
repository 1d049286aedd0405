package fakems

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// dialSMTP connects with go-smtp's client and STARTTLS.
func dialSMTP(t *testing.T, s *Server) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(s.SMTPAddr, s.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantSMTPError(t *testing.T, err error, code int, enhanced smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("error = %v, want an SMTP reply %d", err, code)
	}
	if se.Code != code || se.EnhancedCode != enhanced || !strings.Contains(se.Message, text) {
		t.Errorf("reply = %d %v %q, want %d %v %q…", se.Code, se.EnhancedCode, se.Message, code, enhanced, text)
	}
}

func sendTestMail(t *testing.T, c *smtp.Client, from string, to []string, body string) {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp.StatusText, "OK <") || !strings.Contains(resp.StatusText, "[Hostname=") {
		t.Errorf("DATA reply %q, want Exchange's 250 2.0.0 OK <id> [Hostname=…]", resp.StatusText)
	}
}

// TestSMTPConversation checks Exchange's replies line by line, over a raw
// connection.
func TestSMTPConversation(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	conn, err := net.Dial("tcp", s.SMTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tp := textproto.NewConn(conn)
	expect := func(code int, want ...string) string {
		t.Helper()
		_, msg, err := tp.ReadResponse(code)
		if err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Errorf("reply %q lacks %q", msg, w)
			}
		}
		return msg
	}
	cmd := func(line string) {
		t.Helper()
		if err := tp.PrintfLine("%s", line); err != nil {
			t.Fatal(err)
		}
	}

	expect(220, "Microsoft ESMTP MAIL Service ready")
	cmd("EHLO client.example")
	ehlo := expect(250, "Hello [127.0.0.1]", "STARTTLS", "SIZE 157286400", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8")
	if strings.Contains(ehlo, "AUTH") {
		t.Errorf("AUTH advertised before STARTTLS: %q", ehlo)
	}
	cmd("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(alice, "x")))
	expect(504, "Unrecognized authentication type")
	cmd("MAIL FROM:<" + alice + ">")
	expect(451, "STARTTLS is required")
	cmd("STARTTLS")
	expect(220, "2.0.0 SMTP server ready")

	tc := tls.Client(conn, s.ClientTLSConfig())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tp = textproto.NewConn(tc)
	cmd("EHLO client.example")
	ehlo = expect(250, "AUTH LOGIN XOAUTH2", "SIZE 157286400")
	if strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("STARTTLS advertised after STARTTLS: %q", ehlo)
	}
	cmd("MAIL FROM:<" + alice + ">")
	expect(530, "5.7.57 Client not authenticated to send mail")

	token := s.IssueAccessToken(publicID, alice)
	cmd("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(alice, token)))
	expect(235, "2.7.0 Authentication successful")
	cmd("MAIL FROM:<" + alice + "> BODY=8BITMIME SIZE=20 RET=HDRS ENVID=abc+2Bdef")
	expect(250, "2.1.0 Sender OK")
	cmd("RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com")
	expect(250, "2.1.5 Recipient OK")
	cmd("DATA")
	expect(354, "Start mail input")
	cmd("Subject: hi\r\nMessage-ID: <m1@client.example>\r\n\r\nhello\r\n.")
	expect(250, "2.0.0 OK <m1@client.example> [Hostname=")
	cmd("QUIT")
	expect(221, "2.0.0 Service closing transmission channel")

	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	p := m.Params
	if m.AuthUser != alice || m.From != alice || p.Body != "8BITMIME" || p.Size != 20 || p.Ret != "HDRS" || p.EnvID != "abc+def" {
		t.Errorf("message = %+v", m)
	}
	if len(p.Rcpt) != 1 || strings.Join(p.Rcpt[0].Notify, ",") != "SUCCESS,FAILURE" || p.Rcpt[0].ORcpt != "bob@example.com" {
		t.Errorf("rcpt params = %+v", p.Rcpt)
	}
	want := "Subject: hi\r\nMessage-ID: <m1@client.example>\r\n\r\nhello\r\n"
	if string(m.Data) != want || m.Size != int64(len(want)) || m.SHA256 != sha256.Sum256([]byte(want)) {
		t.Errorf("data = %q (size %d)", m.Data, m.Size)
	}
}

func TestSMTPAppOnly(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	tok, err := daemonConfig(s).Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	c := dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, tok.AccessToken)); err != nil {
		t.Fatal(err)
	}
	sendTestMail(t, c, alice, []string{"x@example.com"}, "Subject: app\r\n\r\nbody\r\n")
	msgs, err := s.WaitMessages(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].AppOnly || msgs[0].ClientID != daemonID {
		t.Errorf("message = %+v", msgs[0])
	}

	// Not granted bob's mailbox.
	c = dialSMTP(t, s)
	wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(bob, tok.AccessToken)), 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful")
}

func TestSMTPAuthFailures(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	aliceTok := s.IssueAccessToken(publicID, alice)
	cases := []struct {
		name, user, token string
		code              int
		enh               smtp.EnhancedCode
		text              string
	}{
		{"unknown token", alice, "eyJ0.bogus.token", 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"},
		{"other user's token", bob, aliceTok, 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"},
		{"no such mailbox", "nobody@contoso.onmicrosoft.com", aliceTok, 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialSMTP(t, s)
			wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(tc.user, tc.token)), tc.code, tc.enh, tc.text)
		})
	}

	t.Run("SMTP AUTH disabled", func(t *testing.T) {
		s.SetSMTPAuthDisabled(alice, true)
		defer s.SetSMTPAuthDisabled(alice, false)
		c := dialSMTP(t, s)
		wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(alice, aliceTok)), 535, smtp.EnhancedCode{5, 7, 139},
			"SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled")
	})
	t.Run("expired", func(t *testing.T) {
		tok := s.IssueAccessToken(publicID, bob)
		s.ExpireAccessTokens(bob)
		c := dialSMTP(t, s)
		wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(bob, tok)), 535, smtp.EnhancedCode{5, 7, 3}, "")
	})
	t.Run("graph token", func(t *testing.T) {
		ctx := ctxWithClient(t, s)
		cfg := publicConfig(s)
		cfg.Scopes = []string{"SMTP.Send"} // no resource: a Graph token
		tok, err := cfg.PasswordCredentialsToken(ctx, bob, "bob's password")
		if err != nil {
			t.Fatal(err)
		}
		c := dialSMTP(t, s)
		wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(bob, tok.AccessToken)), 535, smtp.EnhancedCode{5, 7, 3}, "")
	})
	t.Run("basic auth", func(t *testing.T) {
		c := dialSMTP(t, s)
		err := c.Auth(loginClient{alice, alicePass})
		wantSMTPError(t, err, 535, smtp.EnhancedCode{5, 7, 139}, "basic authentication is disabled")
	})
}

// loginClient is a minimal LOGIN client for the basic-auth test.
type loginClient struct{ user, pass string }

func (l loginClient) Start() (string, []byte, error) { return "LOGIN", nil, nil }
func (l loginClient) Next(ch []byte) ([]byte, error) {
	if string(ch) == "Username:" {
		return []byte(l.user), nil
	}
	return []byte(l.pass), nil
}

func TestSMTPSendAs(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	c := dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
	wantSMTPError(t, c.Mail(shared, nil), 550, smtp.EnhancedCode{5, 7, 60}, "Client does not have permissions to send as this sender")
	s.GrantSendAs(alice, shared)
	sendTestMail(t, c, shared, []string{"x@example.com"}, "Subject: shared\r\n\r\nx\r\n")
}

// TestSMTPLongAuthLine: with a short line limit (Dovecot submission), the
// inline token is refused but the same token after "334 " is accepted on
// the same connection.
func TestSMTPLongAuthLine(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{SMTPMaxLineLength: 1000})
	tok := s.IssueAccessToken(publicID, alice)
	c := dialSMTP(t, s)
	wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(alice, tok)), 500, smtp.EnhancedCode{5, 5, 2}, "Line too long")
	xc := sasl.NewXOAuth2Client(alice, tok)
	xc.NoInitialResponse = true
	if err := c.Auth(xc); err != nil {
		t.Fatalf("token after 334: %v", err)
	}
	sendTestMail(t, c, alice, []string{"x@example.com"}, "Subject: x\r\n\r\nx\r\n")
}

func TestSMTPDefaultAuthLineLimit(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	c := dialSMTP(t, s)
	wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(alice, strings.Repeat("x", 13<<10))), 500, smtp.EnhancedCode{5, 5, 2}, "Line too long")
	// A 3 KB token inline is fine.
	if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
}

func TestSMTPDropDuringData(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	c := dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
	s.DropNextDataAfter(1000)
	if err := c.Mail(alice, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	body := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz\r\n", 100_000)
	_, werr := w.Write([]byte(body))
	cerr := w.Close()
	if werr == nil && cerr == nil {
		t.Fatal("DATA succeeded despite the drop")
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("%d messages recorded", n)
	}
	// The next connection works normally.
	c = dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
	sendTestMail(t, c, alice, []string{"x@example.com"}, "Subject: x\r\n\r\nx\r\n")
}

func TestSMTPDiscardData(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{DiscardData: true})
	c := dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
	body := "Subject: x\r\n\r\n" + strings.Repeat("y", 100) + "\r\n"
	sendTestMail(t, c, alice, []string{"x@example.com"}, body)
	m := s.Messages()[0]
	if m.Data != nil || m.Size != int64(len(body)) || m.SHA256 != sha256.Sum256([]byte(body)) {
		t.Errorf("message = %+v", m)
	}
}

func TestSMTPConcurrencyLimit(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{SMTPLimits: true})
	tok := s.IssueAccessToken(publicID, alice)
	var clients []*smtp.Client
	for range 3 {
		c := dialSMTP(t, s)
		if err := c.Auth(sasl.NewXOAuth2Client(alice, tok)); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	c := dialSMTP(t, s)
	wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(alice, tok)), 432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded")

	// Another mailbox is not affected; a slot frees when a session ends.
	if err := dialSMTP(t, s).Auth(sasl.NewXOAuth2Client(bob, s.IssueAccessToken(publicID, bob))); err != nil {
		t.Fatal(err)
	}
	if err := clients[0].Quit(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := dialSMTP(t, s).Auth(sasl.NewXOAuth2Client(alice, tok))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSMTPRateLimit(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{SMTPLimits: true})
	c := dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		sendTestMail(t, c, alice, []string{"x@example.com"}, fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i))
	}
	if err := c.Mail(alice, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: 31\r\n\r\nx\r\n"))
	wantSMTPError(t, w.Close(), 432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded")
}

// TestSMTPConcurrentSessions is for the race detector.
func TestSMTPConcurrentSessions(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{DiscardData: true})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c, err := smtp.DialStartTLS(s.SMTPAddr, s.ClientTLSConfig())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
				t.Error(err)
				return
			}
			msg := fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, bytes.Repeat([]byte("z"), 10_000))
			if err := c.SendMail(alice, []string{"x@example.com"}, strings.NewReader(msg)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, err := s.WaitMessages(t.Context(), 8); err != nil {
		t.Fatal(err)
	}
}

// A delegate with FullAccess on a shared mailbox still cannot log in to
// SMTP as it (535 5.7.3): it logs in as itself and sends as the shared
// address with SendAs, and without SendAs MAIL FROM gets 550 5.7.60.
func TestSMTPSharedMailbox(t *testing.T) {
	t.Parallel()
	s, tok := sharedWorld(t)
	c := dialSMTP(t, s)
	wantSMTPError(t, c.Auth(sasl.NewXOAuth2Client(supportBox, tok)), 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful")
	c = dialSMTP(t, s)
	if err := c.Auth(sasl.NewXOAuth2Client(alice, tok)); err != nil {
		t.Fatal(err)
	}
	sendTestMail(t, c, supportBox, []string{"x@example.net"}, "Subject: as support\r\n\r\nhi\r\n")
	wantSMTPError(t, c.Mail(billingBox, nil), 550, smtp.EnhancedCode{5, 7, 60}, "does not have permissions to send as this sender")
}
