//go:build unix

package main

// The start and the stop of `serve`, run as a process: a listener that
// cannot be bound ends it at once with the reason, and SIGTERM ends it at
// any moment after it started.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// exitBound is how long a serve that must end may take: far more than it
// needs, only to tell "ends" from "hangs".
const exitBound = 10 * time.Second

// Every listener's port taken (by another process, or by another listener
// of the same file): serve exits 1 with the key, the address and the
// reason, having served nothing.
func TestServeBindFailure(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	ms := startFake(t, fakems.Options{})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := taken.Addr().String()
	at := fmt.Sprintf("{addr: %q}", busy)
	for _, tc := range []struct {
		name, key string
		spec      cfgSpec
	}{
		{"smtp", "listen.smtp", cfgSpec{smtp: at, imap: listenAny, admin: listenAny}},
		{"imap", "listen.imap", cfgSpec{smtp: listenAny, imap: at, admin: listenAny}},
		{"admin", "listen.admin", cfgSpec{smtp: listenAny, imap: listenAny, admin: at}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.accounts = []acct{invoices(t)}
			path := newConfig(t, ms, tc.spec)
			code, stderr := runToExit(t, bin, path)
			want := tc.key + ": listen "
			if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(stderr, busy) ||
				!strings.Contains(stderr, syscall.EADDRINUSE.Error()) {
				t.Errorf("want exit 1 and %q, %s and %q on stderr; exit %d:\n%s", want, busy, syscall.EADDRINUSE.Error(), code, stderr)
			}
			if strings.Contains(stderr, "oauthrelay started") {
				t.Errorf("serve started despite the bind failure:\n%s", stderr)
			}
		})
	}
	// The case: imap on smtp's port, in one file.
	t.Run("imap on smtp's port", func(t *testing.T) {
		free, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := free.Addr().String()
		free.Close()
		same := fmt.Sprintf("{addr: %q}", addr)
		path := newConfig(t, ms, cfgSpec{smtp: same, imap: same, admin: listenAny, accounts: []acct{invoices(t)}})
		code, stderr := runToExit(t, bin, path)
		if code != 1 || !strings.Contains(stderr, "listen.imap: listen "+addr) {
			t.Errorf("want exit 1 naming listen.imap and %s; exit %d:\n%s", addr, code, stderr)
		}
	})
}

// runToExit runs `serve -config path` and returns its exit code and
// stderr; the test fails (and the process is killed) if it does not end
// within exitBound.
func runToExit(t *testing.T, bin, path string) (int, string) {
	t.Helper()
	var stderr syncBuffer
	cmd := exec.Command(bin, "serve", "-config", path)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err := waitExit(t, cmd, &stderr)
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// waitExit waits (bounded) for a started cmd; on timeout it kills it and
// fails the test, showing its log.
func waitExit(t *testing.T, cmd *exec.Cmd, stderr *syncBuffer) error {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return err
	case <-time.After(exitBound):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("serve did not exit within %v:\n%s", exitBound, stderr.String())
		return nil
	}
}

// SIGTERM at random moments of the start (before the signal handler, while
// the listeners are bound, while the servers are built, as they begin to
// serve) always ends the process: with exit 0, or killed by the signal
// when it came before main installed its handler.
func TestServeStopDuringStart(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{smtp: listenAny, imap: listenAny, admin: listenAny, accounts: []acct{invoices(t)}})
	const iterations = 10
	for i := range iterations {
		delay := rand.N(150 * time.Millisecond)
		var stderr syncBuffer
		cmd := exec.Command(bin, "serve", "-config", path)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		err := waitExit(t, cmd, &stderr)
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		switch {
		case err == nil:
		case ws.Signaled() && ws.Signal() == syscall.SIGTERM:
		default:
			t.Errorf("iteration %d, SIGTERM after %v: %v (want exit 0 or death by SIGTERM):\n%s", i, delay, err, stderr.String())
		}
	}
}
