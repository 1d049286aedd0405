package smtp

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

func TestSendThroughRelay(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	body := message(mailbox, recipient, "Invoice 42", "Please find the invoice attached.")
	text, err := send(c, mailbox, []string{recipient, "second@example.net"}, body)
	if err != nil {
		t.Fatal(err)
	}
	// The upstream's own 250 text (its queue id) reaches the app.
	if !strings.Contains(text, "Hostname=") && !strings.Contains(text, "OK") {
		t.Errorf("DATA reply %q does not look like the upstream's", text)
	}
	msgs := w.waitMessages(1)
	m := msgs[0]
	if m.AuthUser != mailbox || !m.AppOnly || m.From != mailbox {
		t.Errorf("upstream saw user %q appOnly %v from %q", m.AuthUser, m.AppOnly, m.From)
	}
	if strings.Join(m.To, ",") != recipient+",second@example.net" {
		t.Errorf("upstream recipients %v", m.To)
	}
	if string(m.Data) != body {
		t.Errorf("upstream data %q, want %q", m.Data, body)
	}
	// A second message on the same session reuses the upstream login.
	if _, err := send(c, "ap@billing.contoso.com", []string{recipient}, message("ap@billing.contoso.com", recipient, "2", "x")); err != nil {
		t.Fatal(err)
	}
	w.waitMessages(2)
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func TestSizeAdvertisedFromUpstream(t *testing.T) {
	w := newWorld(t, worldOptions{ms: fakems.Options{SMTPMaxMessageBytes: 12345678}})
	c := w.dial()
	size, ok := c.MaxMessageSize()
	if !ok || size != 12345678 {
		t.Fatalf("SIZE = %d, %v; want the upstream's 12345678", size, ok)
	}
	for _, ext := range []string{"8BITMIME", "SMTPUTF8", "DSN", "CHUNKING", "AUTH"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO lacks %s", ext)
		}
	}
}

func TestAuthLogin(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dial()
	if err := c.Auth(gosasl.NewLoginClient(username, password)); err != nil {
		t.Fatal(err)
	}
	if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "login", "x")); err != nil {
		t.Fatal(err)
	}
	w.waitMessages(1)
}

func TestParametersPassThrough(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	body := message(mailbox, "ünïcode@example.net", "Grüße", "Ümlauts in 8 bit.")
	if err := c.Mail(mailbox, &smtp.MailOptions{Body: smtp.Body8BitMIME, UTF8: true, Return: smtp.DSNReturnHeaders, EnvelopeID: "env-1", Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("ünïcode@example.net", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}}); err != nil {
		t.Fatal(err)
	}
	wc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(wc, body)
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	m := w.waitMessages(1)[0]
	p := m.Params
	if p.Body != "8BITMIME" || !p.SMTPUTF8 || p.Ret != "HDRS" || p.EnvID != "env-1" || p.Size != int64(len(body)) {
		t.Errorf("MAIL params upstream: %+v", p)
	}
	if len(p.Rcpt) != 1 || strings.Join(p.Rcpt[0].Notify, ",") != "FAILURE,DELAY" {
		t.Errorf("RCPT params upstream: %+v", p.Rcpt)
	}
	if string(m.Data) != body {
		t.Errorf("data %q", m.Data)
	}
}

// rawSession speaks SMTP by hand, for what go-smtp's client cannot send
// (BDAT, malformed commands).
type rawSession struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func (w *world) raw() *rawSession {
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	s := &rawSession{t: w.t, c: c, r: bufio.NewReader(c)}
	s.expect("220")
	return s
}

// cmd sends a line and returns the last line of the reply.
func (s *rawSession) cmd(line string) string {
	s.t.Helper()
	if line != "" {
		fmt.Fprintf(s.c, "%s\r\n", line)
	}
	return s.reply()
}

func (s *rawSession) reply() string {
	s.t.Helper()
	for {
		l, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("read reply: %v", err)
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimRight(l, "\r\n")
		}
	}
}

func (s *rawSession) expect(prefix string) string {
	s.t.Helper()
	l := s.reply()
	if !strings.HasPrefix(l, prefix) {
		s.t.Fatalf("reply %q, want %s", l, prefix)
	}
	return l
}

func (s *rawSession) want(line, prefix string) string {
	s.t.Helper()
	l := s.cmd(line)
	if !strings.HasPrefix(l, prefix) {
		s.t.Fatalf("%q: reply %q, want %s", line, l, prefix)
	}
	return l
}

func plainIR(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func TestBDATBecomesDATA(t *testing.T) {
	w := newWorld(t, worldOptions{})
	s := w.raw()
	s.want("EHLO app.test", "250")
	s.want("AUTH PLAIN "+plainIR(username, password), "235")
	s.want("MAIL FROM:<"+mailbox+">", "250")
	s.want("RCPT TO:<"+recipient+">", "250")
	part1 := "Subject: chunked\r\n\r\n"
	part2 := ".line starting with a dot\r\nend\r\n"
	fmt.Fprintf(s.c, "BDAT %d\r\n%s", len(part1), part1)
	s.expect("250")
	fmt.Fprintf(s.c, "BDAT %d LAST\r\n%s", len(part2), part2)
	s.expect("250")
	m := w.waitMessages(1)[0]
	if string(m.Data) != part1+part2 {
		t.Fatalf("upstream got %q", m.Data)
	}
}

func TestMalformedCommandsKeepSession(t *testing.T) {
	w := newWorld(t, worldOptions{})
	s := w.raw()
	s.want("EHLO app.test", "250")
	s.want("FROBNICATE", "50")
	s.want("MAIL FROM:", "501")
	s.want("AUTH PLAIN !!!notbase64", "454")
	s.want("AUTH PLAIN "+plainIR(username, password), "235")
	s.want("MAIL FROM:<"+mailbox+"> BOGUS=1", "5")
	s.want("RCPT TO:<"+recipient+">", "502")
	s.want("MAIL FROM:<"+mailbox+">", "250")
	s.want("RCPT TO:<not an address", "501")
	s.want("RCPT TO:<"+recipient+">", "250")
	s.want("RSET", "250")
	s.want("NOOP", "250")
	s.want("QUIT", "221")
}

func TestSenderNotAllowed(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	err := c.Mail("ceo@contoso.com", nil)
	wantCode(t, err, 550, "5.7.1")
	// The session goes on.
	if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "ok", "x")); err != nil {
		t.Fatal(err)
	}
}

func TestWrongPasswordIsThrottled(t *testing.T) {
	w := newWorld(t, worldOptions{})
	for i := 0; i < 3; i++ {
		c := w.dial()
		wantCode(t, c.Auth(gosasl.NewPlainClient("", username, "wrong")), 535, "5.7.8")
	}
	wantCode(t, w.dial().Auth(gosasl.NewPlainClient("", "nobody", password)), 535, "5.7.8")
	// Three failures for this user from this address: the next failure is
	// held for 1s after its check, before the reply. (The unknown name has
	// a key of its own.)
	c := w.dial()
	start := time.Now()
	wantCode(t, c.Auth(gosasl.NewPlainClient("", username, "wrong")), 535, "5.7.8")
	if d := time.Since(start); d < time.Second {
		t.Fatalf("fifth failed login answered after %v, want a delay of at least 1s", d)
	}
	if strings.Contains(w.log.String(), "wrong\"") {
		t.Fatal("a password reached the log")
	}
}

func TestTokenEndpointFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failure fakems.TokenFailure
		code    int
		enh     string
		logged  string
	}{
		{"503", fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"}, 454, "4.7.0", "temporarily_unavailable"},
		{"gateway page", fakems.TokenFailure{Status: 502, Body: "<html>Bad Gateway</html>"}, 454, "4.7.0", "502"},
		{"garbage JSON with 200", fakems.TokenFailure{Status: 200, Body: `{"access_token": "tok`}, 454, "4.7.0", "token"},
		{"bad secret", fakems.TokenFailure{Status: 401, Error: "invalid_client", AADSTS: 7000215, Description: "AADSTS7000215: Invalid client secret provided."}, 535, "5.7.8", "7000215"},
		{"expired grant", fakems.TokenFailure{Status: 400, Error: "invalid_grant", AADSTS: 70008, Description: "AADSTS70008: The refresh token has expired due to inactivity."}, 535, "5.7.8", "70008"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{tokenFailure: &tc.failure})
			c := w.dial()
			se := wantCode(t, c.Auth(gosasl.NewPlainClient("", username, password)), tc.code, tc.enh)
			if tc.code == 535 && !strings.Contains(se.Message, "needs attention") {
				t.Errorf("reply %q does not say the account needs attention", se.Message)
			}
			if !strings.Contains(w.log.String(), tc.logged) {
				t.Errorf("log lacks %q", tc.logged)
			}
		})
	}
}

func TestTokenEndpointSlow(t *testing.T) {
	w := newWorld(t, worldOptions{httpClient: &http.Client{Timeout: 500 * time.Millisecond}, tokenDelay: 5 * time.Second})
	c := w.dial()
	wantCode(t, c.Auth(gosasl.NewPlainClient("", username, password)), 454, "4.7.0")
}

func TestTokenEndpointUnreachable(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.ms.Close() // token endpoint and SMTP gone
	c := w.dial()
	wantCode(t, c.Auth(gosasl.NewPlainClient("", username, password)), 454, "4.7.0")
}

func TestBadClientSecret(t *testing.T) {
	w := newWorld(t, worldOptions{secret: "not-the-secret"})
	c := w.dial()
	wantCode(t, c.Auth(gosasl.NewPlainClient("", username, password)), 535, "5.7.8")
	if !strings.Contains(w.log.String(), "7000215") {
		t.Errorf("log lacks the AADSTS code")
	}
	if strings.Contains(w.log.String(), "not-the-secret") {
		t.Errorf("the client secret reached the log")
	}
}

func TestUpstreamRefusesXOAUTH2(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.ms.SetSMTPAuthDisabled(mailbox, true)
	c := w.dial()
	se := wantCode(t, c.Auth(gosasl.NewPlainClient("", username, password)), 535, "5.7.139")
	if !strings.Contains(se.Message, "SmtpClientAuthentication is disabled") {
		t.Errorf("reply %q is not the upstream's", se.Message)
	}
	if !strings.Contains(w.log.String(), "Set-CASMailbox") {
		t.Errorf("log does not explain the fix")
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	w := newWorld(t, worldOptions{smtpAddr: testutil.ClosedAddr(t)})
	c := w.dial()
	wantCode(t, c.Auth(gosasl.NewPlainClient("", username, password)), 454, "4.7.0")
}

func TestUpstreamLostDuringData(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	w.ms.DropNextDataAfter(64 << 10)
	big := message(mailbox, recipient, "big", strings.Repeat("0123456789abcdef\r\n", 20000))
	_, err := send(c, mailbox, []string{recipient}, big)
	wantCode(t, err, 451, "4.4.2")
	if n := len(w.ms.Messages()); n != 0 {
		t.Fatalf("upstream recorded %d messages", n)
	}
	// The session recovers on a new upstream connection.
	if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "retry", "x")); err != nil {
		t.Fatalf("after the lost connection: %v", err)
	}
	w.waitMessages(1)
}

func TestRelayFromWithoutAuth(t *testing.T) {
	w := newWorld(t, worldOptions{relayFrom: true})
	c := w.dial()
	if _, err := send(c, scanBox, []string{recipient}, message(scanBox, recipient, "scan", "pdf")); err != nil {
		t.Fatal(err)
	}
	m := w.waitMessages(1)[0]
	if m.AuthUser != scanBox {
		t.Errorf("upstream user %q, want the scanner mailbox", m.AuthUser)
	}
	// The invoices account has no relay_from: its sender needs AUTH.
	wantCode(t, c.Mail(mailbox, nil), 530, "5.7.0")
}

func TestNoAuthNoRelay(t *testing.T) {
	w := newWorld(t, worldOptions{})
	wantCode(t, w.dial().Mail(mailbox, nil), 530, "5.7.0")
}

func TestLongAuthLineFallback(t *testing.T) {
	w := newWorld(t, worldOptions{ms: fakems.Options{SMTPMaxLineLength: 1000}})
	c := w.login()
	if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "x", "y")); err != nil {
		t.Fatal(err)
	}
	w.waitMessages(1)
}

func TestLocalSTARTTLSAndImplicitTLS(t *testing.T) {
	for _, mode := range []string{"starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t, worldOptions{listenTLS: mode})
			var c *smtp.Client
			var err error
			if mode == "starttls" {
				c, err = smtp.DialStartTLS(w.addr, w.cert.ClientTLS())
			} else {
				c, err = smtp.DialTLS(w.addr, w.cert.ClientTLS())
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Auth(gosasl.NewPlainClient("", username, password)); err != nil {
				t.Fatal(err)
			}
			if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, mode, "x")); err != nil {
				t.Fatal(err)
			}
			w.waitMessages(1)
		})
	}
}

func TestFiftyMegabyteMessage(t *testing.T) {
	w := newWorld(t, worldOptions{ms: fakems.Options{DiscardData: true}})
	c := w.login()
	line := make([]byte, 76)
	h := sha256.New()
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		t.Fatal(err)
	}
	wc, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	out := io.MultiWriter(wc, h)
	io.WriteString(out, "Subject: 50 MB\r\n\r\n")
	var n int
	for n < 50<<20 {
		rand.Read(line)
		enc := base64.StdEncoding.EncodeToString(line)[:76] + "\r\n"
		io.WriteString(out, enc)
		n += len(enc)
	}
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	m := w.waitMessages(1)[0]
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if m.SHA256 != sum || m.Size < 50<<20 {
		t.Fatalf("upstream got %d bytes, digest match %v", m.Size, m.SHA256 == sum)
	}
}

func TestFiftyConcurrentClients(t *testing.T) {
	w := newWorld(t, worldOptions{unlimited: true})
	const clients = 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(w.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Auth(gosasl.NewPlainClient("", username, password)); err != nil {
				errs <- err
				return
			}
			if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, fmt.Sprint(i), "x")); err != nil {
				errs <- err
				return
			}
			errs <- c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	msgs := w.waitMessages(clients)
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[string(bytes.SplitN(m.Data, []byte("\r\n"), 3)[2])] = true
	}
	if len(seen) != clients {
		t.Fatalf("%d distinct messages upstream, want %d", len(seen), clients)
	}
	// One token request for all of them: the cache and singleflight.
	if n := w.ms.TokenRequests(); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
}

func TestXOAuth2ClientFailureIsNotSuccess(t *testing.T) {
	// Direct to the fake: a wrong token must fail, never pass.
	w := newWorld(t, worldOptions{})
	c, err := smtp.DialStartTLS(w.ms.SMTPAddr, w.ms.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Auth(sasl.NewXOAuth2Client(mailbox, "not-a-token"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("Auth with a bad token = %v", err)
	}
}

func TestPasswordPassthrough(t *testing.T) {
	w := newWorld(t, worldOptions{passthrough: true})
	// The app's password is the mailbox's own: exchanged for a token
	// (ROPC), never compared locally.
	c := w.dial()
	if err := c.Auth(gosasl.NewPlainClient("", "shared", "scanner-password")); err != nil {
		t.Fatal(err)
	}
	if _, err := send(c, scanBox, []string{recipient}, message(scanBox, recipient, "ropc", "x")); err != nil {
		t.Fatal(err)
	}
	if m := w.waitMessages(1)[0]; m.AuthUser != scanBox || m.AppOnly {
		t.Errorf("upstream user %q appOnly %v", m.AuthUser, m.AppOnly)
	}
	// A second login with the same password needs no new token request.
	n := w.ms.TokenRequests()
	c2 := w.dial()
	if err := c2.Auth(gosasl.NewPlainClient("", "shared", "scanner-password")); err != nil {
		t.Fatal(err)
	}
	if w.ms.TokenRequests() != n {
		t.Errorf("repeat login made %d token requests", w.ms.TokenRequests()-n)
	}
	// A wrong password is refused by Entra (AADSTS50126): a failed local
	// login for the app, not an account that needs attention.
	se := wantCode(t, w.dial().Auth(gosasl.NewPlainClient("", "shared", "wrong-password")), 535, "5.7.8")
	if strings.Contains(se.Message, "attention") {
		t.Errorf("wrong passthrough password reported as %q", se.Message)
	}
}

func TestPasswordPassthroughMFA(t *testing.T) {
	// MFA cannot work with the password grant: the account needs
	// attention, and the log says why.
	w := newWorld(t, worldOptions{passthrough: true})
	w.ms.RequireMFA(scanBox)
	se := wantCode(t, w.dial().Auth(gosasl.NewPlainClient("", "shared", "scanner-password")), 535, "5.7.8")
	if !strings.Contains(se.Message, "attention") {
		t.Errorf("reply %q does not say the account needs attention", se.Message)
	}
	if !strings.Contains(w.log.String(), "50076") {
		t.Errorf("log lacks AADSTS50076")
	}
}

func TestRelayFromTokenNeedsAttention(t *testing.T) {
	// A client without AUTH whose account cannot get a token: a temporary
	// reply (the scanner keeps the message), saying why.
	w := newWorld(t, worldOptions{relayFrom: true, tokenFailure: &fakems.TokenFailure{
		Status: 401, Error: "invalid_client", AADSTS: 7000222, Description: "AADSTS7000222: The provided client secret keys are expired."}})
	se := wantCode(t, w.dial().Mail(scanBox, nil), 451, "4.7.0")
	if !strings.Contains(se.Message, "attention") {
		t.Errorf("reply %q", se.Message)
	}
	if !strings.Contains(w.log.String(), "7000222") {
		t.Error("log lacks the AADSTS code")
	}
	if n := len(w.ms.Messages()); n != 0 {
		t.Fatalf("%d messages upstream", n)
	}
}
