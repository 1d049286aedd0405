package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// runBench measures the relay against a direct connection to the same fake
// upstream and prints the figures. The relay runs as a child process
// (`oauthrelay serve`), so its peak resident memory is its own.
func runBench(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "fewer messages (a smoke run)")
	only := fs.String("only", "", "smtp, imap, pop3, delivery, graph, load or cluster: run one part (load and cluster run only when named)")
	pin := fs.Bool("pin", true, "pin the relay and the load generator to separate CPUs (Linux)")
	speed := fs.Float64("speed", defaultBenchSpeed, "delivery: how many times faster than real time the fake Exchange and the relay keep their limits")
	soak := fs.Duration("soak", 0, "load: then run steady traffic this long, watching the relay's memory and open files")
	hostCPU := fs.Float64("host-cpu", clusterHostCPU, "cluster: the CPUs of each modelled host (a cpu cgroup quota per relay; 0: no modelled-host runs)")
	hostSpeed := fs.Float64("host-speed", clusterHostSpeed, "cluster: the clock of the modelled-host runs, times real time")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *only {
	case "", "smtp", "imap", "pop3", "delivery":
	case "load":
		return runLoad(ctx, *quick, *soak, *pin, stdout, stderr)
	case "graph":
		return graphBench(ctx, *quick, *pin, stdout, stderr)
	case "cluster":
		return clusterBench(ctx, clusterBenchOptions{quick: *quick, speed: max(*speed, 1), hostCPU: *hostCPU,
			hostSpeed: max(*hostSpeed, 1)}, stdout, stderr)
	default:
		return fmt.Errorf("bench: -only %q: want smtp, imap, pop3, delivery, graph, load or cluster", *only)
	}
	if *only != "delivery" {
		if err := proxyBench(ctx, *only, *quick, *pin, stdout, stderr); err != nil {
			return err
		}
	}
	if *only != "" && *only != "delivery" {
		return nil
	}
	db := &deliveryBench{pin: *pin, quick: *quick, speed: max(*speed, 1), stdout: stdout, stderr: stderr}
	if err := db.run(ctx); err != nil || *only != "" {
		return err
	}
	return graphBench(ctx, *quick, *pin, stdout, stderr)
}

// proxyBench is the SMTP, IMAP and POP3 proxies' part of the bench (only:
// "", "smtp", "imap" or "pop3"), against one relay and one fake without
// limits.
func proxyBench(ctx context.Context, only string, quick, pin bool, stdout, stderr io.Writer) error {
	fw, rp, err := startProxyWorld(ctx, pin, stderr)
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	defer rp.stop()

	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	p("oauthrelay bench: relay (child process %d) vs direct, same fake Exchange upstream on loopback", rp.cmd.Process.Pid)
	if rp.cpus != "" {
		p("relay pinned to CPUs %s, load generator and fake upstream to the others", rp.cpus)
	}

	tok := fw.ms.IssueAccessToken(demoClientID, "")
	fresh := func(ctx context.Context) (*relayProcess, error) { return startRelayProcess(ctx, fw, pin, stderr) }
	if only == "" || only == "smtp" {
		if err := smtpBench(ctx, fw, rp, tok, quick, stdout); err != nil {
			return err
		}
	}
	if only == "" || only == "imap" {
		ib := &imapBench{fw: fw, rp: rp, token: tok, p: p, fresh: fresh}
		if err := ib.run(ctx, quick); err != nil {
			return err
		}
	}
	if only == "" || only == "pop3" {
		pb := &pop3Bench{fw: fw, rp: rp, token: tok, p: p, fresh: fresh}
		return pb.run(ctx, quick)
	}
	return nil
}

// smtpBench measures the relay's peak memory on one 100 MB message, then
// messages per second through the relay and direct.
func smtpBench(ctx context.Context, fw *fakeWorld, rp *relayProcess, tok string, quick bool, stdout io.Writer) error {
	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	// Peak memory first, on a fresh process: one 100 MB message.
	if err := smtpSendOne(ctx, rp.smtpAddr, 100<<20); err != nil {
		return fmt.Errorf("100 MB message: %w", err)
	}
	hwm, err := peakRSS(rp.cmd.Process.Pid)
	if err != nil {
		return err
	}
	p("SMTP peak RSS of the relay after relaying one 100 MB message: %.1f MiB (target < 64 MiB)", float64(hwm)/(1<<20))

	direct := exchangeDial(fw, tok)
	relayed := relayDial(rp.smtpAddr, demoUser)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "message\tclients\tdirect msg/s\trelay msg/s\tratio\t")
	for _, size := range []int{1 << 10, 1 << 20} {
		for _, clients := range []int{1, 32} {
			n := 2000
			if size > 1<<10 {
				n = 320
			}
			if quick {
				n /= 10
			}
			// Alternate direct and relay runs and take the medians, so
			// a burst of noise on the machine does not decide the ratio.
			var d, r []float64
			for round := 0; round < benchRounds; round++ {
				dr, err := smtpLoad(ctx, direct, clients, n, size)
				if err != nil {
					return fmt.Errorf("direct load: %w", err)
				}
				rr, err := smtpLoad(ctx, relayed, clients, n, size)
				if err != nil {
					return fmt.Errorf("relay load: %w", err)
				}
				d, r = append(d, dr), append(r, rr)
			}
			dm, rm := median(d), median(r)
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.2f\t\n", sizeName(size), clients, dm, rm, rm/dm)
		}
	}
	tw.Flush()
	p("(medians of %d alternating runs; ratio: relay / direct; target >= 0.90 at 32 clients)", benchRounds)
	return nil
}

// benchRounds is how many alternating direct/relay runs each figure is the
// median of.
const benchRounds = 3

// alternated are the samples of a proxied protocol's bench: the seconds of
// each throughput run, the relay's CPU time over its throughput runs, the
// bench process's own (the fake and the client) over the direct and the
// relayed runs, and the login durations pooled over the rounds.
type alternated struct {
	direct, relay                 []float64
	relayCPU                      time.Duration
	benchDirectCPU, benchRelayCPU time.Duration
	directLogin, relayLogin       []time.Duration
}

// alternate runs throughput and logins benchRounds times, direct then
// through the relay (process pid) each time (relay false, then true), so
// that a burst of noise on the machine does not decide the comparison.
func alternate(pid int, throughput func(relay bool) (time.Duration, error), logins func(relay bool) ([]time.Duration, error)) (alternated, error) {
	var a alternated
	for range benchRounds {
		own0, err := processCPU(os.Getpid())
		if err != nil {
			return a, err
		}
		d, err := throughput(false)
		if err != nil {
			return a, fmt.Errorf("direct transfer: %w", err)
		}
		cpu0, err := processCPU(pid)
		if err != nil {
			return a, err
		}
		own1, err := processCPU(os.Getpid())
		if err != nil {
			return a, err
		}
		r, err := throughput(true)
		if err != nil {
			return a, fmt.Errorf("relay transfer: %w", err)
		}
		cpu1, err := processCPU(pid)
		if err != nil {
			return a, err
		}
		own2, err := processCPU(os.Getpid())
		if err != nil {
			return a, err
		}
		a.relayCPU += cpu1 - cpu0
		a.benchDirectCPU += own1 - own0
		a.benchRelayCPU += own2 - own1
		a.direct, a.relay = append(a.direct, d.Seconds()), append(a.relay, r.Seconds())
		for _, relay := range []bool{false, true} {
			l, err := logins(relay)
			if err != nil {
				return a, fmt.Errorf("%s logins: %w", benchSide(relay), err)
			}
			if relay {
				a.relayLogin = append(a.relayLogin, l...)
			} else {
				a.directLogin = append(a.directLogin, l...)
			}
		}
	}
	return a, nil
}

func benchSide(relay bool) string {
	if relay {
		return "relay"
	}
	return "direct"
}

// report prints the throughput of a run of size bytes (medians), the
// relay's CPU per GB through it, and the login latencies added by the relay
// (pooled p50 and p99) of a; transfer names it ("IMAP FETCH") and msgs
// counts its messages; a cpuTarget of 0 prints none.
func (a alternated) report(p func(string, ...any), proto, transfer string, msgs int, size, target, cpuTarget float64) {
	mb := size / (1 << 20)
	dm, rm := median(a.direct), median(a.relay)
	p("%s of %d messages (%.0f MB), medians of %d alternating runs: direct %.0f MB/s, relay %.0f MB/s, ratio %.2f (target >= %.2f)",
		transfer, msgs, mb, benchRounds, mb/dm, mb/rm, dm/rm, target)
	gb := size * benchRounds / 1e9
	cpu := fmt.Sprintf("%s cost in the relay: %.2f s of CPU per GB through it", transfer, a.relayCPU.Seconds()/gb)
	if cpuTarget > 0 {
		cpu += fmt.Sprintf(" (target <= %.1f)", cpuTarget)
	}
	p("%s", cpu)
	p("%s CPU per GB of the whole run: direct %.2f s (fake and client); relay %.2f s (fake and client %.2f, relay %.2f)",
		transfer, a.benchDirectCPU.Seconds()/gb, (a.benchRelayCPU+a.relayCPU).Seconds()/gb, a.benchRelayCPU.Seconds()/gb, a.relayCPU.Seconds()/gb)
	dp, rp := percentiles(a.directLogin), percentiles(a.relayLogin)
	p("%s login latency, cached token, %d logins each: direct p50 %s p99 %s; relay p50 %s p99 %s; added p50 %s p99 %s (target <= 1ms)",
		proto, len(a.directLogin), ms(dp[0]), ms(dp[1]), ms(rp[0]), ms(rp[1]), ms(rp[0]-dp[0]), ms(rp[1]-dp[1]))
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%d MB", n>>20)
	}
	return fmt.Sprintf("%d KB", n>>10)
}

// relayProcess is `oauthrelay serve` run as a child against the fake.
type relayProcess struct {
	cmd      *exec.Cmd
	smtpAddr string
	imapAddr string
	pop3Addr string // "off" when the relay's POP3 listener is
	// adminAddr is the admin listener's ("" or "off": none).
	adminAddr string
	dir       string
	cpus      string        // CPUs the relay is pinned to; "" when not pinned
	exited    chan struct{} // closed when the process has exited (and was waited for)
	// seen is closed when relaySpec.watch appeared in the relay's log.
	seen chan struct{}
}

// startProxyWorld starts the fake (keeping no limits, discarding message
// data) and the proxies' relay in front of it; the caller closes the fake,
// whose relay process stops first (rp.stop).
func startProxyWorld(ctx context.Context, pin bool, stderr io.Writer) (*fakeWorld, *relayProcess, error) {
	fw, err := startFakeWorld(ctx, fakems.Options{DiscardData: true})
	if err != nil {
		return nil, nil, err
	}
	rp, err := startRelayProcess(ctx, fw, pin, stderr)
	if err != nil {
		fw.ms.Close()
		return nil, nil, err
	}
	return fw, rp, nil
}

// relaySpec is what a child `serve` is started with.
type relaySpec struct {
	// config returns the configuration for a relay whose state_dir is
	// dir and whose app password has the bcrypt hash hash.
	config func(dir, hash string) string
	// env is added to the bench's environment.
	env []string
	// watch is a text to look for in the relay's log (see seen).
	watch string
	// cgroup is the cgroup.procs file of the cpu group the relay runs in
	// ("": none; see cpuHosts).
	cgroup string
}

// startRelayProcess starts the relay of the SMTP, IMAP and POP3 proxies'
// bench: the demo account and the POP3 bench's, limits raised.
func startRelayProcess(ctx context.Context, fw *fakeWorld, pin bool, stderr io.Writer) (*relayProcess, error) {
	return startBenchRelay(ctx, relaySpec{config: func(dir, hash string) string {
		yaml := strings.Replace(fw.yaml(dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "off", hash), "level: info", "level: warn", 1)
		// The throughput figures measure the relay's own cost against a
		// fake that enforces no limits: the relay must not keep
		// Exchange's 30 messages a minute here either.
		return unlimited + yaml + pop3Account(hash)
	}}, pin, stderr)
}

// unlimited is the limits of a relay measured against a fake that keeps
// none.
const unlimited = "limits: {connections: 100, messages_per_minute: 1000000, recipients_per_day: 1000000}\n"

func startBenchRelay(ctx context.Context, spec relaySpec, pin bool, stderr io.Writer) (*relayProcess, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "oauthrelay-bench-")
	if err != nil {
		return nil, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(demoPassword), bcrypt.MinCost)
	if err != nil {
		return nil, err
	}
	// The relay binds port 0 itself and says which ports it got: a port
	// found free here and closed again could be handed out twice (the
	// IMAP bench once met the relay's SMTP greeting).
	rp := &relayProcess{dir: dir, seen: make(chan struct{})}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(spec.config(dir, string(hash))), 0o600); err != nil {
		return nil, err
	}
	addrFile := filepath.Join(dir, "addrs")
	args := []string{exe, "serve", "-config", cfgPath, "-addr-file", addrFile}
	if !pin {
		// run unpinned
	} else if cpus, err := splitCPUs(); err != nil {
		return nil, err
	} else if taskset, err := exec.LookPath("taskset"); cpus != "" && err == nil {
		rp.cpus = cpus
		args = append([]string{taskset, "-c", cpus}, args...)
	}
	if spec.cgroup != "" {
		args = inGroup(spec.cgroup, args)
	}
	rp.cmd = exec.CommandContext(ctx, args[0], args[1:]...)
	rp.cmd.Stderr = stderr
	if spec.watch != "" {
		rp.cmd.Stderr = &logWatch{w: stderr, watch: []byte(spec.watch), seen: rp.seen}
	}
	if len(spec.env) > 0 {
		rp.cmd.Env = append(os.Environ(), spec.env...)
	}
	if err := rp.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	rp.exited = make(chan struct{})
	go func() { rp.cmd.Wait(); close(rp.exited) }()
	addrs, err := waitAddrFile(ctx, addrFile, rp.exited)
	if err != nil {
		rp.stop()
		return nil, err
	}
	rp.smtpAddr, rp.imapAddr, rp.pop3Addr, rp.adminAddr = addrs["smtp"], addrs["imap"], addrs["pop3"], addrs["admin"]
	return rp, nil
}

// logWatch passes the relay's log on to w and closes seen once watch
// appears in it.
type logWatch struct {
	w     io.Writer
	watch []byte
	seen  chan struct{}
	tail  []byte // the end of what was written, for a watch split across writes
	found bool
}

func (l *logWatch) Write(p []byte) (int, error) {
	if !l.found {
		buf := append(l.tail, p...)
		if bytes.Contains(buf, l.watch) {
			l.found = true
			close(l.seen)
		}
		l.tail = append(l.tail[:0], buf[max(0, len(buf)-len(l.watch)):]...)
	}
	return l.w.Write(p)
}

// relayStartTimeout bounds the wait for the relay's address file.
const relayStartTimeout = 15 * time.Second

// waitAddrFile waits until the relay wrote its address file (see serve's
// -addr-file) and returns its name=ADDR lines as a map; it fails at once if
// the relay exits first.
func waitAddrFile(ctx context.Context, path string, exited <-chan struct{}) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, relayStartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(path); err == nil {
			addrs := map[string]string{}
			for line := range strings.Lines(string(b)) {
				if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
					addrs[k] = v
				}
			}
			if addrs["smtp"] == "" || addrs["imap"] == "" || addrs["smtp"] == "off" || addrs["imap"] == "off" {
				return nil, fmt.Errorf("relay address file %s: %q", path, b)
			}
			return addrs, nil
		}
		select {
		case <-exited:
			return nil, errors.New("relay exited before it was listening (its log is above)")
		case <-ctx.Done():
			return nil, fmt.Errorf("relay did not start listening within %v: %w", relayStartTimeout, ctx.Err())
		case <-tick.C:
		}
	}
}

func (rp *relayProcess) stop() {
	rp.cmd.Process.Signal(os.Interrupt)
	select {
	case <-rp.exited:
	case <-time.After(10 * time.Second):
		rp.cmd.Process.Kill()
		<-rp.exited
	}
	os.RemoveAll(rp.dir)
}

// peakRSS reads VmHWM, the peak resident set of a process, in bytes.
func peakRSS(pid int) (int64, error) { return procStatusBytes(pid, "VmHWM") }

// idleRSS starts a relay of its own (start), logs in n sessions with
// login and leaves them idle, and returns the growth of that relay's
// resident memory per session. A relay of its own, because one that
// relayed a FETCH or closed thousands of sessions a moment ago holds
// freed memory the runtime has not given back yet, which new sessions
// reuse: the growth would be too small (the POP3 sessions measured 7.5
// KiB each after the IMAP ones closed, 28 alone). One session logged in
// and closed first keeps what the first login sets up (the token, the
// password's memo, the TLS session) out of the figure.
func idleRSS(ctx context.Context, start func(context.Context) (*relayProcess, error), n int, login func(*relayProcess) (io.Closer, error)) (float64, error) {
	rp, err := start(ctx)
	if err != nil {
		return 0, err
	}
	defer rp.stop()
	c, err := login(rp)
	if err != nil {
		return 0, fmt.Errorf("first session: %w", err)
	}
	c.Close()
	time.Sleep(500 * time.Millisecond)
	pid := rp.cmd.Process.Pid
	before, err := rssNow(pid)
	if err != nil {
		return 0, err
	}
	var open []io.Closer
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		c, err := login(rp)
		if err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
		open = append(open, c)
	}
	time.Sleep(time.Second) // let the copies settle into their reads
	after, err := rssNow(pid)
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(len(open)), nil
}

// rssNow reads VmRSS, the resident set of a process now, in bytes.
func rssNow(pid int) (int64, error) { return procStatusBytes(pid, "VmRSS") }

// procStatusBytes reads a "Field:   N kB" line of /proc/PID/status (Linux).
func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("memory figures need Linux /proc: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// smtpSendOne sends one message of size bytes through the relay.
func smtpSendOne(ctx context.Context, addr string, size int) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(gosasl.NewPlainClient("", demoUser, demoPassword)); err != nil {
		return err
	}
	return sendSized(c, size)
}

// body returns a message of about size bytes of base64 lines.
func body(size int) []byte {
	raw := make([]byte, size*3/4)
	rand.Read(raw)
	enc := base64.StdEncoding.EncodeToString(raw)
	var b strings.Builder
	b.WriteString("From: " + demoMailbox + "\r\nTo: bench@example.net\r\nSubject: bench\r\n\r\n")
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return []byte(b.String())
}

func sendSized(c *smtp.Client, size int) error {
	msg := body(size)
	return sendMsg(c, msg)
}

func sendMsg(c *smtp.Client, msg []byte) error {
	if err := c.Mail(demoMailbox, nil); err != nil {
		return err
	}
	if err := c.Rcpt("bench@example.net", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close()
}

// smtpLoad sends n messages of size bytes over `clients` sessions opened
// with dial (one login per session, then messages back to back) and returns
// messages per second. Bounded by n and by a 2-minute deadline.
func smtpLoad(ctx context.Context, dial func() (*smtp.Client, error), clients, n, size int) (float64, error) {
	sent, elapsed, err := smtpLoadN(ctx, dial, clients, n, size, 2*time.Minute)
	if err != nil {
		return 0, err
	}
	return float64(sent) / elapsed.Seconds(), nil
}

// smtpLoadN is smtpLoad bounded by timeout; it returns how many messages
// were sent and the time they took.
func smtpLoadN(ctx context.Context, dial func() (*smtp.Client, error), clients, n, size int, timeout time.Duration) (int64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg := body(size)
	var left atomic.Int64
	left.Store(int64(n))
	var sent atomic.Int64
	errc := make(chan error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial()
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				if err := sendMsg(c, msg); err != nil {
					errc <- err
					return
				}
				sent.Add(1)
			}
			c.Quit()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return sent.Load(), elapsed, err
	}
	return sent.Load(), elapsed, nil
}
