//go:build linux

package main

// The crash test of `delivery: queue` (issue 9): `oauthrelay serve` is
// killed with SIGKILL at random moments of a run of messages sent by
// several apps at once, restarted on the same state_dir each time, and at
// the end every message the relay acknowledged with 250 must have reached
// the fake Exchange, which runs in the test process through every life of
// the relay and records what it accepted.
//
// What can be asserted soundly, and is:
//   - every acknowledged message is delivered at least once (nothing lost);
//   - nothing is delivered that the relay never saw end (no final dot sent,
//     or a refusal reply): the spool commits only a complete message;
//   - a message is delivered twice only if a crash cut the attempt that
//     delivered it before its outcome reached the spool; the next attempt
//     then finds the spool's InFlight mark and logs "may be delivered
//     twice" with the Message-ID. So every duplicated Message-ID is named
//     in such a warning, duplicates ≤ warnings, and, as the account's one
//     worker makes one attempt at a time, warnings ≤ kills;
//   - after the last restart the queue drains: no message left, none
//     failed, none quarantined.
// A warning does not imply a duplicate (the crash may have come before the
// upstream accepted the message), so warnings may exceed duplicates.
//
// OAUTHRELAY_CRASH_SEED replays the kill schedule of a logged seed (the
// moments are the same, the interleaving of the processes is not);
// OAUTHRELAY_SOAK=1 runs a longer variant.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// crashRun is the size of one crash run.
type crashRun struct {
	goal     int           // messages acknowledged in total
	minKills int           // SIGKILLs at least, spread over the run
	maxIters int           // lives of the relay at most
	budget   time.Duration // for the kill loop; the test fails past it
}

var (
	// crashDefault runs in `make test` (both the plain and the -race pass).
	crashDefault = crashRun{goal: 500, minKills: 30, maxIters: 300, budget: 3 * time.Minute}
	// crashSoak runs with OAUTHRELAY_SOAK=1 (give go test a -timeout of
	// 30m or more).
	crashSoak = crashRun{goal: 5000, minKills: 200, maxIters: 2000, budget: 25 * time.Minute}
)

const (
	// crashApps is how many apps send at once.
	crashApps = 4
	// crashStartKillOdds: one life in crashStartKillOdds is killed at a
	// random moment of its start (the spool's recovery, the listeners'
	// binding).
	crashStartKillOdds = 6
	// crashMaxJitter bounds the moment of a kill after its count of
	// acknowledged messages is reached.
	crashMaxJitter = 20 * time.Millisecond
	// crashMaxBacklogDelay bounds the lives once the goal is met: the
	// worker is delivering what is left.
	crashMaxBacklogDelay = 500 * time.Millisecond
	// crashMaxLife bounds a life that waits for a count of messages.
	crashMaxLife = 10 * time.Second
	// crashDrainTimeout bounds the wait for the queue to empty after the
	// last restart.
	crashDrainTimeout = 2 * time.Minute
	// duplicateWarning is the queue worker's log line about an attempt
	// whose predecessor was interrupted.
	duplicateWarning = "may be delivered twice"
)

func TestServeCrashQueue(t *testing.T) {
	t.Parallel()
	run := crashDefault
	if os.Getenv("OAUTHRELAY_SOAK") == "1" {
		run = crashSoak
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("OAUTHRELAY_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("OAUTHRELAY_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay the kill schedule with OAUTHRELAY_CRASH_SEED=%d)", seed, seed)

	bin := buildBinary(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fw, err := startFakeWorld(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.ms.Close() })
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	cfgPath := filepath.Join(dir, "oauthrelay.yaml")
	writeFile(t, cfgPath, crashConfig(t, fw, stateDir))

	began := time.Now()
	c := &crasher{t: t, bin: bin, cfg: cfgPath, dir: dir, ledger: newLedger(), rng: rand.New(rand.NewPCG(seed, 0)), seed: seed}
	c.killLoop(run)
	last := c.drain(filepath.Join(stateDir, "queue"))
	took := time.Since(began)

	c.check(fw.ms.Messages(), last)
	t.Logf("crash run: %d acknowledged, %d with no reply after the final dot (%d of them delivered), %d refused, %d not sent; "+
		"%d kills (%d before the relay was ready) in %d lives; %d messages delivered (%d distinct), "+
		"%d duplicates, %d warnings of a possible duplicate; %v",
		c.count(acked), c.count(unknown), c.unknownDelivered, c.count(refused), c.count(unsent),
		c.kills, c.earlyKills, c.lives, c.deliveries, c.distinct, c.duplicates, c.warnings, took.Round(time.Millisecond))
}

// crashConfig is the fake world's configuration with its account on
// delivery: queue, and limits far above what the run sends, so that the
// relay's pace is not what bounds the run (the fake enforces none).
func crashConfig(t *testing.T, fw *fakeWorld, stateDir string) string {
	hash, err := bcrypt.GenerateFromPassword([]byte(demoPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// The account is the last entry of the file: its keys continue it.
	return fw.yaml(stateDir, "127.0.0.1:0", "off", "off", "off", string(hash)) +
		"    delivery: queue\n" +
		"    limits: {connections: 3, messages_per_minute: 10000, recipients_per_day: 1000000}\n"
}

// crasher runs the relay's lives and keeps the figures.
type crasher struct {
	t        *testing.T
	bin, cfg string
	dir      string
	ledger   *ledger
	rng      *rand.Rand
	seed     uint64
	logs     []string // every life's log, in order

	lives, kills, earlyKills         int
	lastReady                        time.Duration // how long the last start took
	deliveries, distinct, duplicates int
	warnings, unknownDelivered       int
}

// life starts the relay once more.
func (c *crasher) life() *relayProc {
	c.lives++
	return startRelay(c.t, c.bin, c.cfg, filepath.Join(c.dir, fmt.Sprintf("addrs.%d", c.lives)))
}

// killLoop kills the relay at random moments until run.goal messages were
// acknowledged and run.minKills kills were made. Most lives end when a
// random number of further messages has been acknowledged (about the rest
// of the goal shared by the kills still to come, so the kills are spread
// over the run), a random moment later: the apps are then in the middle of
// their transactions and the worker in the middle of a delivery. Some end
// at a random moment of the start instead (the spool's recovery, the
// listeners' binding). Once the goal is met the apps send nothing and the
// remaining lives die while the worker delivers the backlog.
func (c *crasher) killLoop(run crashRun) {
	t := c.t
	deadline := time.Now().Add(run.budget)
	for c.ledger.ackedCount() < run.goal || c.kills < run.minKills {
		if c.lives >= run.maxIters || time.Now().After(deadline) {
			t.Fatalf("seed %d: after %d lives and %v: %d of %d acknowledged, %d of %d kills",
				c.seed, c.lives, run.budget, c.ledger.ackedCount(), run.goal, c.kills, run.minKills)
		}
		acked := c.ledger.ackedCount()
		share := max(run.goal-acked, 0) / max(run.minKills-c.kills, 1)
		k := killPoint{after: time.Duration(c.rng.Int64N(int64(crashMaxJitter))), send: acked < run.goal}
		switch {
		case c.rng.IntN(crashStartKillOdds) == 0:
			// Within the start, as long as the last one took (and a
			// half: some of these lives get ready).
			k.after = time.Duration(c.rng.Int64N(int64(max(c.lastReady*3/2, time.Millisecond))))
		case k.send:
			k.acked = acked + 1 + c.rng.IntN(2*max(share, 1))
		default:
			k.after = time.Duration(c.rng.Int64N(int64(crashMaxBacklogDelay)))
		}
		c.liveAndDie(k)
	}
}

// killPoint is when a life ends: after from the process start when acked
// is zero, else after from the moment the ledger holds acked
// acknowledged messages (or at crashMaxLife, whichever comes first). The
// apps send during the life if send is set.
type killPoint struct {
	acked int
	after time.Duration
	send  bool
}

// liveAndDie runs one life: the apps send until the relay is killed at k.
func (c *crasher) liveAndDie(k killPoint) {
	t := c.t
	p := c.life()
	defer func() { c.logs = append(c.logs, p.log.String()) }()
	life, cancel := context.WithDeadline(context.Background(), p.started.Add(crashMaxLife))
	defer cancel()
	if k.acked == 0 {
		life, cancel = context.WithDeadline(life, p.started.Add(k.after))
		defer cancel()
	}
	addr := p.smtpAddr(t, life)
	if addr == "" {
		c.earlyKills++
	} else {
		c.lastReady = time.Since(p.started)
	}
	stop, stopApps := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// After the kill (or a failure of the test): the apps' connections
	// are reset, and they stop.
	defer func() {
		stopApps()
		wg.Wait()
	}()
	for i := range crashApps {
		if addr == "" || !k.send {
			break
		}
		app := &crashApp{addr: addr, ledger: c.ledger,
			rng: rand.New(rand.NewPCG(c.seed, uint64(c.lives*crashApps+i+1)))}
		wg.Go(func() { app.run(stop) })
	}
	if k.acked > 0 {
		c.ledger.waitAcked(life, k.acked)
		life, cancel = context.WithTimeout(life, k.after)
		defer cancel()
	}
	<-life.Done()
	p.kill(t)
	c.kills++
}

// drain starts the relay a last time, waits (bounded) for the queue at
// root to be empty, stops the relay with SIGTERM and returns its life.
func (c *crasher) drain(root string) *relayProc {
	t := c.t
	p := c.life()
	defer func() { c.logs = append(c.logs, p.log.String()) }()
	ready, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if p.smtpAddr(t, ready) == "" {
		t.Fatalf("the last life did not start within %v:\n%s", waitTimeout, p.log.String())
	}
	sp, rec, err := spool.Open(root, spool.Options{})
	if err != nil {
		t.Fatalf("open the queue beside serve: %v", err)
	}
	defer sp.Close()
	if len(rec.Quarantined) > 0 {
		t.Errorf("quarantined: %+v", rec.Quarantined)
	}
	var st spool.Stats
	deadline := time.Now().Add(crashDrainTimeout)
	for {
		if st, err = sp.Stats(); err == nil && st.Depth == 0 {
			break
		}
		if time.Now().After(deadline) {
			envs, _ := sp.List()
			for _, e := range envs {
				t.Logf("left in the queue: %s %s attempts %d next %v in flight %v: %s",
					e.ID, e.MessageID, e.Attempts, e.NextAttempt, e.InFlight, e.LastError)
			}
			t.Fatalf("seed %d: the queue did not drain within %v (%+v, %v):\n%s", c.seed, crashDrainTimeout, st, err, p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Failed != 0 {
		failed, _ := sp.ListFailed()
		for _, e := range failed {
			t.Errorf("failed: %s %s: %s", e.ID, e.MessageID, e.FailReason)
		}
	}
	p.stop(t)
	return p
}

var messageIDRE = regexp.MustCompile(`(?m)^Message-ID: (<crash\.\d+@oauthrelay\.test>)\r$`)

// check compares the fake's deliveries with the ledger and the logs.
func (c *crasher) check(msgs []fakems.Message, last *relayProc) {
	t := c.t
	fates := c.ledger.snapshot()
	got := map[string]int{}
	for _, m := range msgs {
		sm := messageIDRE.FindSubmatch(m.Data)
		if sm == nil {
			t.Errorf("delivered a message that is not the test's:\n%.300s", m.Data)
			continue
		}
		id := string(sm[1])
		got[id]++
		f, ok := fates[id]
		switch {
		case !ok:
			t.Errorf("delivered %s, which no app sent", id)
		case f == unsent || f == refused:
			t.Errorf("delivered %s, which the relay never accepted (fate %d)", id, f)
		case f == unknown && got[id] == 1:
			c.unknownDelivered++
		}
		// The message as the app sent it, byte for byte: a crash
		// never lets a truncated or mixed body out of the spool.
		if d, ok := c.ledger.digest(id); ok && d != m.SHA256 {
			t.Errorf("%s delivered with other content than the app sent (%d bytes):\n%.300s", id, m.Size, m.Data)
		}
	}
	var lost []string
	for id, f := range fates {
		if f == acked && got[id] == 0 {
			lost = append(lost, id)
		}
	}
	slices.Sort(lost)
	if len(lost) > 0 {
		t.Errorf("seed %d: %d acknowledged messages were never delivered: %v", c.seed, len(lost), lost)
	}

	all := strings.Join(c.logs, "\n")
	var warned []string
	for line := range strings.Lines(all) {
		if strings.Contains(line, duplicateWarning) {
			warned = append(warned, line)
		}
	}
	c.warnings = len(warned)
	c.deliveries, c.distinct = len(msgs), len(got)
	for id, n := range got {
		if n < 2 {
			continue
		}
		c.duplicates += n - 1
		t.Logf("duplicate: %s delivered %d times", id, n)
		if w := countContaining(warned, id); w < n-1 {
			t.Errorf("%s delivered %d times, but the log warns of it %d times", id, n, w)
		}
	}
	if c.duplicates > c.warnings || c.warnings > c.kills {
		t.Errorf("%d duplicates, %d warnings, %d kills: want duplicates ≤ warnings ≤ kills", c.duplicates, c.warnings, c.kills)
	}
	for _, bad := range []string{"quarantine", "panic", "cannot record the attempt", "cannot remove a delivered message"} {
		if strings.Contains(all, bad) {
			t.Errorf("a log has %q:\n%s", bad, grepLines(all, bad))
		}
	}
	if t.Failed() {
		t.Logf("warnings and errors of every life:\n%s", grepLevels(all, "level=WARN", "level=ERROR"))
		t.Logf("the last life's log, its end:\n%s", tailLines(last.log.String(), 40))
	}
}

// grepLevels returns the lines of s that hold one of subs.
func grepLevels(s string, subs ...string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		for _, sub := range subs {
			if strings.Contains(line, sub) {
				b.WriteString(line)
				break
			}
		}
	}
	return b.String()
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.SplitAfter(strings.TrimSuffix(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "") + "\n"
}

func countContaining(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// count is the number of messages of fate f.
func (c *crasher) count(f fate) int {
	n := 0
	for _, g := range c.ledger.snapshot() {
		if g == f {
			n++
		}
	}
	return n
}
