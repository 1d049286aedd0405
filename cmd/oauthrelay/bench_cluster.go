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
	"os"
	"os/exec"
	"path/filepath"
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
	// clusterBenchClients is the apps per mailbox, each sending one
	// message after the other, a new connection each.
	clusterBenchClients = 4
	// clusterLatencyMessages is the messages of each latency run.
	clusterLatencyMessages = 300
)

// clusterBench runs the figures.
func clusterBench(ctx context.Context, quick bool, speed float64, stdout, stderr io.Writer) error {
	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("bench -only cluster needs redis-server (Debian: redis-server): %w", err)
	}
	run := clusterBenchRun
	if quick {
		run /= 3
	}
	p("cluster: relays with delivery: direct sharing one redis-server, against a fake Exchange keeping %d connections and %d messages a minute per mailbox on a clock %g× real time; %d apps per mailbox, a new connection per message, for %v",
		exchangeConns, exchangePace, speed, clusterBenchClients, run)
	p("  instances  mailboxes  delivered  per Exchange minute  per mailbox-minute  limit replies")
	rates := map[[2]int]float64{}
	for _, mailboxes := range []int{1, 30} {
		for _, instances := range []int{1, 3} {
			r, err := startBenchRedis(ctx, bin)
			if err != nil {
				return err
			}
			n, limits, err := clusterRun(ctx, r.url, instances, mailboxes, speed, run, stderr)
			r.stop()
			if err != nil {
				return err
			}
			perMin := float64(n) / (run.Minutes() * speed)
			rates[[2]int{instances, mailboxes}] = perMin
			p("  %9d  %9d  %9d  %19.1f  %18.1f  %d", instances, mailboxes, n, perMin, perMin/float64(mailboxes), limits.Total())
		}
	}
	p("  1 mailbox: 3 instances / 1 = %.2f (target 1: the mailbox's limit is the bound); 30 mailboxes: %.2f (target about 3 where one instance is the bound)",
		rates[[2]int{3, 1}]/rates[[2]int{1, 1}], rates[[2]int{3, 30}]/rates[[2]int{1, 30}])

	r, err := startBenchRedis(ctx, bin)
	if err != nil {
		return err
	}
	defer r.stop()
	n := clusterLatencyMessages
	if quick {
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

// clusterRun starts the fake with mailboxes mailboxes and instances relays
// sharing store, sends from every mailbox through all relays for run, and
// returns how many messages the fake accepted and its limit replies.
func clusterRun(ctx context.Context, store string, instances, mailboxes int, speed float64, run time.Duration, stderr io.Writer) (int, fakems.LimitCounts, error) {
	epoch := time.Now()
	fw, err := startFakeWorld(ctx, fakems.Options{SMTPLimits: true, DiscardData: true, Clock: delivery.NewScaledClockAt(speed, epoch)})
	if err != nil {
		return 0, fakems.LimitCounts{}, err
	}
	defer fw.ms.Close()
	boxes := make([]string, mailboxes)
	for i := range boxes {
		boxes[i] = fmt.Sprintf("bench%02d@contoso.com", i)
		fw.ms.AddMailbox(boxes[i], "not-used-with-oauth")
		fw.ms.GrantApp(demoClientID, boxes[i])
	}
	env := []string{fmt.Sprintf("%s=%g", proxy.ClockSpeedEnv, speed), fmt.Sprintf("%s=%d", proxy.ClockEpochEnv, epoch.UnixNano())}
	var relays []*relayProcess
	defer func() {
		for _, rp := range relays {
			rp.stop()
		}
	}()
	for i := range instances {
		rp, err := startBenchRelay(ctx, relaySpec{config: clusterConfig(fw, boxes, store, i), env: env}, false, stderr)
		if err != nil {
			return 0, fakems.LimitCounts{}, err
		}
		relays = append(relays, rp)
	}
	runCtx, cancel := context.WithTimeout(ctx, run)
	defer cancel()
	var wg sync.WaitGroup
	var k atomic.Int64
	for b := range boxes {
		for range clusterBenchClients {
			wg.Go(func() {
				for runCtx.Err() == nil {
					rp := relays[int(k.Add(1))%len(relays)]
					msg := fmt.Appendf(nil, "From: %s\r\nTo: %s\r\nSubject: bench\r\n\r\nbody\r\n", boxes[b], boxes[b])
					// A refusal (the relay's 451 after max_wait) is the
					// app's to retry; the count is the fake's.
					sendAs(relayDial(rp.smtpAddr, fmt.Sprintf("u%02d", b)), boxes[b], msg)
				}
			})
		}
	}
	wg.Wait()
	return len(fw.ms.Messages()), fw.ms.LimitReplies(), nil
}

// clusterConfig is instance i's configuration: one account per mailbox
// (user uNN), delivery: direct, max_wait short so that apps come back.
func clusterConfig(fw *fakeWorld, boxes []string, store string, i int) func(dir, hash string) string {
	// deliveryConfig without accounts ends with "accounts:".
	header := deliveryConfig(fw, fw.ms.SMTPAddr, "limits: {max_wait: 30s}\n", "warn")
	return func(dir, hash string) string {
		var b strings.Builder
		b.WriteString(header(dir, hash))
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
