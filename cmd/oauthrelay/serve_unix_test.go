//go:build unix

package main

// The signal-driven parts of serve: SIGHUP reload and SIGTERM graceful stop.

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// sighup sends SIGHUP to this process until the serve's log shows one more
// occurrence of want than before (serve registers for SIGHUP right
// after it starts listening, so the first signal may come early).
//
// While it runs, the test registers for SIGHUP itself, so a signal that
// arrives when no serve listens cannot kill the test binary (Go's default
// action for SIGHUP is to exit).
func sighup(t testing.TB, s *served, want string) {
	t.Helper()
	before := strings.Count(s.stderr.String(), want)
	deadline := time.Now().Add(waitTimeout)
	for strings.Count(s.stderr.String(), want) == before {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after SIGHUP:\n%s", want, s.stderr.String())
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50 && strings.Count(s.stderr.String(), want) == before; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Not parallel: the SIGHUP goes to the whole test binary, and tests that
// are not parallel run alone.
func TestServeReload(t *testing.T) {
	guard := make(chan os.Signal, 16)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)

	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	spec := cfgSpec{stateDir: filepath.Join(dir, "state"), smtp: listenAny, admin: listenAny, accounts: []acct{invoices(t)}}
	path := filepath.Join(dir, "oauthrelay.yaml")
	writeConfig(t, ms, path, spec)
	s := startServe(t, path)

	// A session logged in before the reload, kept open across it.
	live := mustLogin(t, s.smtp, localUser, localPass)

	// New password for erp, and a second account.
	const newPass = "erp-New-Password-3"
	inv := invoices(t)
	hp := runCmd(t, strings.NewReader(newPass+"\n"), "hash-password") // as an administrator would
	if hp.code != 0 {
		t.Fatalf("hash-password: %v", hp)
	}
	inv.hash = strings.TrimSpace(hp.stdout)
	sales := acct{name: "sales", provider: "app", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass),
		allowedFrom: []string{salesBox}}
	spec.accounts = []acct{inv, sales}
	writeConfig(t, ms, path, spec)
	sighup(t, s, "configuration reloaded")
	if !strings.Contains(s.stderr.String(), "accounts=2") {
		t.Errorf("reload log does not count 2 accounts:\n%s", s.stderr.String())
	}

	c := mustLogin(t, s.smtp, localUser, newPass)
	sendOn(t, c, mailbox, "new password")
	c.Quit()
	wantAuthRefused(t, s.smtp, localUser, localPass)
	c = mustLogin(t, s.smtp, salesUser, salesPass)
	sendOn(t, c, salesBox, "added account")
	c.Quit()
	if m := delivered(t, ms, "added account"); m.AuthUser != salesBox {
		t.Errorf("added account delivered as %s", m.AuthUser)
	}
	delivered(t, ms, "new password")

	// The live session was not dropped and still sends.
	sendOn(t, live, mailbox, "live session across reload")
	delivered(t, ms, "live session across reload")

	// An invalid configuration is refused and logged; the running one stays.
	for _, bad := range []string{
		"state_dir: [unclosed\n", // YAML syntax
		strings.Replace(configYAML(ms, spec), "provider: app", "provider: nosuchprovider", 1), // validation
	} {
		writeFile(t, path, bad)
		sighup(t, s, "reload failed, keeping the running configuration")
		c = mustLogin(t, s.smtp, localUser, newPass)
		sendOn(t, c, mailbox, "after a bad reload")
		c.Quit()
		mustLogin(t, s.smtp, salesUser, salesPass).Quit()
	}
	if !strings.Contains(s.stderr.String(), "nosuchprovider") {
		t.Errorf("the validation error is not in the log:\n%s", s.stderr.String())
	}
	if err := live.Quit(); err != nil {
		t.Errorf("QUIT on the live session: %v", err)
	}
}

// SIGTERM lets a session in the middle of a transaction finish, refuses new
// connections at once, and the process exits 0 once the session is done.
func TestServeGracefulStop(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{smtp: listenAny, imap: listenAny, accounts: []acct{invoices(t)}})

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	var stderr syncBuffer
	cmd := exec.CommandContext(ctx, bin, "serve", "-config", path)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("serve log:\n%s", stderr.String())
		}
	}()
	var line string
	waitFor(t, waitTimeout, "the subprocess to start", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("serve exited early: %v\n%s", err, stderr.String())
		default:
		}
		line = startedRE.FindString(stderr.String())
		return line != ""
	})
	addr, imapAddr := addrIn(line, "smtp"), addrIn(line, "imap")

	c := mustLogin(t, addr, localUser, localPass)
	if err := c.Mail(mailbox, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(recipient, nil); err != nil {
		t.Fatal(err)
	}
	// An IMAP client logged in (the relay copies its bytes) may finish
	// its work during the grace period too.
	ic, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login(localUser, localPass).Wait(); err != nil {
		t.Fatal(err)
	}
	// One that has not logged in is told BYE at once.
	pre, err := net.DialTimeout("tcp", imapAddr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	pre.SetDeadline(time.Now().Add(waitTimeout))
	preR := bufio.NewReader(pre)
	if greet, err := preR.ReadString('\n'); err != nil || !strings.HasPrefix(greet, "* OK") {
		t.Fatalf("IMAP greeting: %q %v", greet, err)
	}

	sigAt := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitTimeout, "new connections to be refused", func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	// The log reaches us through a pipe: wait for it rather than race it.
	waitFor(t, waitTimeout, "shutting down in the log", func() bool {
		return strings.Contains(stderr.String(), "shutting down")
	})

	// The pre-login IMAP client gets BYE and the connection ends.
	rest, _ := io.ReadAll(preR)
	if !strings.Contains(string(rest), "* BYE") {
		t.Errorf("pre-login IMAP session at SIGTERM got %q, want * BYE", rest)
	}
	// The logged-in IMAP client still works, then leaves.
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		t.Errorf("IMAP SELECT after SIGTERM: %v", err)
	}
	if err := ic.Logout().Wait(); err != nil {
		t.Errorf("IMAP LOGOUT after SIGTERM: %v", err)
	}
	ic.Close()

	// The transaction started before SIGTERM completes.
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA after SIGTERM: %v", err)
	}
	io.WriteString(w, "From: "+mailbox+"\r\nTo: "+recipient+"\r\nSubject: in flight at SIGTERM\r\n\r\nfinish me\r\n")
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA after SIGTERM: %v", err)
	}
	delivered(t, ms, "in flight at SIGTERM")
	select {
	case err := <-exited:
		t.Fatalf("serve exited while a session was open: %v", err)
	default:
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}

	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve: %v (want exit 0)", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("serve did not exit within %v of the last session's QUIT", waitTimeout)
	}
	if d := time.Since(sigAt); d > shutdownGrace {
		t.Errorf("exit took %v, the whole grace period", d)
	}
}
