package fakems

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

func dialIMAP(t *testing.T, s *Server) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(s.IMAPAddr, &imapclient.Options{TLSConfig: s.ClientTLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantIMAPError(t *testing.T, err error, typ imap.StatusResponseType, text string) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) {
		t.Fatalf("error = %v, want IMAP %s %q", err, typ, text)
	}
	if ie.Type != typ || ie.Text != text {
		t.Errorf("got %s %q, want %s %q", ie.Type, ie.Text, typ, text)
	}
}

// TestIMAPConversation checks Exchange's texts over a raw connection.
func TestIMAPConversation(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	conn, err := tls.Dial("tcp", s.IMAPAddr, s.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	line := func() string {
		t.Helper()
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimRight(l, "\r\n")
	}
	send := func(s string) {
		t.Helper()
		if _, err := conn.Write([]byte(s + "\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if g := line(); !strings.HasPrefix(g, "* OK The Microsoft Exchange IMAP4 service is ready.") {
		t.Errorf("greeting %q", g)
	}
	send("a0 ID (\"name\" \"test\")")
	if l := line(); !strings.HasPrefix(l, "* ID ") {
		t.Errorf("ID answer %q", l)
	}
	if l := line(); l != "a0 OK ID completed." {
		t.Errorf("ID completion %q", l)
	}
	send("a1 CAPABILITY")
	if caps := line(); !strings.Contains(caps, "AUTH=XOAUTH2") || !strings.Contains(caps, "SASL-IR") {
		t.Errorf("capabilities %q", caps)
	}
	line()
	send("a2 LOGIN alice secret")
	if l := line(); l != "a2 NO LOGIN failed." {
		t.Errorf("LOGIN: %q", l)
	}
	send("a3 AUTHENTICATE XOAUTH2 " + base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(alice, "bogus")))
	if l := line(); l != "a3 NO AUTHENTICATE failed." {
		t.Errorf("bad token: %q", l)
	}
	send("a4 AUTHENTICATE XOAUTH2 " + base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(alice, s.IssueAccessToken(publicID, alice))))
	if l := line(); l != "a4 OK AUTHENTICATE completed." {
		t.Errorf("good token: %q", l)
	}
	// The token after an empty continuation, on a second connection.
	conn2, err := tls.Dial("tcp", s.IMAPAddr, s.ClientTLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	r2 := bufio.NewReader(conn2)
	r2.ReadString('\n')
	conn2.Write([]byte("b1 AUTHENTICATE XOAUTH2\r\n"))
	if l, _ := r2.ReadString('\n'); l != "+ \r\n" {
		t.Errorf("continuation %q, want \"+ \"", l)
	}
	conn2.Write([]byte(base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(bob, s.IssueAccessToken(publicID, bob))) + "\r\n"))
	if l, _ := r2.ReadString('\n'); l != "b1 OK AUTHENTICATE completed.\r\n" {
		t.Errorf("non-IR login: %q", l)
	}

	send("a5 SELECT INBOX")
	for {
		l := line()
		if strings.HasPrefix(l, "a5 ") {
			if !strings.HasPrefix(l, "a5 OK") {
				t.Errorf("SELECT: %q", l)
			}
			break
		}
	}
}

func TestIMAPAuthenticateAndFetch(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	msg := []byte("Subject: hello\r\nFrom: bob@example.com\r\n\r\nbody\r\n")
	if err := s.AppendIMAP(alice, "INBOX", msg); err != nil {
		t.Fatal(err)
	}
	tok, err := daemonConfig(s).Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	c := dialIMAP(t, s)
	if err := c.Authenticate(sasl.NewXOAuth2Client(alice, tok.AccessToken)); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("INBOX has %d messages", sel.NumMessages)
	}
	bodySection := &imap.FetchItemBodySection{}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{bodySection}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].FindBodySection(bodySection); !bytes.Equal(got, msg) {
		t.Errorf("fetched %q", got)
	}
}

func TestIMAPAuthFailures(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	c := dialIMAP(t, s)
	wantIMAPError(t, c.Authenticate(sasl.NewXOAuth2Client(bob, s.IssueAccessToken(publicID, alice))), imap.StatusResponseTypeNo, "AUTHENTICATE failed.")
	wantIMAPError(t, c.Login(alice, alicePass).Wait(), imap.StatusResponseTypeNo, "LOGIN failed.")

	// An SMTP-only token does not open IMAP.
	cfg := publicConfig(s)
	cfg.Scopes = []string{"https://outlook.office.com/SMTP.Send"}
	tok, err := cfg.PasswordCredentialsToken(ctxWithClient(t, s), alice, alicePass)
	if err != nil {
		t.Fatal(err)
	}
	wantIMAPError(t, c.Authenticate(sasl.NewXOAuth2Client(alice, tok.AccessToken)), imap.StatusResponseTypeNo, "AUTHENTICATE failed.")
}

// TestIMAPNotConnected: with IMAPNotConnected an app-only token for a
// mailbox the app has no FullAccess to logs in, and then every command
// fails, as on Exchange in the field.
func TestIMAPNotConnected(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{IMAPNotConnected: true})
	c := dialIMAP(t, s)
	if err := c.Authenticate(sasl.NewXOAuth2Client(bob, s.IssueAccessToken(daemonID, ""))); err != nil {
		t.Fatalf("login: %v", err)
	}
	_, err := c.Select("INBOX", nil).Wait()
	wantIMAPError(t, err, imap.StatusResponseTypeBad, "User is authenticated but not connected.")
}

func TestIMAPBigAppend(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{})
	c := dialIMAP(t, s)
	if err := c.Authenticate(sasl.NewXOAuth2Client(alice, s.IssueAccessToken(publicID, alice))); err != nil {
		t.Fatal(err)
	}
	body := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvw\r\n"), 30<<20/72)...)
	cmd := c.Append("Sent Items", int64(len(body)), nil)
	if _, err := cmd.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status("Sent Items", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumMessages != 1 {
		t.Errorf("Sent Items has %d messages", *st.NumMessages)
	}
}

// By default an app-only token is refused at AUTHENTICATE for a mailbox
// the app has no permission on, and accepted for one Options.AppGrants
// names.
func TestIMAPAppGrants(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{AppGrants: map[string][]string{daemonID: {bob}}})
	s.AddMailbox("carol@contoso.com", "x")
	tok := s.IssueAccessToken(daemonID, "")
	c := dialIMAP(t, s)
	wantIMAPError(t, c.Authenticate(sasl.NewXOAuth2Client("carol@contoso.com", tok)), imap.StatusResponseTypeNo, "AUTHENTICATE failed.")
	c = dialIMAP(t, s)
	if err := c.Authenticate(sasl.NewXOAuth2Client(bob, tok)); err != nil {
		t.Fatalf("login as a granted mailbox: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

// A delegate with FullAccess opens a shared mailbox over IMAP with its own
// token and user= the shared address; without FullAccess it is refused.
func TestIMAPSharedMailbox(t *testing.T) {
	t.Parallel()
	s, tok := sharedWorld(t)
	c := dialIMAP(t, s)
	if err := c.Authenticate(sasl.NewXOAuth2Client(supportBox, tok)); err != nil {
		t.Fatalf("delegate into the shared mailbox: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	c = dialIMAP(t, s)
	wantIMAPError(t, c.Authenticate(sasl.NewXOAuth2Client(billingBox, tok)), imap.StatusResponseTypeNo, "AUTHENTICATE failed.")
}

// The shared mailboxes of these tests: alice has FullAccess and SendAs on
// supportBox, nothing on billingBox.
const supportBox, billingBox = "support@contoso.com", "billing@contoso.com"

// sharedWorld is the test world with the shared mailboxes, and alice's
// delegated token.
func sharedWorld(t *testing.T) (*Server, string) {
	s := newWorld(t, Options{})
	s.AddSharedMailbox(supportBox)
	s.AddSharedMailbox(billingBox)
	s.GrantFullAccess(supportBox, alice)
	s.GrantSendAs(alice, supportBox)
	return s, s.IssueAccessToken(publicID, alice)
}
