package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// The delivery part of the bench: what the pool, the limits and the queue
// do for an app, against a fake Exchange that keeps Exchange Online's
// limits (fakems.Options.SMTPLimits). Figures are printed, never asserted.
const (
	// defaultBenchSpeed is how many times faster than real time the fake
	// and the relay keep their limits in the burst: a minute lasts 1.2 s,
	// so 1,000 messages at 30 a minute drain in about 40 s. The relay's
	// own work takes real time, which the clock multiplies: at 100× the
	// queue's worker (one message after the other, each fsynced, while
	// the apps' messages are being spooled) added 5-8% to the drain, at
	// 50× about 1%, and at 1× it has two seconds a message.
	defaultBenchSpeed = 50
	// exchangePace and exchangeConns are the limits the burst meets:
	// Exchange Online's, which the relay's defaults keep.
	exchangePace  = 30
	exchangeConns = 3
	// burstMessages and burstClients are the issue's burst: an invoice
	// run from 20 connections, a new connection per message.
	burstMessages = 1000
	burstClients  = 20
	// loginLatency is what the fake adds before its greeting and before
	// its AUTH reply in the latency figures: TLS and XOAUTH2 with Exchange
	// over the internet cost tens of milliseconds each, loopback nothing.
	loginLatency = 30 * time.Millisecond
	// replyLatency is a round trip to Exchange for every other command,
	// in the second latency figure.
	replyLatency = 10 * time.Millisecond
	// queueClients is the load of the queue against direct comparison.
	queueClients = 32
	// queuedForRSS is how many messages wait in the spool when the
	// relay's memory is read.
	queuedForRSS = 10000
	// hookWait is how long the bench waits for the relay's log line that
	// says it runs its limits on the bench's clock.
	hookWait = 3 * time.Second
	// queueUser is the app's user name of the bench's delivery: queue
	// account (demoUser's is delivery: direct).
	queueUser = "demo-queue"
)

// deliveryBench runs the delivery figures; each part starts its own fake
// Exchange and relay process.
type deliveryBench struct {
	pin, quick     bool
	speed          float64
	stdout, stderr io.Writer
}

func (b *deliveryBench) p(format string, a ...any) { fmt.Fprintf(b.stdout, format+"\n", a...) }

func (b *deliveryBench) run(ctx context.Context) error {
	for _, part := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"delivery burst", b.burst},
		{"delivery latency", b.latency},
		{"delivery throughput", b.throughput},
		{"queued memory", b.queuedMemory},
	} {
		start := time.Now()
		if err := part.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", part.name, err)
		}
		fmt.Fprintf(b.stderr, "bench: %s took %v\n", part.name, time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// benchAccount is an account of a delivery bench's relay.
type benchAccount struct{ name, user, delivery string }

var (
	directAccount = benchAccount{name: "demo", user: demoUser, delivery: "direct"}
	queueAccount  = benchAccount{name: "demo-queue", user: queueUser, delivery: "queue"}
)

// deliveryConfig is the configuration of a delivery bench's relay: the
// fake's provider with its SMTP server at smtpAddr, the accounts, all
// sending as the demo mailbox (so they share its Sender: one pool, one
// pace), and limits (a top-level `limits:` line, or "" for Exchange's).
func deliveryConfig(fw *fakeWorld, smtpAddr, limits, level string, accounts ...benchAccount) func(dir, hash string) string {
	return func(dir, hash string) string {
		var b strings.Builder
		fmt.Fprintf(&b, `state_dir: %q
log: {level: %s}
listen:
  smtp: {addr: "127.0.0.1:0"}
  imap: {addr: "127.0.0.1:0"}
  pop3: {addr: "off"}
  admin: {addr: "off"}
%sproviders:
  fake365:
    type: microsoft
    tenant: %q
    client_id: %q
    client_secret: %q
    grant: client_credentials
    token_url: %q
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    ca_file: %q
accounts:
`, dir, level, limits, fw.ms.Tenant, demoClientID, fw.secret, fw.ms.TokenURL, smtpAddr, fw.ms.IMAPAddr, fw.ms.CAFile)
		for _, a := range accounts {
			fmt.Fprintf(&b, `  - name: %q
    provider: fake365
    mailbox: %q
    username: %q
    password_hash: %q
    allowed_from: [%q]
    delivery: %s
`, a.name, demoMailbox, a.user, hash, demoMailbox, a.delivery)
		}
		return b.String()
	}
}

// relayDial logs in to the relay as user with AUTH PLAIN, as a legacy
// app does.
func relayDial(addr, user string) func() (*smtp.Client, error) {
	return func() (*smtp.Client, error) {
		c, err := smtp.Dial(addr)
		if err != nil {
			return nil, err
		}
		if err := c.Auth(gosasl.NewPlainClient("", user, demoPassword)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// exchangeDial logs in to the fake Exchange with STARTTLS and XOAUTH2, as
// an app that speaks OAuth itself would (with a cached token).
func exchangeDial(fw *fakeWorld, token string) func() (*smtp.Client, error) {
	return func() (*smtp.Client, error) {
		c, err := smtp.DialStartTLS(fw.ms.SMTPAddr, fw.ms.ClientTLSConfig())
		if err != nil {
			return nil, err
		}
		if err := c.Auth(sasl.NewXOAuth2Client(demoMailbox, token)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// sendOnNewConnection sends msg on a connection of its own, as apps that
// connect once per message do.
func sendOnNewConnection(dial func() (*smtp.Client, error), msg []byte) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := sendMsg(c, msg); err != nil {
		return err
	}
	return c.Quit()
}

// burstResult is what the apps of a burst saw.
type burstResult struct {
	sent    int            // answered 250
	refused map[string]int // SMTP replies other than 250, by "code x.y.z text"
	broken  int            // other failures (connection lost)
	elapsed time.Duration  // from the first connection to the last reply
}

func (r burstResult) refusedTotal() int {
	n := r.broken
	for _, c := range r.refused {
		n += c
	}
	return n
}

// refusedText lists the refusals, most frequent first.
func (r burstResult) refusedText() string {
	if r.refusedTotal() == 0 {
		return "0"
	}
	var parts []string
	for reply, n := range r.refused {
		parts = append(parts, fmt.Sprintf("%d × %s", n, reply))
	}
	slices.Sort(parts)
	if r.broken > 0 {
		parts = append(parts, fmt.Sprintf("%d × connection failed", r.broken))
	}
	return fmt.Sprintf("%d (%s)", r.refusedTotal(), strings.Join(parts, "; "))
}

// burst sends n messages from `clients` concurrent apps, each message on a
// new connection, and counts how each went; an app does not retry a
// refused message. Bounded by n and by ctx.
func burst(ctx context.Context, dial func() (*smtp.Client, error), clients, n int, msg []byte) burstResult {
	var mu sync.Mutex
	res := burstResult{refused: map[string]int{}}
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				err := sendOnNewConnection(dial, msg)
				mu.Lock()
				var se *smtp.SMTPError
				switch {
				case err == nil:
					res.sent++
				case errors.As(err, &se):
					res.refused[replyKey(se)]++
				default:
					res.broken++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// replyKey is a refusal shortened to its code and the start of its text.
func replyKey(se *smtp.SMTPError) string {
	text := se.Message
	if i := strings.IndexAny(text, "[;."); i > 0 {
		text = text[:i]
	}
	if len(text) > 40 {
		text = text[:40] + "…"
	}
	return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], strings.TrimSpace(text))
}

// burst measures the issue's burst against a fake Exchange that keeps 3
// connections and 30 messages a minute on a fast clock: first an app
// that speaks to Exchange itself, then through the relay with delivery:
// direct and delivery: queue, whose limits run on a clock of the same
// speed (proxy.ClockSpeedEnv).
func (b *deliveryBench) burst(ctx context.Context) error {
	n := burstMessages
	if b.quick {
		n /= 5
	}
	minute := time.Duration(float64(time.Minute) / b.speed)
	fw, err := startFakeWorld(ctx, fakems.Options{SMTPLimits: true, Clock: delivery.NewScaledClock(b.speed), DiscardData: true})
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	rp, err := startBenchRelay(ctx, relaySpec{
		config: deliveryConfig(fw, fw.ms.SMTPAddr, "", "warn", directAccount, queueAccount),
		env:    []string{fmt.Sprintf("%s=%g", proxy.ClockSpeedEnv, b.speed)},
		watch:  proxy.ClockSpeedEnv + " is set",
	}, b.pin, b.stderr)
	if err != nil {
		return err
	}
	defer rp.stop()
	hooked := false
	select {
	case <-rp.seen:
		hooked = true
	case <-time.After(hookWait):
	case <-ctx.Done():
		return ctx.Err()
	}

	// The fastest a sliding window of 30 a minute allows: 30 messages at
	// once, the next 30 a minute later..., the last ones at minute
	// (n-1)/30 (33 for 1,000; the issue's n/30 is 33.3).
	floor := time.Duration((n-1)/exchangePace) * time.Minute
	b.p("")
	b.p("delivery: a burst of %d messages from %d app connections (a new connection per message) against a fake Exchange keeping %d connections and %d messages a minute; limits on a clock %g× real time (a minute lasts %v); drain time on that clock, from the first connection to the last message received, against the fastest the limit allows, %.0f min",
		n, burstClients, exchangeConns, exchangePace, b.speed, minute.Round(time.Millisecond), floor.Minutes())
	msg := body(1 << 10)
	tw := tabwriter.NewWriter(b.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  path\trefused to the app\tExchange limit replies\tdelivered\tdrain\tvs minimum")
	row := func(name string, res burstResult, limits fakems.LimitCounts, delivered int, drain time.Duration) {
		ratio := "-" // a drain that lost messages is no drain
		if delivered == n {
			ratio = fmt.Sprintf("%.3f", drain.Minutes()/floor.Minutes())
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d (%d conn, %d pace, %d quota)\t%d of %d\t%.1f min\t%s\n", name, res.refusedText(),
			limits.Total(), limits.Connections, limits.Messages, limits.Quota, delivered, n, drain.Minutes(), ratio)
	}
	phase := func(name string, dial func() (*smtp.Client, error), queued bool) error {
		// Let the fake's minute of the previous phase pass.
		time.Sleep(minute + 100*time.Millisecond)
		limitsBefore, msgsBefore := fw.ms.LimitReplies(), len(fw.ms.Messages())
		bctx, cancel := context.WithTimeout(ctx, 4*time.Duration(float64(floor)/b.speed)+time.Minute)
		defer cancel()
		start := time.Now()
		res := burst(bctx, dial, burstClients, n, msg)
		if queued {
			// Drained when the fake has every message the apps were
			// told was queued (or the bound passed).
			fw.ms.WaitMessages(bctx, msgsBefore+res.sent)
		}
		drain := time.Duration(float64(time.Since(start)) * b.speed)
		after := fw.ms.LimitReplies()
		limits := fakems.LimitCounts{
			Connections: after.Connections - limitsBefore.Connections,
			Messages:    after.Messages - limitsBefore.Messages,
			Quota:       after.Quota - limitsBefore.Quota,
			Recipients:  after.Recipients - limitsBefore.Recipients,
		}
		row(name, res, limits, len(fw.ms.Messages())-msgsBefore, drain)
		return ctx.Err()
	}
	if err := phase("app → Exchange, no relay", exchangeDial(fw, fw.ms.IssueAccessToken(demoClientID, "")), false); err != nil {
		return err
	}
	if !hooked {
		tw.Flush()
		b.p("  (the relay ignored %s: its Senders do not take proxy.SenderClock yet, so its limits would run in real time and the burst would last %.0f minutes; skipped)", proxy.ClockSpeedEnv, floor.Minutes())
		return nil
	}
	if err := phase("relay, delivery: direct", relayDial(rp.smtpAddr, demoUser), false); err != nil {
		return err
	}
	if err := phase("relay, delivery: queue", relayDial(rp.smtpAddr, queueUser), true); err != nil {
		return err
	}
	tw.Flush()
	b.p("  (delivery: direct: the app waits for its slot, up to max_wait 2 min on that clock; queue: 250 at once, then the worker drains)")
	return nil
}

// latency measures one app that sends message after message, a new
// connection each, directly to the fake Exchange and through the relay
// (whose pool keeps the upstream session), with a login latency added
// in the fake, then with a round trip added to every reply as well.
func (b *deliveryBench) latency(ctx context.Context) error {
	n := 60
	if b.quick {
		n = 15
	}
	b.p("")
	b.p("delivery: per-message latency, one app sending %d messages one after the other, a new connection each (medians over %d alternating runs)", n, benchRounds)
	for _, lat := range []struct{ login, reply time.Duration }{{loginLatency, 0}, {loginLatency, replyLatency}} {
		d, r, err := b.latencyPair(ctx, n, lat.login, lat.reply)
		if err != nil {
			return err
		}
		what := fmt.Sprintf("fake adds %v before its greeting and before its AUTH reply", lat.login)
		if lat.reply > 0 {
			what += fmt.Sprintf(", %v before every other reply", lat.reply)
		}
		dp, rp := percentiles(d), percentiles(r)
		b.p("  %s: direct p50 %s p99 %s; relay with its pool p50 %s p99 %s; ratio of p50s %.2f (target <= 0.5)",
			what, ms(dp[0]), ms(dp[1]), ms(rp[0]), ms(rp[1]), float64(rp[0])/float64(dp[0]))
	}
	return nil
}

func (b *deliveryBench) latencyPair(ctx context.Context, n int, login, reply time.Duration) (direct, relay []time.Duration, err error) {
	fw, err := startFakeWorld(ctx, fakems.Options{DiscardData: true, SMTPLoginLatency: login, SMTPReplyLatency: reply})
	if err != nil {
		return nil, nil, err
	}
	defer fw.ms.Close()
	rp, err := startBenchRelay(ctx, relaySpec{config: deliveryConfig(fw, fw.ms.SMTPAddr, unlimited, "warn", directAccount)}, b.pin, b.stderr)
	if err != nil {
		return nil, nil, err
	}
	defer rp.stop()
	msg := body(1 << 10)
	dialDirect, dialRelay := exchangeDial(fw, fw.ms.IssueAccessToken(demoClientID, "")), relayDial(rp.smtpAddr, demoUser)
	timed := func(dial func() (*smtp.Client, error), k int) ([]time.Duration, error) {
		var out []time.Duration
		for i := 0; i < k && ctx.Err() == nil; i++ {
			start := time.Now()
			if err := sendOnNewConnection(dial, msg); err != nil {
				return nil, err
			}
			out = append(out, time.Since(start))
		}
		return out, ctx.Err()
	}
	// One message each first: the relay's first login and both sides' TLS
	// session caches are not what is measured.
	if _, err := timed(dialDirect, 1); err != nil {
		return nil, nil, fmt.Errorf("direct: %w", err)
	}
	if _, err := timed(dialRelay, 1); err != nil {
		return nil, nil, fmt.Errorf("relay: %w", err)
	}
	for range benchRounds {
		d, err := timed(dialDirect, n/benchRounds)
		if err != nil {
			return nil, nil, fmt.Errorf("direct: %w", err)
		}
		r, err := timed(dialRelay, n/benchRounds)
		if err != nil {
			return nil, nil, fmt.Errorf("relay: %w", err)
		}
		direct, relay = append(direct, d...), append(relay, r...)
	}
	return direct, relay, nil
}

// throughput compares delivery: queue with delivery: direct through one
// relay at 32 clients (a session each, messages back to back), against a
// fake without limits and a relay whose limits are raised: what the spool
// costs. For the queue both the rate the apps were answered 250 at and
// the rate the fake received the messages at, from the first one sent.
func (b *deliveryBench) throughput(ctx context.Context) error {
	// At most 10,000 messages a minute through the relay in all (the
	// highest messages_per_minute it takes): more, and the last round
	// would wait for the pace.
	nd, nq := 1500, 500
	if b.quick {
		nd, nq = 300, 60
	}
	fw, err := startFakeWorld(ctx, fakems.Options{DiscardData: true})
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	rp, err := startBenchRelay(ctx, relaySpec{config: deliveryConfig(fw, fw.ms.SMTPAddr, unlimited, "warn", directAccount, queueAccount)}, b.pin, b.stderr)
	if err != nil {
		return err
	}
	defer rp.stop()
	var direct, accepted, delivered []float64
	for range benchRounds {
		sent, elapsed, err := smtpLoadN(ctx, relayDial(rp.smtpAddr, demoUser), queueClients, nd, 1<<10, 2*time.Minute)
		if err != nil {
			return fmt.Errorf("delivery direct: %w", err)
		}
		direct = append(direct, float64(sent)/elapsed.Seconds())

		before := len(fw.ms.Messages())
		start := time.Now()
		sent, elapsed, err = smtpLoadN(ctx, relayDial(rp.smtpAddr, queueUser), queueClients, nq, 1<<10, 2*time.Minute)
		if err != nil {
			return fmt.Errorf("delivery queue: %w", err)
		}
		accepted = append(accepted, float64(sent)/elapsed.Seconds())
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err = fw.ms.WaitMessages(wctx, before+int(sent))
		cancel()
		if err != nil {
			return fmt.Errorf("delivery queue: the queue did not drain: %w", err)
		}
		delivered = append(delivered, float64(sent)/time.Since(start).Seconds())
	}
	dm, am, qm := median(direct), median(accepted), median(delivered)
	b.p("")
	b.p("delivery: %d clients, 1 KB messages, through one relay (limits raised, fake without limits), medians of %d alternating runs:", queueClients, benchRounds)
	b.p("  delivery: direct %.0f msg/s; delivery: queue %.0f msg/s answered 250 queued (ratio %.2f), %.0f msg/s delivered upstream from the first message sent (ratio %.2f)",
		dm, am, am/dm, qm, qm/dm)
	return nil
}

// queuedMemory fills a relay's queue with messages it cannot deliver (its
// provider's SMTP server refuses connections) and reads its resident
// memory.
func (b *deliveryBench) queuedMemory(ctx context.Context) error {
	n := queuedForRSS
	if b.quick {
		n /= 10
	}
	fw, err := startFakeWorld(ctx, fakems.Options{DiscardData: true})
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	down, err := refusingAddr()
	if err != nil {
		return err
	}
	rp, err := startBenchRelay(ctx, relaySpec{config: deliveryConfig(fw, down, "", "error", queueAccount)}, b.pin, b.stderr)
	if err != nil {
		return err
	}
	defer rp.stop()
	pid := rp.cmd.Process.Pid
	before, err := rssNow(pid)
	if err != nil {
		return err
	}
	sent, elapsed, err := smtpLoadN(ctx, relayDial(rp.smtpAddr, queueUser), queueClients, n, 1<<10, 5*time.Minute)
	if err != nil {
		return fmt.Errorf("after %d messages: %w", sent, err)
	}
	time.Sleep(time.Second) // let the worker's attempts settle
	now, err := rssNow(pid)
	if err != nil {
		return err
	}
	peak, err := peakRSS(pid)
	if err != nil {
		return err
	}
	envelopes, _ := filepath.Glob(filepath.Join(rp.dir, "queue", "active", "*.json"))
	b.p("")
	b.p("delivery: relay RSS with %d messages of 1 KB queued (upstream down; %d envelopes in the spool; queued at %.0f msg/s from %d clients): %.1f MiB (%.1f MiB before, peak %.1f MiB)",
		sent, len(envelopes), float64(sent)/elapsed.Seconds(), queueClients, mib(now), mib(before), mib(peak))
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// refusingAddr returns a loopback address where nothing listens: an
// upstream that is down.
func refusingAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}
