//go:build linux

package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// ptyScript runs argv[1:] on a pseudo-terminal (Python's pty module, not
// ours) and answers the prompts: argv[1] holds "prompt-substring<TAB>answer"
// lines, each answer sent once its prompt has appeared in the output since
// the last answer. The whole transcript (what the terminal showed) goes to
// stdout.
const ptyScript = `
import os, pty, sys, select, time
pairs = [l.split("\t", 1) for l in open(sys.argv[1]).read().splitlines()]
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
out, seen, deadline = b"", 0, time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    if pairs and pairs[0][0].encode() in out[seen:]:
        seen = len(out)
        os.write(fd, pairs.pop(0)[1].encode() + b"\r")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status) if not pairs else 3)
`

// TestInitTerminal drives init on a real pseudo-terminal: the secret and
// the password are not echoed, and a wrong answer is asked again rather
// than ending init (as it does on a pipe).
func TestInitTerminal(t *testing.T) {
	py := testutil.Tool(t, "python3")
	bin := buildBinary(t)
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	answers := strings.Join([]string{
		"Cloud:\t",
		"Grant\tpassword-please", // not a grant: asked again
		"is not one of\t1",
		"tenant\t" + ms.Tenant,
		"client) ID\t" + appID,
		"display name\tTerminal test",
		"Client credential\t",
		"Client secret\t" + appSecret,
		"Mailbox(es)\t" + mailbox,
		"Other addresses\t",
		"User name\t" + localUser,
		"Password the application\t" + localPass,
		"Delivery\t2",
		"Upstream\t",
	}, "\n")
	script := filepath.Join(dir, "answers.txt")
	writeFile(t, script, answers)
	args := append([]string{"-c", ptyScript, script, bin, "init", "-config", path, "-no-login"}, fakeFlags(ms, dir)...)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout*3)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, args...).CombinedOutput()
	transcript := string(out)
	if err != nil {
		t.Fatalf("init on a terminal: %v\n%s", err, transcript)
	}
	if strings.Contains(transcript, appSecret) || strings.Contains(transcript, localPass) {
		t.Errorf("the terminal echoed the secret or the password:\n%s", transcript)
	}
	wantAll(t, transcript, ms.Tenant, `"password-please" is not one of`, "Wrote "+path)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Accounts[0]; a.Delivery != config.DeliveryQueue || a.ProviderRef.ClientSecret != appSecret {
		t.Errorf("account %+v", a)
	}
}
