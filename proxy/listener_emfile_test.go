//go:build unix

package proxy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// emfileChildEnv switches TestAcceptRetriesEMFILE to its child's part.
const emfileChildEnv = "OAUTHRELAY_TEST_EMFILE_CHILD"

// emfileLimit is the child's soft RLIMIT_NOFILE: low enough to fill fast.
const emfileLimit = 256

// TestAcceptRetriesEMFILE runs out of file descriptors for real: in a child
// process (the test binary again, so that the lowered limit and the filled
// descriptor table do not touch the other tests) it fills the table, makes
// a connection wait in the backlog, and checks that the Listener keeps
// retrying (Err says why, the server is handed nothing), then frees the
// descriptors and checks that the waiting connection is served and Err is
// nil again. Before the Listener, IMAP's accept loop ended on this error
// for good.
func TestAcceptRetriesEMFILE(t *testing.T) {
	if os.Getenv(emfileChildEnv) == "1" {
		emfileChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAcceptRetriesEMFILE$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), emfileChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestAcceptRetriesEMFILE") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func emfileChild(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	soft := min(uint64(emfileLimit), lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: soft, Max: lim.Max}); err != nil {
		t.Fatal(err)
	}

	obs := &preAuthRecorder{}
	l, err := Listen(config.Listener{Addr: "127.0.0.1:0", TLS: config.TLSNone})
	if err != nil {
		t.Fatal(err)
	}
	log, logs := testutil.Logger(t)
	l.Proto, l.Observer, l.Logger, l.Busy = "test", obs, log, testBusy
	srv := serveLines(t, l, false)

	files := fillDescriptors(t, int(soft))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	// One descriptor for the client; the server's accept has none left.
	files[len(files)-1].Close()
	files = files[:len(files)-1]
	c := dialFrom(t, l.Addr().String(), "127.0.0.1", nil)

	waitUntil(t, "Err to report the failing accept", func() bool { return l.Err() != nil })
	err = l.Err()
	if !errors.Is(err, syscall.EMFILE) || !strings.Contains(err.Error(), "test listener 127.0.0.1:") {
		t.Errorf("Err() = %v, want the listener and EMFILE", err)
	}
	t.Logf("Err() while out of descriptors: %v", err)
	// It goes on retrying (5, 10, 20, 40 ms...) and hands the server
	// nothing meanwhile.
	waitUntil(t, "several retries", func() bool { return failedAttempts(l) >= 5 })
	if n := srv.accepted.Load(); n != 0 {
		t.Fatalf("the server was handed %d connections while accept failed", n)
	}
	if err := l.Err(); err == nil {
		t.Fatal("Err() nil while accept still fails")
	}

	for _, f := range files {
		f.Close()
	}
	files = nil
	c.expect("hello")
	if err := l.Err(); err != nil {
		t.Errorf("Err() after a connection was accepted again: %v", err)
	}
	// One line when it started failing, one when it recovered: not one
	// per retry.
	out := logs.String()
	if n, m := strings.Count(out, "accepting connections fails"), strings.Count(out, "accepting connections again"); n != 1 || m != 1 {
		t.Errorf("log has %d failure lines and %d recovery lines, want 1 and 1:\n%s", n, m, out)
	}
}

// fillDescriptors opens /dev/null until the process has no descriptor
// left (at most limit times).
func fillDescriptors(t *testing.T, limit int) []*os.File {
	var files []*os.File
	for range limit {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("open: %v", err)
			}
			if len(files) == 0 {
				t.Fatal("no descriptor could be opened")
			}
			return files
		}
		files = append(files, f)
	}
	t.Fatalf("%d descriptors opened without EMFILE", limit)
	return nil
}
