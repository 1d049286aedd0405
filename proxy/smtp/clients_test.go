package smtp

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// Clients nobody here wrote: Python's smtplib and swaks.

func TestPythonSmtplib(t *testing.T) {
	py := testutil.Tool(t, "python3")
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run(mech, func(t *testing.T) {
			w := newWorld(t, worldOptions{})
			host, port, _ := strings.Cut(w.addr, ":")
			script := `
import smtplib, sys
from email.message import EmailMessage
host, port, user, pw, mech, frm, to = sys.argv[1:]
m = EmailMessage()
m["From"], m["To"], m["Subject"] = frm, to, "from smtplib " + mech
m.set_content("Hello from Python.\n")
with smtplib.SMTP(host, int(port), timeout=30) as s:
    s.ehlo("python.test")
    s.user, s.password = user, pw
    code, resp = s.auth(mech, getattr(s, "auth_" + mech.lower()))
    print(code, resp.decode())
    s.send_message(m)
`
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, py, "-c", script, host, port, username, password, mech, mailbox, recipient).CombinedOutput()
			if err != nil {
				t.Fatalf("smtplib: %v\n%s", err, out)
			}
			m := w.waitMessages(1)[0]
			if !strings.Contains(string(m.Data), "Subject: from smtplib "+mech) {
				t.Fatalf("upstream got %q", m.Data)
			}
		})
	}
}

func TestSwaks(t *testing.T) {
	swaks := testutil.Tool(t, "swaks")
	w := newWorld(t, worldOptions{listenTLS: "starttls"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, auth := range []string{"PLAIN", "LOGIN"} {
		out, err := exec.CommandContext(ctx, swaks, "--server", w.addr, "--tls", "--tls-verify", "--tls-ca-path", w.cert.CAFile,
			"--auth", auth, "--auth-user", username, "--auth-password", password,
			"--from", mailbox, "--to", recipient, "--header", "Subject: swaks "+auth, "--body", "sent by swaks",
			"--helo", "swaks.test", "--timeout", "30").CombinedOutput()
		if err != nil {
			t.Fatalf("swaks %s: %v\n%s", auth, err, out)
		}
	}
	msgs := w.waitMessages(2)
	for i, auth := range []string{"PLAIN", "LOGIN"} {
		if !strings.Contains(string(msgs[i].Data), "Subject: swaks "+auth) {
			t.Errorf("message %d: %q", i, msgs[i].Data)
		}
	}
	// A wrong password through swaks gets 535 and swaks exits non-zero.
	out, err := exec.CommandContext(ctx, swaks, "--server", w.addr, "--tls", "--tls-ca-path", w.cert.CAFile,
		"--auth", "PLAIN", "--auth-user", username, "--auth-password", "wrong",
		"--from", mailbox, "--to", recipient, "--timeout", "30").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "535 5.7.8") {
		t.Fatalf("swaks with a wrong password: %v\n%s", err, out)
	}
}

// swaks with PIPELINING over the relay's own STARTTLS, against
// enforce_header_from: its default From header (the envelope sender)
// passes, a From header outside allowed_from gets 550 5.7.1.
func TestSwaksPipeliningHeaderFrom(t *testing.T) {
	swaks := testutil.Tool(t, "swaks")
	w := newWorld(t, worldOptions{listenTLS: "starttls", enforceHeaderFrom: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := func(extra ...string) ([]byte, error) {
		args := append([]string{"--server", w.addr, "--tls", "--tls-verify", "--tls-ca-path", w.cert.CAFile, "--pipeline",
			"--auth", "PLAIN", "--auth-user", username, "--auth-password", password,
			"--from", mailbox, "--to", recipient, "--helo", "swaks.test", "--timeout", "30"}, extra...)
		return exec.CommandContext(ctx, swaks, args...).CombinedOutput()
	}
	if out, err := run("--header", "Subject: swaks pipelined"); err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if m := w.waitMessages(1)[0]; !strings.Contains(string(m.Data), "Subject: swaks pipelined") {
		t.Fatalf("upstream got %q", m.Data)
	}
	out, err := run("--header", "From: ceo@contoso.com")
	if err == nil || !strings.Contains(string(out), "550 5.7.1") {
		t.Fatalf("swaks with a From header outside allowed_from: %v\n%s", err, out)
	}
	if n := len(w.ms.Messages()); n != 1 {
		t.Fatalf("upstream has %d messages, want 1", n)
	}
}

// Python's smtplib over the relay's STARTTLS: lines that start with dots
// (which smtplib dot-stuffs) arrive as the app wrote them.
func TestPythonSmtplibSTARTTLSDots(t *testing.T) {
	py := testutil.Tool(t, "python3")
	w := newWorld(t, worldOptions{listenTLS: "starttls"})
	host, port, _ := strings.Cut(w.addr, ":")
	script := `
import smtplib, ssl, sys
host, port, ca, user, pw, frm, to = sys.argv[1:]
body = "Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n"
with smtplib.SMTP(host, int(port), timeout=30) as s:
    s.starttls(context=ssl.create_default_context(cafile=ca))
    s.login(user, pw)
    s.sendmail(frm, [to], body)
`
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script, host, port, w.cert.CAFile, username, password, mailbox, recipient).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	want := "Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n"
	if m := w.waitMessages(1)[0]; string(m.Data) != want {
		t.Fatalf("upstream got %q, want %q", m.Data, want)
	}
}
