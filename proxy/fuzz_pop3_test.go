package proxy_test

import (
	"bytes"
	"encoding/base64"
	"regexp"
	"strings"
	"testing"

	pop3front "github.com/oauthrelay/oauthrelay/proxy/pop3"
)

// pop3PreAuthLine is what the relay sends before a login: a status line
// (+OK, -ERR with an optional response code), the "+ " of AUTH, a line of a
// CAPA or AUTH listing (a capability name and its arguments), or the "."
// that ends one.
var pop3PreAuthLine = regexp.MustCompile(`^(\+OK( .*)?|-ERR .+|\+ |[A-Z][A-Z0-9-]*( [A-Za-z0-9 -]+)?|\.)$`)

// FuzzPOP3Session sends any bytes to the relay's POP3 listener, half-closes,
// and reads every line. The relay must not panic, must answer only in POP3's
// forms, must end the session once the input is over, and never logs the
// app in (the account's token endpoint does not answer: the right password
// gets -ERR [SYS/TEMP]), so the seeds reach every command of the
// AUTHORIZATION state.
func FuzzPOP3Session(f *testing.F) {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + fuzzUser + "\x00" + fuzzPassword))
	for _, seed := range []string{
		"CAPA\r\nUSER " + fuzzUser + "\r\nPASS " + fuzzPassword + "\r\nQUIT\r\n",
		"AUTH PLAIN " + plain + "\r\nAUTH PLAIN\r\n" + plain + "\r\nAUTH PLAIN\r\n*\r\nAUTH\r\n",
		"NOOP\r\nSTAT\r\nRETR 1\r\nAPOP erp 0123\r\nPASS x\r\nSTLS\r\nUSER\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"USER " + strings.Repeat("a", 9000) + "\r\n",
		"\x00\xff\r\n.\r\n",
	} {
		f.Add([]byte(seed))
	}
	relay, cfg := fuzzRelay(f)
	srv, err := pop3front.New(relay, cfg.Listen.POP3)
	if err != nil {
		f.Fatal(err)
	}
	addr := fuzzServe(f, cfg.Listen.POP3, srv)
	if lines, err := converse(addr, []byte("USER "+fuzzUser+"\r\nPASS "+fuzzPassword+"\r\n")); err != nil ||
		len(lines) != 3 || !strings.HasPrefix(lines[2], "-ERR [SYS/TEMP] ") {
		f.Fatalf("the right password: %q, %v; want -ERR [SYS/TEMP] (no token)", lines, err)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		lines, err := converse(addr, input)
		if err != nil {
			t.Fatalf("session: %v", err)
		}
		for _, line := range lines {
			if !pop3PreAuthLine.MatchString(line) {
				t.Fatalf("not a POP3 line: %q", line)
			}
			if bytes.HasPrefix([]byte(line), []byte("+OK Logged in")) {
				t.Fatalf("logged in without a token")
			}
		}
	})
}
