package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// The load and soak parts of the bench (issue "Proven under faults and
// load"): many sessions at once against one relay process on this machine,
// and a long run of steady traffic whose memory and file descriptors must
// stay flat. Every loop is bounded in count and in time.
const (
	// loadSMTPSessions and loadIMAPSessions are the full run's sessions at
	// once; -quick divides them by 10.
	loadSMTPSessions = 1000
	loadIMAPSessions = 5000
	// loadOpeners is how many sessions are being opened at a time: below
	// the relay's cap of unauthenticated connections per address (100), as
	// apps on one host ramp up rather than connect all in one instant.
	loadOpeners = 50
	// loadMessagesPerSession is what each open SMTP session sends.
	loadMessagesPerSession = 3
	// loadTimeout bounds each phase.
	loadTimeout = 5 * time.Minute
	// soakSample is how often the soak reads the relay's memory and files.
	soakSample = 30 * time.Second
)

// loadBench drives a relay process and the fake behind it.
type loadBench struct {
	fw     *fakeWorld
	rp     *relayProcess
	token  string
	stdout io.Writer
	// baseline is the relay's open files before any load: what a relay
	// with no session (and no pooled upstream session) holds.
	baseline int
}

func (b *loadBench) p(format string, a ...any) { fmt.Fprintf(b.stdout, format+"\n", a...) }

// runLoad is `bench -only load`: the SMTP and IMAP load, then, when soak
// is positive, the soak.
func runLoad(ctx context.Context, quick bool, soak time.Duration, pin bool, stdout, stderr io.Writer) error {
	fw, rp, err := startProxyWorld(ctx, pin, stderr)
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	defer rp.stop()
	b := &loadBench{fw: fw, rp: rp, token: fw.ms.IssueAccessToken(demoClientID, ""), stdout: stdout}
	b.baseline = b.relayFiles()
	b.p("oauthrelay bench load: relay (child process %d) against the fake Exchange on loopback", rp.cmd.Process.Pid)
	if rp.cpus != "" {
		b.p("relay pinned to CPUs %s, load generator and fake upstream to the others", rp.cpus)
	}
	smtpN, imapN := loadSMTPSessions, loadIMAPSessions
	if quick {
		smtpN, imapN = smtpN/10, imapN/10
	}
	// The idle IMAP sessions first, on the fresh relay: after the SMTP
	// sessions closed, the relay would hold memory the runtime has not
	// given back yet, which the new sessions reuse, and their growth
	// would read too small (see idleRSS).
	if err := b.imap(ctx, imapN); err != nil {
		return fmt.Errorf("IMAP load: %w", err)
	}
	if err := b.smtp(ctx, smtpN); err != nil {
		return fmt.Errorf("SMTP load: %w", err)
	}
	if soak > 0 {
		return b.soak(ctx, soak)
	}
	return nil
}

// smtp opens n SMTP sessions through the relay, then has all of them send
// at once, and the same against the fake directly.
func (b *loadBench) smtp(ctx context.Context, n int) error {
	before := b.relayFiles()
	r, err := sessionLoad(ctx, relayDial(b.rp.smtpAddr, demoUser), n, loadMessagesPerSession, func() { b.sample("with every SMTP session open") })
	if err != nil {
		return err
	}
	d, err := sessionLoad(ctx, exchangeDial(b.fw, b.token), n, loadMessagesPerSession, nil)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	b.p("SMTP %d concurrent sessions, %d messages of 1 KB each, all at once:", n, loadMessagesPerSession)
	b.p("  login (connect, EHLO, AUTH)  relay p50 %s p99 %s   direct p50 %s p99 %s", ms(r.login[0]), ms(r.login[1]), ms(d.login[0]), ms(d.login[1]))
	b.p("  per message                  relay p50 %s p99 %s   direct p50 %s p99 %s", ms(r.message[0]), ms(r.message[1]), ms(d.message[0]), ms(d.message[1]))
	b.p("  the relay's open files: %d before, %d after the sessions ended (the pool keeps up to limits.connections upstream sessions for a minute)",
		before, b.settledFiles(before))
	return nil
}

// imap opens n idle authenticated IMAP sessions through the relay.
func (b *loadBench) imap(ctx context.Context, n int) error {
	pid := b.rp.cmd.Process.Pid
	before, err := rssNow(pid)
	if err != nil {
		return err
	}
	files := b.relayFiles()
	conns, logins, err := openIMAP(ctx, b.rp.imapAddr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return err
	}
	time.Sleep(time.Second) // let the copies settle into their reads
	after, err := rssNow(pid)
	if err != nil {
		return err
	}
	lp := percentiles(logins)
	b.p("IMAP %d idle authenticated sessions: relay RSS +%.1f KiB per session (target <= 32 KiB), login p50 %s p99 %s, the relay's open files %d",
		n, float64(after-before)/float64(n)/1024, ms(lp[0]), ms(lp[1]), b.relayFiles())
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	b.p("  the relay's open files: %d before, %d after the sessions ended", files, b.settledFiles(files))
	return nil
}

// soak runs steady traffic for d: IMAP sessions that log in and out, and
// SMTP messages on new connections, sampling the relay's memory and files.
func (b *loadBench) soak(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	files := b.relayFiles()
	b.p("soak for %s: SMTP messages and IMAP logins on new connections, 8 clients each", d)
	b.sample("start")
	var wg sync.WaitGroup
	var sent, logins, failures atomic.Int64
	msg := body(1 << 10)
	dial := relayDial(b.rp.smtpAddr, demoUser)
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := sendOnNewConnection(dial, msg); err != nil {
					failures.Add(1)
					continue
				}
				sent.Add(1)
			}
		})
		wg.Go(func() {
			for ctx.Err() == nil {
				c, err := rawIMAPLogin(b.rp.imapAddr)
				if err != nil {
					failures.Add(1)
					continue
				}
				fmt.Fprintf(c, "z LOGOUT\r\n")
				io.Copy(io.Discard, c)
				c.Close()
				logins.Add(1)
			}
		})
	}
	tick := time.NewTicker(soakSample)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			b.sample(fmt.Sprintf("%d messages, %d IMAP sessions", sent.Load(), logins.Load()))
		}
	}
	wg.Wait()
	b.sample("end")
	// A leak shows once the pool's idle upstream sessions have closed
	// too (a minute idle): the relay must be back to what it held before
	// any load.
	after := b.settledFilesWithin(b.baseline, poolIdleSettle)
	b.p("soak: %d messages, %d IMAP sessions, %d failures; the relay's open files %d at the start, %d once idle (%d before any load)",
		sent.Load(), logins.Load(), failures.Load(), files, after, b.baseline)
	if after > b.baseline {
		return fmt.Errorf("soak: the relay holds %d open files once idle, %d before any load", after, b.baseline)
	}
	return nil
}

// sample prints the relay's resident memory and open files now.
func (b *loadBench) sample(what string) {
	rss, err := rssNow(b.rp.cmd.Process.Pid)
	if err != nil {
		b.p("  %s: %v", what, err)
		return
	}
	b.p("  %-40s relay RSS %6.1f MiB, open files %d", what+":", float64(rss)/(1<<20), b.relayFiles())
}

// relayFiles counts the relay process's open file descriptors (-1 where
// /proc cannot tell).
func (b *loadBench) relayFiles() int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(b.rp.cmd.Process.Pid) + "/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// settledFiles waits, at most 10 s, for the relay's open files to come
// back to before (sessions close a little after their clients do), and
// returns the count.
func (b *loadBench) settledFiles(before int) int { return b.settledFilesWithin(before, 10*time.Second) }

// poolIdleSettle is how long the soak waits for the relay to close its
// idle upstream sessions (delivery's idle time is a minute).
const poolIdleSettle = 75 * time.Second

// settledFilesWithin is settledFiles with a wait of at most d.
func (b *loadBench) settledFilesWithin(before int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		n := b.relayFiles()
		if n <= before || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loadResult is the latency percentiles (p50, p99) of a session load.
type loadResult struct {
	login, message [2]time.Duration
}

// sessionLoad opens n sessions with dial, loadOpeners at a time, timing
// each login; once all are open (open is called then) every session sends
// m messages at once, each timed. Bounded by loadTimeout.
func sessionLoad(ctx context.Context, dial func() (*smtp.Client, error), n, m int, open func()) (loadResult, error) {
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	clients := make([]*smtp.Client, n)
	logins := make([]time.Duration, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := parallel(ctx, n, loadOpeners, func(i int) error {
		start := time.Now()
		c, err := dial()
		logins[i] = time.Since(start)
		clients[i] = c
		return err
	}); err != nil {
		return loadResult{}, fmt.Errorf("opening the sessions: %w", err)
	}
	if open != nil {
		open()
	}
	msg := body(1 << 10)
	times := make([]time.Duration, n*m)
	if err := parallel(ctx, n, n, func(i int) error {
		for j := range m {
			start := time.Now()
			if err := sendMsg(clients[i], msg); err != nil {
				return err
			}
			times[i*m+j] = time.Since(start)
		}
		return clients[i].Quit()
	}); err != nil {
		return loadResult{}, fmt.Errorf("sending: %w", err)
	}
	return loadResult{login: percentiles(logins), message: percentiles(times)}, nil
}

// openIMAP opens n idle authenticated IMAP sessions, loadOpeners at a
// time, and returns them with each one's login time.
func openIMAP(ctx context.Context, addr string, n int) ([]net.Conn, []time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	conns := make([]net.Conn, n)
	logins := make([]time.Duration, n)
	err := parallel(ctx, n, loadOpeners, func(i int) error {
		start := time.Now()
		c, err := rawIMAPLogin(addr)
		logins[i] = time.Since(start)
		conns[i] = c
		return err
	})
	var open []net.Conn
	for _, c := range conns {
		if c != nil {
			open = append(open, c)
		}
	}
	return open, logins, err
}

// parallel runs f(0) … f(n-1), at most width at a time, and returns the
// first error; it stops starting new calls after an error or once ctx
// ends.
func parallel(ctx context.Context, n, width int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, width)
	for i := 0; i < n; i++ {
		mu.Lock()
		stop := first != nil
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(i); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("%d: %w", i, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
