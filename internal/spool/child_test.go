package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// childLifetime ends a child that its parent forgot, so no test
	// leaves a process behind.
	childLifetime = 30 * time.Second
	// childWait bounds how long a parent waits for a child's line.
	childWait = 10 * time.Second
	// crashIterations is how often the crash test kills a writer.
	crashIterations = 25
	// crashMaxKillDelay bounds the random time a writer runs before it is
	// killed; crashMaxBody the size of the bodies it writes (a kill then
	// lands in a body's write, its fsync, the renames or between
	// messages).
	crashMaxKillDelay = 40 * time.Millisecond
	crashMaxBody      = 1 << 20
	// crashMessages bounds the messages one writer creates.
	crashMessages = 10000
)

// runChild is the body of a child process: role "create" writes messages
// into the spool at dir until killed, printing each acknowledged id;
// role "claim" claims message arg and holds the claim until its stdin
// closes. The exit code is the result.
func runChild(role, dir, arg string) int {
	time.AfterFunc(childLifetime, func() { os.Exit(3) })
	s, _, err := Open(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch role {
	case "create":
		return childCreate(s, arg)
	case "claim":
		return childClaim(s, arg)
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 2
}

// childCreate creates messages of pseudo-random sizes whose seeds start
// at base*crashMessages, printing "ready" first and each id once Create
// returned it.
func childCreate(s *Spool, base string) int {
	b, _ := strconv.ParseUint(base, 10, 64)
	fmt.Println("ready")
	for i := range uint64(crashMessages) {
		seed := b*crashMessages + i
		e, err := s.Create(context.Background(), testEnvelope(), message(seed, crashSize(seed)), 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(e.ID)
	}
	return 0
}

// crashSize is the body size of the crash test's message seed
// (at least the header's length).
func crashSize(seed uint64) int64 { return 200 + int64(seed*2654435761%crashMaxBody) }

func childClaim(s *Spool, id string) int {
	release, err := s.Claim(id)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer release()
	fmt.Println("claimed")
	io.Copy(io.Discard, os.Stdin) // until the parent closes it, or kills us
	return 0
}

// child is a running child process and the lines it printed.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // closed at the child's EOF
}

func startChild(t *testing.T, role, dir, arg string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childRoleEnv+"="+role, childDirEnv+"="+dir, childArgEnv+"="+arg)
	cmd.Stderr = &testWriter{t: t}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, crashMessages)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c
}

// expect waits for the child to print want.
func (c *child) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		if !ok || line != want {
			t.Fatalf("child printed %q (open %v), want %q", line, ok, want)
		}
	case <-time.After(childWait):
		t.Fatalf("child did not print %q within %v", want, childWait)
	}
}

// kill SIGKILLs the child, waits for it and returns the lines it printed
// that were not read yet.
func (c *child) kill(t *testing.T) []string {
	t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var rest []string
	for line := range c.lines { // ends at EOF: the child is dead
		rest = append(rest, line)
	}
	c.stdin.Close()
	c.cmd.Wait()
	return rest
}

// testWriter sends a child's stderr to the test log.
type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("child: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

// A writer killed at random moments (SIGKILL: no deferred cleanup runs)
// leaves a spool in which every acknowledged message is complete, every
// visible message is complete (an acknowledgement may have been lost with
// the process), nothing is quarantined, and recovery removes every
// leftover.
func TestCrashDuringCreate(t *testing.T) {
	dir := t.TempDir()
	acked := map[string]bool{}
	verified := map[string]bool{}
	leftovers, orphans := 0, 0 // temp files; bodies without an envelope (not counting securefile's temp files)
	rng := newRand(t)
	for iter := range crashIterations {
		c := startChild(t, "create", dir, strconv.Itoa(iter+1))
		c.expect(t, "ready")
		time.Sleep(time.Duration(rng.Int64N(int64(crashMaxKillDelay))))
		for _, id := range c.kill(t) {
			acked[id] = true
		}
		leftovers += len(names(t, filepath.Join(dir, dirTmp)))
		orphans += len(names(t, filepath.Join(dir, dirBody))) - len(names(t, filepath.Join(dir, dirActive)))

		s, rec, err := Open(dir, Options{LeftoverAge: time.Nanosecond})
		if err != nil {
			t.Fatalf("iteration %d: Open: %v", iter, err)
		}
		for _, q := range rec.Quarantined {
			t.Errorf("iteration %d: quarantined %s: %s", iter, q.ID, q.Reason)
		}
		verifyCrashSpool(t, s, acked, verified)
		s.Close()
	}
	if len(acked) == 0 {
		t.Fatal("no Create was acknowledged in any iteration: the test proved nothing")
	}
	t.Logf("%d iterations: %d messages acknowledged, %d visible; kills left %d temp bodies and %d bodies without an envelope",
		crashIterations, len(acked), len(verified), leftovers, orphans)
}

// verifyCrashSpool checks the spool after a crash: every acknowledged id
// listed, every listed message's body as generated (each checked once),
// and no file in tmp/ or body/ without a message.
func verifyCrashSpool(t *testing.T, s *Spool, acked, verified map[string]bool) {
	t.Helper()
	envs, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	listed := map[string]bool{}
	for _, e := range envs {
		listed[e.ID] = true
		if verified[e.ID] {
			continue
		}
		seed, ok := seedOf(e.MessageID)
		if !ok {
			t.Fatalf("%s: Message-ID %q not from the test", e.ID, e.MessageID)
		}
		if e.Size != crashSize(seed) || bodyDigest(t, s, e.ID) != digest(t, message(seed, crashSize(seed))) {
			t.Errorf("%s: body is not the message written (size %d, want %d)", e.ID, e.Size, crashSize(seed))
		}
		verified[e.ID] = true
	}
	for id := range acked {
		if !listed[id] {
			t.Errorf("acknowledged message %s lost", id)
		}
	}
	if n := names(t, filepath.Join(s.Root(), dirTmp)); len(n) != 0 {
		t.Errorf("tmp/ after recovery: %q", n)
	}
	for _, name := range names(t, filepath.Join(s.Root(), dirBody)) {
		if !listed[name] {
			t.Errorf("body/%s without a message after recovery", name)
		}
	}
}

// A claim excludes a claim of another process, and disappears when the
// process holding it is killed.
func TestClaimAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	s, _ := openSpool(t, dir, Options{})
	e := create(t, s, 1)

	c := startChild(t, "claim", dir, e.ID)
	c.expect(t, "claimed")
	if release, err := s.Claim(e.ID); !errors.Is(err, ErrClaimed) {
		if err == nil {
			release()
		}
		t.Fatalf("Claim while another process holds it: %v, want ErrClaimed", err)
	}
	c.kill(t)
	release, err := s.Claim(e.ID)
	if err != nil {
		t.Fatalf("Claim after the holder was killed: %v", err)
	}
	release()
}
