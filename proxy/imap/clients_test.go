package imap

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// Other real clients against the proxy: Python's imaplib and curl.

const imaplibScript = `
import imaplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]

m = imaplib.IMAP4("127.0.0.1", port)
assert "AUTH=PLAIN" in m.capabilities, m.capabilities
m.login(user, password)
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
typ, data = m.fetch("1", "(RFC822)")
assert typ == "OK", (typ, data)
sys.stdout.buffer.write(data[0][1])
m.logout()

# AUTHENTICATE PLAIN, answering the server's continuation.
m = imaplib.IMAP4("127.0.0.1", port)
m.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, password)).encode())
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
m.logout()

# A wrong password is an error with AUTHENTICATIONFAILED.
m = imaplib.IMAP4("127.0.0.1", port)
try:
    m.login(user, "wrong")
    raise SystemExit("wrong password accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
`

func TestPythonImaplib(t *testing.T) {
	python := testutil.Tool(t, "python3")
	w := newWorld(t, worldOptions{})
	msg := testMessage("python", "fetched by imaplib\r\n")
	if err := w.fake.AppendIMAP(testMailbox, "INBOX", msg); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(w.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", imaplibScript, port, testUser, testPassword)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("imaplib: %v\n%s", err, stderr.String())
	}
	if !bytes.Equal(out, msg) {
		t.Errorf("imaplib fetched %q, want %q", out, msg)
	}
}

func TestCurl(t *testing.T) {
	curl := testutil.Tool(t, "curl")
	w := newWorld(t, worldOptions{})
	msg := testMessage("curl", "fetched by curl\r\n")
	if err := w.fake.AppendIMAP(testMailbox, "INBOX", msg); err != nil {
		t.Fatal(err)
	}
	run := func(url string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, curl, "--silent", "--show-error", "--url", url, "-u", testUser+":"+testPassword)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", url, err, stderr.String())
		}
		return out
	}
	base := "imap://" + w.addr
	if out := run(base + "/"); !strings.Contains(string(out), "INBOX") || !strings.Contains(string(out), "Sent Items") {
		t.Errorf("LIST: %q", out)
	}
	if out := run(base + "/INBOX;UID=1"); !bytes.Equal(out, msg) {
		t.Errorf("FETCH: %q, want %q", out, msg)
	}
}
