package pop3

import (
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// End to end against a real POP3 server: Dovecot 2.3's POP3 (implicit TLS,
// a test CA) as the provider's upstream, checking every XOAUTH2 token
// through the fake Microsoft 365's introspection endpoint. The relay gets
// an app-only token from the fake, logs in to Dovecot with AUTH XOAUTH2 and
// copies bytes; the apps are Python's poplib and curl on the relay's STLS
// and plain listeners.

// poplibDovecotScript reads the maildrop through the relay over STLS,
// deletes the first message, and checks in a second session that it is
// gone and a wrong password is refused.
const poplibDovecotScript = `
import poplib, ssl, sys
port, user, password, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile)
def connect():
    p = poplib.POP3("127.0.0.1", port)
    p.stls(context=ctx)
    return p
p = connect()
p.user(user)
p.pass_(password)
print("stat", p.stat()[0])
print("capa-after-login", "UIDL" in p.capa())
resp, uids, _ = p.uidl()
print("uidl", len(uids))
resp, lines, _ = p.retr(1)
sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
print("dele", p.dele(1).decode())
p.quit()
p = connect()
p.user(user)
p.pass_(password)
print("stat-after", p.stat()[0])
p.quit()
p = connect()
p.user(user)
try:
    p.pass_("wrong")
except poplib.error_proto as e:
    print("refused", e.args[0].decode())
`

func TestDovecotPoplib(t *testing.T) {
	python := testutil.Tool(t, "python3")
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS, Dovecot: true})
	w.dc.Deliver(t, testMailbox, []byte(message("from dovecot", "first, read through the relay\r\n.dot line\r\n")))
	w.dc.Deliver(t, testMailbox, []byte(message("second", "second\r\n")))
	out := run(t, python, "-c", poplibDovecotScript, w.port, testUser, testPassword, w.cert.CAFile)
	for _, want := range []string{"stat 2", "capa-after-login True", "uidl 2", "first, read through the relay",
		"\n.dot line\n", "dele +OK", "stat-after 1", "refused -ERR [AUTH] Authentication failed."} {
		if !strings.Contains(out, want) {
			t.Errorf("poplib through the relay to Dovecot: output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(w.dc.Log(), "pop3(") {
		t.Errorf("Dovecot logged no POP3 session:\n%s", w.dc.Log())
	}
}

// curl against Dovecot through the relay; Dovecot refuses the stranger's
// token (-ERR [AUTH] to the app), and Dovecot down is -ERR [SYS/TEMP].
func TestDovecotCurlAndRefusals(t *testing.T) {
	curl := testutil.Tool(t, "curl")
	w := newWorld(t, worldOptions{Dovecot: true})
	w.dc.Deliver(t, testMailbox, []byte(message("curl via dovecot", "fetched by curl\r\n")))
	out := run(t, curl, "--silent", "--show-error", "--max-time", "30", "--user", testUser+":"+testPassword,
		"pop3://127.0.0.1:"+w.port+"/1")
	if !strings.Contains(out, "Subject: curl via dovecot") || !strings.Contains(out, "fetched by curl") {
		t.Errorf("curl RETR through the relay to Dovecot:\n%s", out)
	}

	c := w.dial()
	c.cmd("USER " + strangerUser)
	if l := c.cmd("PASS " + testPassword); l != textAuthFailed {
		t.Errorf("stranger: %q", l)
	}
	if !strings.Contains(w.logs.String(), "the upstream refused the token: -ERR") {
		t.Errorf("the log lacks Dovecot's refusal")
	}
	w.dc.Stop()
	c.cmd("USER " + testUser)
	if l := c.cmd("PASS " + testPassword); l != textUnavailable {
		t.Errorf("Dovecot down: %q", l)
	}
	w.dc.Start()
	c.cmd("USER " + testUser)
	if l := c.cmd("PASS " + testPassword); l != textLoggedIn {
		t.Errorf("Dovecot up again: %q", l)
	}
	if l := c.cmd("STAT"); !strings.HasPrefix(l, "+OK 1 ") {
		t.Errorf("STAT from Dovecot: %q", l)
	}
}
