package main

// The cluster part of the bench (`bench -only cluster`): relays sharing
// their limits on a redis-server, against the fake Exchange keeping its
// limits on a fast clock. Figures are printed, never asserted.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// clusterBenchRun is how long (real time) each throughput run
	// sends: a few pace windows at the bench's speed.
	clusterBenchRun = 6 * time.Second
	// clusterBenchWarm is how long the apps send before a run counts:
	// every relay logs its sessions in first (three per mailbox for one
	// instance, one for each of three), which on a small host takes
	// seconds of its CPU and is not the steady rate.
	clusterBenchWarm = 2 * time.Second
	// clusterBenchApps is how many apps send (each one message after
	// the other, a new connection each): for one mailbox, and for each
	// of 30. As many apps for 1 instance as for 3: the same offered
	// load, which one small host cannot carry; more would only queue
	// in it, and a store call that waits half a second behind the queue
	// takes the store for lost.
	clusterBenchApps1  = 4
	clusterBenchApps30 = 1
	// clusterLatencyMessages is the messages of each latency run.
	clusterLatencyMessages = 300

	// clusterHostCPU is the CPU of each modelled host: three such
	// relays fit in two cores next to the fake, Redis and the load
	// generator. clusterHostSpeed is the clock of those runs: one
	// mailbox's limit (30 a minute: 30 × speed / 60 a second) is then
	// well below what one such relay can send, and 30 mailboxes' (15 ×
	// speed a second) well above what three can — so one mailbox is
	// bound by its limit, and 30 by the instances' CPU.
	clusterHostCPU   = 0.2
	clusterHostSpeed = 60
)

// clusterBenchOptions are bench -only cluster's flags.
type clusterBenchOptions struct {
	quick bool
	// speed is the clock of the unconstrained runs; hostCPU and
	// hostSpeed the modelled hosts' (hostCPU 0: none).
	speed, hostCPU, hostSpeed float64
}

// clusterResult is one throughput run's outcome.
type clusterResult struct {
	delivered int
	limits    fakems.LimitCounts
	// peak is the most sessions one mailbox held at the fake at once;
	// logins the upstream logins in the run.
	peak, logins int
	// cpu is the CPU each relay used while the apps sent; heldBack the
	// share of CFS periods its group was throttled in (modelled hosts);
	// gomaxprocs what its Go runtime chose (0: not read).
	cpu        []time.Duration
	heldBack   []float64
	gomaxprocs []int
	// bench and redis are the CPU this process (the fake and the apps)
	// and the store used in the run.
	bench, redis time.Duration
}

// clusterBench runs the figures.
func clusterBench(ctx context.Context, o clusterBenchOptions, stdout, stderr io.Writer) error {
	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("bench -only cluster needs redis-server (Debian: redis-server): %w", err)
	}
	run := clusterBenchRun
	if o.quick {
		run /= 3
	}
	warm := clusterBenchWarm
	if o.quick {
		warm /= 2
	}
	p("cluster: relays with delivery: direct sharing one redis-server, against a fake Exchange keeping %d connections and %d messages a minute per mailbox; %d apps for 1 mailbox, %d per mailbox for 30, a new connection per message; each run counts %v after %v of warm-up",
		exchangeConns, exchangePace, clusterBenchApps1, clusterBenchApps30, run, warm)
	p("cluster, unconstrained: every process shares this machine's %d CPUs; clock %g× real time", runtime.NumCPU(), o.speed)
	if err := clusterTable(ctx, bin, o.speed, warm, run, nil, p, stderr); err != nil {
		return err
	}
	p("  (three relay processes on the same cores are not three hosts: where one instance is the bound, three compete for the CPUs it used)")

	if o.hostCPU > 0 {
		hosts, err := newCPUHosts(o.hostCPU)
		if err == nil {
			if err = hosts.rest(os.Getpid()); err != nil {
				hosts.close()
			}
		}
		if err != nil {
			p("cluster, modelled hosts: not run: %v. The figures above are all there is, unconstrained; their 30-mailbox ratio is not a model of three hosts.", err)
		} else {
			p("cluster, modelled hosts: each relay in a cpu cgroup of its own, quota %v per %v (%g CPU), GOMAXPROCS as the relay's Go runtime chose it there; the fake, the apps and Redis in one without a quota; every group %d cpu.shares; clock %g× real time (1 mailbox: %.0f messages a second allowed, 30 mailboxes: %.0f); load average %s",
				hosts.quota(), cgroupPeriod, o.hostCPU, groupShares, o.hostSpeed, float64(exchangePace)*o.hostSpeed/60, 30*float64(exchangePace)*o.hostSpeed/60, loadAverage())
			err := clusterTable(ctx, bin, o.hostSpeed, warm, run, hosts, p, stderr)
			p("  load average at the end: %s", loadAverage())
			if cerr := hosts.close(); cerr != nil {
				p("  cleaning up the cgroups: %v", cerr)
			}
			if err != nil {
				return err
			}
		}
	}

	r, err := startBenchRedis(ctx, bin)
	if err != nil {
		return err
	}
	defer r.stop()
	n := clusterLatencyMessages
	if o.quick {
		n /= 5
	}
	alone, err := clusterLatency(ctx, "", n, stderr)
	if err != nil {
		return err
	}
	shared, err := clusterLatency(ctx, r.url, n, stderr)
	if err != nil {
		return err
	}
	a, s := percentiles(alone), percentiles(shared)
	p("cluster: added latency of the shared store, one app sending %d messages one after the other, a new connection each, limits raised: alone p50 %s p99 %s; with the store p50 %s p99 %s; added p50 %s (target <= 1 ms)",
		n, ms(a[0]), ms(a[1]), ms(s[0]), ms(s[1]), ms(s[0]-a[0]))
	return nil
}

// clusterTable runs 1 and 3 instances sending as 1 and as 30 mailboxes
// on a clock speed× real time, each relay in a group of hosts (nil: none),
// and prints a row each and the ratios.
func clusterTable(ctx context.Context, bin string, speed float64, warm, run time.Duration, hosts *cpuHosts, p func(string, ...any), stderr io.Writer) error {
	p("  instances  mailboxes  delivered  per Exchange minute  per mailbox-minute  per second  upstream logins  limit replies  most sessions of a mailbox  CPU: relay each; fake and apps; Redis")
	rates := map[[2]int]float64{}
	k := 0
	for _, mailboxes := range []int{1, 30} {
		for _, instances := range []int{1, 3} {
			r, err := startBenchRedis(ctx, bin)
			if err != nil {
				return err
			}
			if hosts != nil {
				if err := hosts.rest(r.cmd.Process.Pid); err != nil {
					r.stop()
					return err
				}
			}
			k++
			res, err := clusterRun(ctx, clusterRunSpec{store: r.url, instances: instances, mailboxes: mailboxes,
				speed: speed, warm: warm, run: run, hosts: hosts, name: fmt.Sprintf("run%d", k), redisPid: r.cmd.Process.Pid}, stderr)
			r.stop()
			if err != nil {
				return err
			}
			perMin := float64(res.delivered) / (run.Minutes() * speed)
			rates[[2]int{instances, mailboxes}] = perMin
			p("  %9d  %9d  %9d  %19.1f  %18.1f  %10.0f  %15d  %13s  %26s  %s; %.2f; %.2f", instances, mailboxes, res.delivered, perMin,
				perMin/float64(mailboxes), float64(res.delivered)/run.Seconds(), res.logins, limitWords(res.limits),
				fmt.Sprintf("%d (limit %d)", res.peak, exchangeConns), res.cpuWords(run), res.bench.Seconds()/run.Seconds(), res.redis.Seconds()/run.Seconds())
		}
	}
	p("  1 mailbox: 3 instances / 1 = %.2f (target 1: the mailbox's limit is the bound); 30 mailboxes: %.2f (target about 3 where one instance is the bound)",
		rates[[2]int{3, 1}]/rates[[2]int{1, 1}], rates[[2]int{3, 30}]/rates[[2]int{1, 30}])
	return nil
}

// limitWords is the fake's limit replies: their total, and by kind when
// there are any.
func limitWords(l fakems.LimitCounts) string {
	if l.Total() == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%d connections, %d pace, %d quota)", l.Total(), l.Connections, l.Messages, l.Quota)
}

// cpuWords says the CPU each relay used during the run, as a share of
// one CPU, with the share of periods its quota held it back in.
func (r clusterResult) cpuWords(run time.Duration) string {
	var parts []string
	for i, c := range r.cpu {
		w := fmt.Sprintf("%.2f", c.Seconds()/run.Seconds())
		if i < len(r.heldBack) {
			w += fmt.Sprintf(" (%.0f%% held)", 100*r.heldBack[i])
		}
		parts = append(parts, w)
	}
	if len(r.gomaxprocs) > 0 && r.gomaxprocs[0] > 0 {
		parts = append(parts, fmt.Sprintf("GOMAXPROCS %d", r.gomaxprocs[0]))
	}
	return strings.Join(parts, ", ")
}

// clusterRunSpec is one throughput run.
type clusterRunSpec struct {
	store                string
	instances, mailboxes int
	speed                float64
	// warm is how long the apps send before run, which counts.
	warm, run time.Duration
	// hosts puts each relay in a cpu group of its own, called
	// name-relayN (nil: unconstrained).
	hosts *cpuHosts
	name  string
	// redisPid is the store's process, whose CPU is measured.
	redisPid int
}

// clusterRun starts the fake with the run's mailboxes and its relays
// sharing the store, sends from every mailbox through all relays for the
// warm-up and the run, and returns what the fake accepted in the run
// (the limits and the sessions it saw: in both).
func clusterRun(ctx context.Context, spec clusterRunSpec, stderr io.Writer) (clusterResult, error) {
	var res clusterResult
	epoch := time.Now()
	fw, err := startFakeWorld(ctx, fakems.Options{SMTPLimits: true, DiscardData: true, Clock: delivery.NewScaledClockAt(spec.speed, epoch)})
	if err != nil {
		return res, err
	}
	defer fw.ms.Close()
	boxes := make([]string, spec.mailboxes)
	for i := range boxes {
		boxes[i] = fmt.Sprintf("bench%02d@contoso.com", i)
		fw.ms.AddMailbox(boxes[i], "not-used-with-oauth")
		fw.ms.GrantApp(demoClientID, boxes[i])
	}
	env := []string{fmt.Sprintf("%s=%g", proxy.ClockSpeedEnv, spec.speed), fmt.Sprintf("%s=%d", proxy.ClockEpochEnv, epoch.UnixNano())}
	var relays []*relayProcess
	defer func() {
		for _, rp := range relays {
			rp.stop()
		}
	}()
	var groups []string
	for i := range spec.instances {
		rs := relaySpec{config: clusterConfig(fw, boxes, spec.store, i, spec.hosts != nil), env: env}
		if spec.hosts != nil {
			if rs.cgroup, err = spec.hosts.group(fmt.Sprintf("%s-relay%d", spec.name, i)); err != nil {
				return res, err
			}
			groups = append(groups, rs.cgroup)
		}
		rp, err := startBenchRelay(ctx, rs, false, stderr)
		if err != nil {
			return res, err
		}
		relays = append(relays, rp)
		if rp.adminAddr != "" && rp.adminAddr != "off" {
			res.gomaxprocs = append(res.gomaxprocs, gomaxprocsOf(ctx, rp.adminAddr))
		}
	}
	apps := clusterBenchApps1
	if spec.mailboxes > 1 {
		apps = clusterBenchApps30
	}
	sendCtx, cancel := context.WithTimeout(ctx, spec.warm+spec.run)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	var k atomic.Int64
	for b := range boxes {
		for range apps {
			wg.Go(func() {
				for sendCtx.Err() == nil {
					rp := relays[int(k.Add(1))%len(relays)]
					msg := fmt.Appendf(nil, "From: %s\r\nTo: %s\r\nSubject: bench\r\n\r\nbody\r\n", boxes[b], boxes[b])
					// A refusal (the relay's 451 after max_wait) is the
					// app's to retry; the count is the fake's.
					sendAs(relayDial(rp.smtpAddr, fmt.Sprintf("u%02d", b)), boxes[b], msg)
				}
			})
		}
	}
	select {
	case <-time.After(spec.warm):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	delivered0, logins0 := len(fw.ms.Messages()), fw.ms.SMTPLogins()
	cpu0 := make([]time.Duration, len(relays))
	held0 := make([][2]int64, len(groups))
	for i, rp := range relays {
		cpu0[i], _ = processCPU(rp.cmd.Process.Pid)
	}
	bench0, _ := processCPU(os.Getpid())
	redis0, _ := processCPU(spec.redisPid)
	for i, g := range groups {
		held0[i][0], held0[i][1] = throttled(g)
	}
	select {
	case <-time.After(spec.run):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	delivered, logins := len(fw.ms.Messages())-delivered0, fw.ms.SMTPLogins()-logins0
	for i, rp := range relays {
		c, _ := processCPU(rp.cmd.Process.Pid)
		res.cpu = append(res.cpu, c-cpu0[i])
	}
	bench1, _ := processCPU(os.Getpid())
	redis1, _ := processCPU(spec.redisPid)
	res.bench, res.redis = bench1-bench0, redis1-redis0
	for i, g := range groups {
		periods, held := throttled(g)
		if n := periods - held0[i][0]; n > 0 {
			res.heldBack = append(res.heldBack, float64(held-held0[i][1])/float64(n))
		}
	}
	cancel()
	wg.Wait()
	res.delivered, res.logins, res.limits, res.peak = delivered, logins, fw.ms.LimitReplies(), fw.ms.PeakSMTPConns()
	return res, nil
}

// loadAverage is the machine's 1-minute load average ("?" where there is
// no /proc/loadavg): the bench shares the machine with whatever else runs.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// gomaxprocsOf reads the GOMAXPROCS a relay's Go runtime chose off its
// /metrics (go_sched_gomaxprocs_threads); 0 when it cannot.
func gomaxprocsOf(ctx context.Context, adminAddr string) int {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+adminAddr+"/metrics", nil)
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "go_sched_gomaxprocs_threads "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(n)
		}
	}
	return 0
}

// clusterConfig is instance i's configuration: one account per mailbox
// (user uNN), delivery: direct, max_wait short so that apps come back;
// with admin an admin listener (for its /metrics).
func clusterConfig(fw *fakeWorld, boxes []string, store string, i int, admin bool) func(dir, hash string) string {
	// deliveryConfig without accounts ends with "accounts:".
	header := deliveryConfig(fw, fw.ms.SMTPAddr, "limits: {max_wait: 30s}\n", "warn")
	return func(dir, hash string) string {
		var b strings.Builder
		h := header(dir, hash)
		if admin {
			h = strings.Replace(h, `admin: {addr: "off"}`, `admin: {addr: "127.0.0.1:0"}`, 1)
		}
		b.WriteString(h)
		for k, box := range boxes {
			fmt.Fprintf(&b, "  - {name: a%02d, provider: fake365, mailbox: %q, username: u%02d, password_hash: %q, allowed_from: [%q]}\n",
				k, box, k, hash, box)
		}
		if store != "" {
			fmt.Fprintf(&b, "cluster: {store: %q, instance: bench-%d}\n", store, i)
		}
		return b.String()
	}
}

// clusterLatency is the per-message latency of one relay with limits
// raised against a fake without limits, alone (store "") or sharing
// store.
func clusterLatency(ctx context.Context, store string, n int, stderr io.Writer) ([]time.Duration, error) {
	fw, err := startFakeWorld(ctx, fakems.Options{DiscardData: true})
	if err != nil {
		return nil, err
	}
	defer fw.ms.Close()
	cfg := deliveryConfig(fw, fw.ms.SMTPAddr, unlimited, "warn", directAccount)
	if store != "" {
		inner := cfg
		cfg = func(dir, hash string) string {
			return inner(dir, hash) + fmt.Sprintf("cluster: {store: %q, instance: bench}\n", store)
		}
	}
	rp, err := startBenchRelay(ctx, relaySpec{config: cfg}, false, stderr)
	if err != nil {
		return nil, err
	}
	defer rp.stop()
	msg := body(1 << 10)
	dial := relayDial(rp.smtpAddr, demoUser)
	var out []time.Duration
	for i := 0; i <= n && ctx.Err() == nil; i++ {
		start := time.Now()
		if err := sendOnNewConnection(dial, msg); err != nil {
			return nil, err
		}
		if i > 0 { // the first logs in upstream
			out = append(out, time.Since(start))
		}
	}
	return out, ctx.Err()
}

// benchRedis is a redis-server the bench started, on a loopback port.
type benchRedis struct {
	cmd    *exec.Cmd
	dir    string
	url    string
	exited chan struct{}
}

// redisStartTimeout bounds the wait for the bench's redis-server.
const redisStartTimeout = 10 * time.Second

func startBenchRedis(ctx context.Context, bin string) (*benchRedis, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := os.MkdirTemp("", "oauthrelay-bench-redis-")
	if err != nil {
		return nil, err
	}
	r := &benchRedis{dir: dir, url: "redis://127.0.0.1:" + strconv.Itoa(port), exited: make(chan struct{})}
	r.cmd = exec.CommandContext(ctx, bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--logfile", filepath.Join(dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	go func() { r.cmd.Wait(); close(r.exited) }()
	deadline := time.Now().Add(redisStartTimeout)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			return r, nil
		}
		select {
		case <-r.exited:
			os.RemoveAll(dir)
			return nil, errors.New("redis-server exited at start")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("redis-server did not listen within %v", redisStartTimeout)
		}
	}
}

func (r *benchRedis) stop() {
	r.cmd.Process.Kill()
	<-r.exited
	os.RemoveAll(r.dir)
}

// sendAs sends msg from from on a connection of its own.
func sendAs(dial func() (*smtp.Client, error), from string, msg []byte) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail(from, []string{"bench@example.net"}, bytes.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}
