package pop3

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// POP3 clients nobody here wrote, through the relay to the fake Exchange:
// Python's poplib, curl and fetchmail.

// toolTimeout bounds one run of an external client.
const toolTimeout = 60 * time.Second

// run runs an external client and returns its standard output; a failure
// shows its standard error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), err, out, stderr.String())
	}
	return string(out)
}

// poplibScript logs in with USER/PASS and with AUTH PLAIN (with and
// without an initial response: poplib has no AUTH, so the commands are
// sent as poplib sends any), over STLS or implicit TLS as the mode
// argument says, reads the maildrop and checks the refusals' codes.
const poplibScript = `
import base64, poplib, ssl, sys
mode, port, user, password, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)

def connect():
    if mode == "implicit":
        return poplib.POP3_SSL("127.0.0.1", port, context=ctx)
    p = poplib.POP3("127.0.0.1", port)
    caps = p.capa()
    assert "STLS" in caps and "RESP-CODES" in caps and "AUTH-RESP-CODE" in caps, caps
    p.stls(context=ctx)
    assert "STLS" not in p.capa()
    return p

p = connect()
p.user(user)
p.pass_(password)
count, size = p.stat()
print("stat", count, size)
resp, lines, octets = p.retr(1)
sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
resp, uids, _ = p.uidl()
print("uidl", len(uids))
resp, top, _ = p.top(2, 0)
print("top", [l.decode() for l in top if l.startswith(b"Subject:")], len(top))
p.quit()

plain = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
p = connect()
print("auth-ir", p._shortcmd("AUTH PLAIN " + plain).decode())
print("stat", p.stat()[0])
p.quit()

p = connect()
assert p._shortcmd("AUTH PLAIN").startswith(b"+")
print("auth", p._shortcmd(plain).decode())
p.quit()

p = connect()
p.user(user)
try:
    p.pass_("wrong")
    raise SystemExit("wrong password accepted")
except poplib.error_proto as e:
    print("refused", e.args[0].decode())
p.quit()
`

func TestPythonPoplib(t *testing.T) {
	python := testutil.Tool(t, "python3")
	for _, mode := range []string{config.TLSStartTLS, config.TLSImplicit} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t, worldOptions{TLS: mode})
			w.seed(message("poplib", "fetched by poplib\r\n.a dot\r\n"), message("second", "the body\r\n"))
			out := run(t, python, "-c", poplibScript, mode, w.port, testUser, testPassword, w.cert.CAFile)
			for _, want := range []string{
				"stat 2 ", "Subject: poplib", "fetched by poplib", "\n.a dot\n", "uidl 2", "top ['Subject: second'] 4",
				"auth-ir +OK Logged in.", "stat 2", "auth +OK Logged in.",
				"refused -ERR [AUTH] Authentication failed.",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("poplib output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// curl's POP3: pop3:// on the plain listener (a message, the listing),
// pop3s:// on implicit TLS; a wrong password is a login failure.
func TestCurl(t *testing.T) {
	curl := testutil.Tool(t, "curl")
	for _, mode := range []string{config.TLSNone, config.TLSImplicit} {
		t.Run(mode, func(t *testing.T) {
			w := newWorld(t, worldOptions{TLS: mode})
			w.seed(message("curl one", "first body\r\n"), message("curl two", "second body\r\n"))
			scheme := "pop3"
			args := []string{"--silent", "--show-error", "--max-time", "30", "--user", testUser + ":" + testPassword}
			if mode == config.TLSImplicit {
				scheme = "pop3s"
				args = append(args, "--cacert", w.cert.CAFile)
			}
			base := scheme + "://127.0.0.1:" + w.port + "/"
			if out := run(t, curl, append(args, base+"2")...); !strings.Contains(out, "Subject: curl two") || !strings.Contains(out, "second body") {
				t.Errorf("RETR 2 through curl:\n%s", out)
			}
			if out := run(t, curl, append(args, base)...); !strings.HasPrefix(out, "1 ") || !strings.Contains(out, "\n2 ") {
				t.Errorf("LIST through curl:\n%s", out)
			}
			ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
			defer cancel()
			bad := append(args[:len(args):len(args)], "--user", testUser+":wrong", base+"1")
			if err := exec.CommandContext(ctx, curl, bad...).Run(); err == nil {
				t.Error("curl with a wrong password succeeded")
			}
		})
	}
}

// fetchmail polls the relay with USER/PASS over STLS (its default where
// offered), delivers each message to an MDA, and keeps them on the server.
func TestFetchmail(t *testing.T) {
	fetchmail := testutil.Tool(t, "fetchmail")
	w := newWorld(t, worldOptions{TLS: config.TLSStartTLS})
	w.seed(message("fetchmail one", "first\r\n"), message("fetchmail two", "second\r\n"))
	dir := t.TempDir()
	mbox := filepath.Join(dir, "mbox")
	rc := filepath.Join(dir, "fetchmailrc")
	conf := fmt.Sprintf(`set no syslog
poll 127.0.0.1 service %s protocol POP3 auth password timeout 30
  user %q password %q is %q here
  sslproto TLS1.2+ sslcertfile %q sslcertck sslcommonname localhost
  keep fetchall
  mda "/bin/sh -c 'cat >> %s'"
`, w.port, testUser, testPassword, os.Getenv("USER"), w.cert.CAFile, mbox)
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(t, fetchmail, "--fetchmailrc", rc, "--idfile", filepath.Join(dir, "ids"), "--pidfile", filepath.Join(dir, "pid"),
		"--nodetach", "--verbose")
	b, err := os.ReadFile(mbox)
	if err != nil {
		t.Fatalf("no mail delivered: %v\nfetchmail:\n%s", err, out)
	}
	for _, want := range []string{"Subject: fetchmail one", "Subject: fetchmail two", "second"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("delivered mail lacks %q:\n%s", want, b)
		}
	}
	if !strings.Contains(out, "STLS") {
		t.Errorf("fetchmail did not use STLS:\n%s", out)
	}
}
