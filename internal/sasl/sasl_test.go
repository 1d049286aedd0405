package sasl

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func TestXOAuth2RoundTrip(t *testing.T) {
	tok := strings.Repeat("t", 3000)
	user, got, err := ParseXOAuth2Response(XOAuth2Response("a@b.c", tok))
	if err != nil || user != "a@b.c" || got != tok {
		t.Fatalf("ParseXOAuth2Response = %q, %d bytes, %v", user, len(got), err)
	}
	want := "user=a@b.c\x01auth=Bearer x\x01\x01"
	if s := string(XOAuth2Response("a@b.c", "x")); s != want {
		t.Fatalf("XOAuth2Response = %q, want %q", s, want)
	}
}

func TestParseXOAuth2ResponseErrors(t *testing.T) {
	for _, in := range []string{
		"", "user=a\x01", "user=a\x01auth=Basic x\x01\x01", "auth=Bearer x\x01\x01",
		"user=a\x01\x01", "garbage\x01\x01",
	} {
		if _, _, err := ParseXOAuth2Response([]byte(in)); err == nil {
			t.Errorf("ParseXOAuth2Response(%q): no error", in)
		}
	}
}

func FuzzParseXOAuth2Response(f *testing.F) {
	f.Add(XOAuth2Response("u@x", "tok"))
	f.Add([]byte("user=\x01auth=bearer \x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		user, tok, err := ParseXOAuth2Response(b)
		if err == nil && !bytes.Contains(b, []byte(tok)) || err == nil && !bytes.Contains(b, []byte(user)) {
			t.Fatalf("parsed values not in input")
		}
	})
}

func TestXOAuth2ClientNoIR(t *testing.T) {
	c := &XOAuth2Client{User: "u", Token: "t", NoInitialResponse: true}
	mech, ir, _ := c.Start()
	if mech != XOAuth2 || ir != nil {
		t.Fatalf("Start = %q, %v; want no initial response", mech, ir)
	}
	resp, err := c.Next(nil)
	if err != nil || string(resp) != string(XOAuth2Response("u", "t")) {
		t.Fatalf("Next(empty) = %q, %v", resp, err)
	}
	resp, err = c.Next([]byte(`{"status":"401"}`))
	if err != nil || len(resp) != 0 || resp == nil {
		t.Fatalf("Next(error challenge) = %q, %v; want empty non-nil response", resp, err)
	}
	var xe *XOAuth2Error
	if !errors.As(c.Err, &xe) || xe.Status != "401" {
		t.Fatalf("Err = %v", c.Err)
	}
}

// gmailLike answers the token with a JSON error challenge, then 535, as
// Gmail does: the client must not report success.
type gmailLike struct{ gotEmpty bool }

func (s *gmailLike) Next(resp []byte) ([]byte, bool, error) {
	if resp != nil && len(resp) == 0 {
		s.gotEmpty = true
		return nil, true, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Username and Password not accepted"}
	}
	return []byte(`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`), false, nil
}

type backend struct{ srv *gmailLike }

func (b *backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{b.srv}, nil }

type session struct{ srv *gmailLike }

func (s *session) AuthMechanisms() []string { return []string{XOAuth2} }
func (s *session) Auth(string) (gosasl.Server, error) {
	return s.srv, nil
}
func (s *session) Mail(string, *smtp.MailOptions) error { return nil }
func (s *session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *session) Data(io.Reader) error                 { return nil }
func (s *session) Reset()                               {}
func (s *session) Logout() error                        { return nil }

func TestXOAuth2ClientErrorChallengeIsFailure(t *testing.T) {
	g := &gmailLike{}
	srv := smtp.NewServer(&backend{g})
	srv.AllowInsecureAuth = true
	srv.MaxLineLength = 16 << 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c, err := smtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	xc := NewXOAuth2Client("u@x", strings.Repeat("t", 2500))
	err = c.Auth(xc)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("Auth = %v, want the server's 535", err)
	}
	if !g.gotEmpty {
		t.Fatal("server did not get the empty response to its error challenge")
	}
	if xc.Err == nil {
		t.Fatal("client did not record the error challenge")
	}
}

func TestLoginServer(t *testing.T) {
	var gotU, gotP string
	auth := func(u, p string) error {
		gotU, gotP = u, p
		if p != "secret" {
			return errors.New("bad")
		}
		return nil
	}
	for _, ir := range [][]byte{nil, []byte("erp")} {
		s := NewLoginServer(auth)
		ch, done, err := s.Next(ir)
		if ir == nil {
			if string(ch) != "Username:" || done || err != nil {
				t.Fatalf("step 0 = %q %v %v", ch, done, err)
			}
			ch, done, err = s.Next([]byte("erp"))
		}
		if string(ch) != "Password:" || done || err != nil {
			t.Fatalf("username step = %q %v %v", ch, done, err)
		}
		if _, done, err = s.Next([]byte("secret")); !done || err != nil {
			t.Fatalf("password step = %v %v", done, err)
		}
		if gotU != "erp" || gotP != "secret" {
			t.Fatalf("authenticator got %q %q", gotU, gotP)
		}
		if _, _, err := s.Next([]byte("x")); !errors.Is(err, ErrLoginState) {
			t.Fatalf("extra response: %v", err)
		}
	}
	s := NewLoginServer(auth)
	s.Next([]byte("erp"))
	if _, done, err := s.Next([]byte("wrong")); !done || err == nil {
		t.Fatal("wrong password accepted")
	}
}

// FuzzLoginServer runs the LOGIN exchange with any responses (split at
// NUL; a leading "*" marks an initial response): it never panics, asks
// for the password only after the user name, checks at most once, with
// the user name and password the client sent, and answers nothing after
// it is done.
func FuzzLoginServer(f *testing.F) {
	f.Add([]byte("erp\x00secret"))
	f.Add([]byte("*erp\x00secret"))
	f.Add([]byte("erp\x00secret\x00more\x00more"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		parts := bytes.Split(b, []byte{0})
		var checks [][2]string
		s := NewLoginServer(func(user, pass string) error {
			checks = append(checks, [2]string{user, pass})
			return nil
		})
		var sent [][]byte
		initial := len(parts[0]) > 0 && parts[0][0] == '*'
		if initial {
			parts[0] = parts[0][1:]
		} else {
			if ch, done, err := s.Next(nil); done || err != nil || string(ch) != "Username:" {
				t.Fatalf("first step: %q %v %v, want the Username: challenge", ch, done, err)
			}
		}
		done := false
		for _, p := range parts {
			_, d, err := s.Next(p)
			sent = append(sent, p)
			if done && err == nil {
				t.Fatalf("a response after the end was taken")
			}
			done = done || d
		}
		if len(checks) > 1 {
			t.Fatalf("checked %d times", len(checks))
		}
		if len(checks) == 1 && (len(sent) < 2 || checks[0][0] != string(sent[0]) || checks[0][1] != string(sent[1])) {
			t.Fatalf("checked %q, sent %q", checks[0], sent)
		}
		if len(sent) >= 2 && len(checks) != 1 {
			t.Fatalf("user name and password sent, %d checks", len(checks))
		}
	})
}
