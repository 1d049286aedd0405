package smtp

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// queuedAs matches the relay's reply to a message it spooled (go-smtp's
// client keeps the text after the enhanced code), and takes its spool id.
var queuedAs = regexp.MustCompile(`OK queued as ([0-9a-z]{26})$`)

// openSpool opens the relay's spool in stateDir beside it, as `oauthrelay
// queue` does while `serve` runs.
func openSpool(t *testing.T, stateDir string) *spool.Spool {
	t.Helper()
	sp, _, err := spool.Open(filepath.Join(stateDir, "queue"), spool.Options{})
	if err != nil {
		t.Fatalf("open the relay's spool: %v", err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

// An account with delivery: queue answers the app's DATA with 250 "queued
// as <id>" (not the upstream's reply), and the worker delivers the message
// to the fake as the app sent it.
func TestQueueDeliversThroughRelay(t *testing.T) {
	w := newWorld(t, worldOptions{queue: true})
	msg := message(mailbox, recipient, "queued invoice", "Invoice 4711 is attached.")
	text, err := send(w.login(), mailbox, []string{recipient}, msg)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if !queuedAs.MatchString(text) {
		t.Fatalf("DATA answered %q, want OK queued as <id>", text)
	}
	m := w.waitMessages(1)[0]
	if string(m.Data) != msg || m.From != mailbox || len(m.To) != 1 || m.To[0] != recipient {
		t.Errorf("the fake got %q from %s to %v", m.Data, m.From, m.To)
	}
}

// With the upstream unreachable the app still gets 250: the message waits
// in the spool, whole, for the upstream to come back.
func TestQueueAcceptsWhileUpstreamDown(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, worldOptions{queue: true, stateDir: dir, smtpAddr: testutil.ClosedAddr(t)})
	msg := message(mailbox, recipient, "queued while down", "Exchange is unreachable.")
	text, err := send(w.login(), mailbox, []string{recipient}, msg)
	if err != nil {
		t.Fatalf("send with the upstream down: %v", err)
	}
	id := queuedAs.FindStringSubmatch(text)
	if id == nil {
		t.Fatalf("DATA answered %q, want OK queued as <id>", text)
	}
	sp := openSpool(t, dir)
	env, err := sp.Get(id[1])
	if err != nil {
		t.Fatalf("the acknowledged message is not in the spool: %v", err)
	}
	if !env.Failed.IsZero() || env.Pending() != 1 || env.From != mailbox || env.Recipients[0].Addr != recipient {
		t.Errorf("spooled envelope %+v, want it waiting for %s", env, recipient)
	}
	f, err := sp.OpenBody(id[1])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b, err := io.ReadAll(f); err != nil || string(b) != msg {
		t.Errorf("spooled body %q (%v), want %q", b, err, msg)
	}
	if n := len(w.ms.Messages()); n != 0 {
		t.Errorf("the fake got %d messages", n)
	}
}

// A spool that cannot be written (its active/ directory replaced by a
// file) gets 452 4.3.1 at DATA, never 250; the session goes on.
func TestQueueSpoolUnwritable(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, worldOptions{queue: true, stateDir: dir})
	c := w.login()
	active := filepath.Join(dir, "queue", "active")
	if err := os.RemoveAll(active); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(active, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "no room", "Nowhere to put it."))
	wantCode(t, err, 452, "4.3.1")
	if err := c.Noop(); err != nil {
		t.Errorf("NOOP after the 452: %v", err)
	}
	if n := len(w.ms.Messages()); n != 0 {
		t.Errorf("the fake got %d messages", n)
	}
}

// Python's smtplib, a client nobody here wrote, sends to a queue account
// and reads the relay's "queued as" reply; the fake then has the message.
func TestQueuePythonSmtplib(t *testing.T) {
	py := testutil.Tool(t, "python3")
	w := newWorld(t, worldOptions{queue: true})
	host, port, _ := strings.Cut(w.addr, ":")
	script := `
import smtplib, sys
host, port, user, pw, frm, to = sys.argv[1:]
msg = "From: %s\r\nTo: %s\r\nSubject: queued by smtplib\r\n\r\nHello from Python.\r\n" % (frm, to)
with smtplib.SMTP(host, int(port), timeout=30) as s:
    s.ehlo("python.test")
    s.login(user, pw)
    s.mail(frm)
    s.rcpt(to)
    code, resp = s.data(msg)
    print(code, resp.decode())
`
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script, host, port, username, password, mailbox, recipient).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`^250 2\.0\.0 OK queued as [0-9a-z]{26}\n$`).Match(out) {
		t.Errorf("smtplib read %q, want 250 2.0.0 OK queued as <id>", out)
	}
	m := w.waitMessages(1)[0]
	if !strings.Contains(string(m.Data), "Subject: queued by smtplib") {
		t.Errorf("the fake got %q", m.Data)
	}
}
