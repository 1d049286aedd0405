package main

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gosasl "github.com/emersion/go-sasl"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// Secrets never reach the log, even at debug level: a full SMTP session
// (AUTH PLAIN, AUTH LOGIN, a refused AUTH, MAIL, RCPT, DATA) and full IMAP
// sessions (LOGIN, AUTHENTICATE PLAIN, SELECT, FETCH, LOGOUT, a refused
// LOGIN) go through a
// `serve` with log level debug, over TLS on both sides, and the captured log
// is searched for every form a secret could take.
func TestServeLogRedaction(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			testRedaction(t, format)
		})
	}
}

// jwtRE matches a JWT-shaped token: base64url JSON header, a dot, more.
var jwtRE = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+`)

func testRedaction(t *testing.T, format string) {
	const wrongPass = "Wrong-Guess-Password-9"
	ms := startFake(t, fakems.Options{})
	cert := localCert(t)
	inv := invoices(t)
	listener := func(mode string) string {
		return fmt.Sprintf(`{addr: "127.0.0.1:0", tls: %s, cert_file: %q, key_file: %q}`, mode, cert.CertFile, cert.KeyFile)
	}
	path := newConfig(t, ms, cfgSpec{level: "debug", format: format, smtp: listener("starttls"), imap: listener("implicit"),
		admin: listenAny, accounts: []acct{inv}})
	s := startServe(t, path)
	tlsc := cert.ClientTLS()

	// SMTP, AUTH PLAIN.
	c := dialSMTP(t, s.smtp, tlsc)
	if err := c.Auth(gosasl.NewPlainClient("", localUser, localPass)); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	sendOn(t, c, mailbox, "redaction plain")
	c.Quit()
	// SMTP, AUTH LOGIN.
	c = dialSMTP(t, s.smtp, tlsc)
	if err := c.Auth(gosasl.NewLoginClient(localUser, localPass)); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	sendOn(t, c, mailbox, "redaction login")
	c.Quit()
	// SMTP, a wrong password.
	c = dialSMTP(t, s.smtp, tlsc)
	if err := c.Auth(gosasl.NewLoginClient(localUser, wrongPass)); err == nil {
		t.Fatal("AUTH LOGIN with a wrong password succeeded")
	}
	c.Close()
	delivered(t, ms, "redaction plain")
	delivered(t, ms, "redaction login")

	// IMAP, LOGIN + SELECT + FETCH + LOGOUT.
	if err := ms.AppendIMAP(mailbox, "INBOX", []byte("From: a@example.net\r\nSubject: redaction inbound\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	imapSession := func(auth func(*imapclient.Client) error) {
		t.Helper()
		ic, err := imapclient.DialTLS(s.imap, &imapclient.Options{TLSConfig: tlsc})
		if err != nil {
			t.Fatal(err)
		}
		defer ic.Close()
		if err := auth(ic); err != nil {
			t.Fatalf("IMAP login: %v", err)
		}
		if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("SELECT: %v", err)
		}
		sec := &imap.FetchItemBodySection{}
		msgs, err := ic.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
		if err != nil || len(msgs) != 1 || !strings.Contains(string(msgs[0].FindBodySection(sec)), "redaction inbound") {
			t.Fatalf("FETCH: %v %v", err, msgs)
		}
		if err := ic.Logout().Wait(); err != nil {
			t.Errorf("LOGOUT: %v", err)
		}
	}
	imapSession(func(ic *imapclient.Client) error { return ic.Login(localUser, localPass).Wait() })
	imapSession(func(ic *imapclient.Client) error {
		return ic.Authenticate(gosasl.NewPlainClient("", localUser, localPass))
	})

	// IMAP, a wrong password.
	ic, err := imapclient.DialTLS(s.imap, &imapclient.Options{TLSConfig: tlsc})
	if err != nil {
		t.Fatal(err)
	}
	if err := ic.Login(localUser, wrongPass).Wait(); err == nil {
		t.Error("IMAP LOGIN with a wrong password succeeded")
	}
	ic.Close()

	// An access token from `token` (the relay's own are caught by their
	// shape below).
	tok := printedToken(t, path, "invoices")

	if !jwtRE.MatchString(tok) {
		t.Fatalf("the JWT shape check would miss the fake's tokens: %.24s...", tok)
	}

	b64 := base64.StdEncoding.EncodeToString
	secrets := map[string]string{
		"local password":                      localPass,
		"wrong password":                      wrongPass,
		"AUTH PLAIN payload (base64)":         b64([]byte("\x00" + localUser + "\x00" + localPass)),
		"password (base64, AUTH LOGIN)":       b64([]byte(localPass)),
		"wrong password (base64, AUTH LOGIN)": b64([]byte(wrongPass)),
		"client secret":                       appSecret,
		"bcrypt hash":                         inv.hash,
		"bcrypt hash body":                    inv.hash[7:],
		"an access token from `token`":        tok,
		"XOAUTH2 payload":                     "auth=Bearer",
		"XOAUTH2 payload (base64)":            "dXNlcj1", // base64("user=")
	}
	check := func(log string) {
		t.Helper()
		for what, secret := range secrets {
			if strings.Contains(log, secret) {
				t.Errorf("the %s log contains the %s (%q)", format, what, secret)
			}
		}
		// Any JWT-shaped access token (the fake's look like Entra's:
		// base64url of {"alg":... or {"typ":...).
		if m := jwtRE.FindString(log); m != "" {
			t.Errorf("the %s log contains a JWT-shaped token %.24s...", format, m)
		}
		if strings.Contains(strings.ToLower(log), "bearer ") {
			t.Errorf("the %s log contains a Bearer credential", format)
		}
	}
	log := s.stderr.String()
	check(log)

	// Not vacuous: the debug protocol lines are there.
	var want []string
	if format == "json" {
		want = []string{`"level":"DEBUG"`, `"msg":"command"`, `"cmd":"AUTH"`, `"cmd":"MAIL"`, `"cmd":"RCPT"`,
			`"name":"LOGIN"`, `"name":"AUTHENTICATE"`, `"mechanism":"PLAIN"`, `"mechanism":"LOGIN"`}
	} else {
		want = []string{"level=DEBUG", "msg=command", "cmd=AUTH", "cmd=MAIL", "cmd=RCPT",
			"name=LOGIN", "name=AUTHENTICATE", "mechanism=PLAIN", "mechanism=LOGIN"}
	}
	for _, w := range want {
		if !strings.Contains(log, w) {
			t.Errorf("the %s debug log lacks %s", format, w)
		}
	}
	if !strings.Contains(log, "username") || !strings.Contains(log, localUser) {
		t.Errorf("the %s log does not name the user at all", format)
	}

	// Shutdown logs too.
	s.stop()
	waitFor(t, waitTimeout, "shutting down", func() bool { return strings.Contains(s.stderr.String(), "shutting down") })
	check(s.stderr.String())
	if t.Failed() {
		t.Logf("log:\n%s", s.stderr.String())
	}
}
