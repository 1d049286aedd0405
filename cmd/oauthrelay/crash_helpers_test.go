//go:build linux

package main

// The fixture of the crash test (crash_unix_test.go): `oauthrelay serve`
// run as a child process that the test kills with SIGKILL, the apps that
// send to it, and the ledger of what each message's sender was told.
//
// Linux only: the children are given a parent-death signal, so a test
// binary that dies (a -timeout panic) never leaves a relay running.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// The bounds of one app connection: far more than a message on loopback
// needs, only to tell "slow" from "hung" (a SIGKILLed relay resets its
// sockets, so a client never waits for these in a passing run).
const (
	crashDialTimeout    = 5 * time.Second
	crashCommandTimeout = 10 * time.Second
	// crashRetryPause is how long an app waits after a failed connection
	// before it tries again (the relay may be starting).
	crashRetryPause = 10 * time.Millisecond
	// crashMaxConnsPerSender bounds the connections one app opens in one
	// life of the relay (the life's end bounds it in time).
	crashMaxConnsPerSender = 5000
	// crashMaxPerConn is the most messages an app sends on one connection
	// (one to crashMaxPerConn, at random: some apps log in per message).
	crashMaxPerConn = 3
	// crashMaxPadLines bounds the filler lines of a body (76 bytes each),
	// so messages of up to ~15 KB are cut in the middle by some kills.
	crashMaxPadLines = 200
)

// fate is what the app knows about one message.
type fate int

const (
	// unsent: the connection failed before the body's final dot was
	// written; the relay cannot have queued it (it never saw it end).
	unsent fate = iota
	// refused: the relay answered the final dot with an error reply; it
	// says it did not queue the message.
	refused
	// unknown: the connection failed after the final dot was written and
	// before the reply came; the relay may or may not have queued it.
	unknown
	// acked: the relay answered 250; the message must be delivered.
	acked
)

// ledger records every message the apps sent and what they were told. The
// test counts the fake's deliveries against it at the end.
type ledger struct {
	mu     sync.Mutex
	next   int
	fates  map[string]fate     // by Message-ID
	sha256 map[string][32]byte // of the message the app sent, by Message-ID
	acked  int
}

func newLedger() *ledger { return &ledger{fates: map[string]fate{}, sha256: map[string][32]byte{}} }

// newMessage allocates the next sequence number and its Message-ID.
func (l *ledger) newMessage() (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	id := fmt.Sprintf("<crash.%06d@oauthrelay.test>", l.next)
	l.fates[id] = unsent
	return l.next, id
}

// sent records the message sent as id, before its final dot.
func (l *ledger) sent(id string, msg []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sha256[id] = sha256.Sum256(msg)
}

// digest returns the SHA-256 of the message sent as id.
func (l *ledger) digest(id string) ([32]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.sha256[id]
	return d, ok
}

func (l *ledger) record(id string, f fate) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fates[id] = f
	if f == acked {
		l.acked++
	}
}

func (l *ledger) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// waitAcked returns once n messages are acknowledged, or ctx is done.
func (l *ledger) waitAcked(ctx context.Context, n int) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for l.ackedCount() < n {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// snapshot returns a copy of the fates.
func (l *ledger) snapshot() map[string]fate {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]fate, len(l.fates))
	for id, f := range l.fates {
		out[id] = f
	}
	return out
}

// relayProc is one life of `oauthrelay serve`, from its start to its
// SIGKILL or its stop.
type relayProc struct {
	cmd      *exec.Cmd
	log      *syncBuffer
	addrFile string
	started  time.Time
	exited   chan struct{} // closed once Wait returned; err is then set
	err      error
	killed   bool
}

// startRelay starts `serve -config cfg -addr-file addrFile`; the test's
// cleanup kills it if it still runs and waits for it. addrFile must be a
// new path: a SIGKILLed serve leaves its file behind, and the test must
// not read an earlier life's ports.
func startRelay(t *testing.T, bin, cfg, addrFile string, env ...string) *relayProc {
	t.Helper()
	p := &relayProc{log: &syncBuffer{}, addrFile: addrFile, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, "serve", "-config", cfg, "-addr-file", addrFile)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start serve: %v", err)
	}
	p.started = time.Now()
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(exitBound):
			t.Errorf("serve (pid %d) did not end within %v of SIGKILL", p.cmd.Process.Pid, exitBound)
		}
	})
	return p
}

// alive reports whether the process has not exited.
func (p *relayProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// smtpAddr waits for the address file until ctx ends and returns the SMTP
// listener's address; "" when ctx ended first. A serve that exits by
// itself fails the test.
func (p *relayProc) smtpAddr(t *testing.T, ctx context.Context) string {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if text, err := os.ReadFile(p.addrFile); err == nil {
			for line := range strings.Lines(string(text)) {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), "smtp="); ok {
					return v
				}
			}
			t.Fatalf("no smtp= line in the address file:\n%s", text)
		}
		select {
		case <-p.exited:
			t.Fatalf("serve exited by itself (%v) before it was ready:\n%s", p.err, p.log.String())
		case <-ctx.Done():
			return ""
		case <-tick.C:
		}
	}
}

// kill sends SIGKILL and waits (bounded) for the process; it fails the
// test if the process had ended by itself or did not die of the signal.
func (p *relayProc) kill(t *testing.T) {
	t.Helper()
	if !p.alive() {
		t.Fatalf("serve exited by itself (%v) before it was killed:\n%s", p.err, p.log.String())
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(exitBound):
		t.Fatalf("serve did not die within %v of SIGKILL", exitBound)
	}
	ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("serve ended with %v, not by SIGKILL:\n%s", p.err, p.log.String())
	}
	p.killed = true
}

// stop sends SIGTERM and waits (bounded) for exit 0.
func (p *relayProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(exitBound):
		t.Fatalf("serve did not exit within %v of SIGTERM:\n%s", exitBound, p.log.String())
	}
	if p.err != nil {
		t.Fatalf("serve after SIGTERM: %v (want exit 0):\n%s", p.err, p.log.String())
	}
}

// crashApp is one legacy app sending to the relay: it connects, logs in,
// sends one to crashMaxPerConn messages, quits, and again, until stop is
// done. A connection
// that fails (the relay was killed, or is not up) is abandoned and a new
// one tried after crashRetryPause.
type crashApp struct {
	addr   string
	ledger *ledger
	rng    *rand.Rand
}

func (a *crashApp) run(stop context.Context) {
	for range crashMaxConnsPerSender {
		if stop.Err() != nil {
			return
		}
		if a.connection(stop) != nil {
			select {
			case <-stop.Done():
				return
			case <-time.After(crashRetryPause):
			}
		}
	}
}

// connection sends up to crashMaxPerConn messages on one connection.
func (a *crashApp) connection(stop context.Context) error {
	conn, err := net.DialTimeout("tcp", a.addr, crashDialTimeout)
	if err != nil {
		return err
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = crashCommandTimeout, crashCommandTimeout
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		return err
	}
	if err := c.Auth(gosasl.NewPlainClient("", demoUser, demoPassword)); err != nil {
		return err
	}
	for range 1 + a.rng.IntN(crashMaxPerConn) {
		if stop.Err() != nil {
			break
		}
		if err := a.message(c); err != nil {
			return err
		}
	}
	return c.Quit()
}

// message sends one message and records its fate.
func (a *crashApp) message(c *smtp.Client) error {
	seq, id := a.ledger.newMessage()
	if err := c.Mail(demoMailbox, nil); err != nil {
		return err
	}
	if err := c.Rcpt("someone@example.net", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	msg := crashBody(seq, id, a.rng.IntN(crashMaxPadLines+1))
	a.ledger.sent(id, msg)
	if _, err := w.Write(msg); err != nil {
		return err
	}
	err = w.Close()
	var se *smtp.SMTPError
	switch {
	case err == nil:
		a.ledger.record(id, acked)
	case errors.As(err, &se):
		a.ledger.record(id, refused)
	default:
		a.ledger.record(id, unknown)
	}
	return err
}

// crashBody is message seq: its Message-ID, a body line with its number,
// and pad filler lines.
func crashBody(seq int, id string, pad int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\nTo: someone@example.net\r\nSubject: crash test %d\r\nMessage-ID: %s\r\n\r\nseq: %d\r\n",
		demoMailbox, seq, id, seq)
	for i := range pad {
		fmt.Fprintf(&b, "%06d-%06d %s\r\n", seq, i, strings.Repeat("x", 62))
	}
	return []byte(b.String())
}
