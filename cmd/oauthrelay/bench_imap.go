package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// imapBench measures the IMAP proxy against a direct connection to the
// same fake Exchange: FETCH throughput of a large mailbox, login latency
// with a cached token, and the relay's resident memory per idle
// authenticated connection.
type imapBench struct {
	fw    *fakeWorld
	rp    *relayProcess
	token string
	p     func(format string, a ...any)
	// fresh starts another relay like rp, for the idle memory (idleRSS).
	fresh func(context.Context) (*relayProcess, error)
}

func (b *imapBench) run(ctx context.Context, quick bool) error {
	msgs, size, conns, logins := 1000, 200<<10, 2000, 300
	if quick {
		msgs, conns, logins = 100, 200, 50
	}
	if err := b.fill(msgs, size); err != nil {
		return err
	}
	dial := func(relay bool) func() (*imapclient.Client, error) {
		if relay {
			return b.dialRelay
		}
		return b.dialDirect
	}
	a, err := alternate(b.rp.cmd.Process.Pid,
		func(relay bool) (time.Duration, error) { return b.fetchAll(ctx, dial(relay)) },
		func(relay bool) ([]time.Duration, error) { return b.loginLatency(ctx, dial(relay), logins/benchRounds) })
	if err != nil {
		return fmt.Errorf("IMAP: %w", err)
	}
	a.report(b.p, "IMAP", "IMAP FETCH", msgs, float64(msgs*size), 0.95, 1.0)

	per, err := idleRSS(ctx, b.fresh, conns, func(rp *relayProcess) (io.Closer, error) { return rawIMAPLogin(rp.imapAddr) })
	if err != nil {
		return fmt.Errorf("idle connections: %w", err)
	}
	b.p("IMAP idle authenticated connections: %d open, relay RSS %.1f KiB each (target <= 32 KiB)", conns, per/1024)
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// fill puts n messages of size bytes into the demo mailbox's INBOX.
func (b *imapBench) fill(n, size int) error {
	msg := body(size)
	for i := 0; i < n; i++ {
		if err := b.fw.ms.AppendIMAP(demoMailbox, "INBOX", msg); err != nil {
			return err
		}
	}
	return nil
}

// dialDirect logs in to the fake Exchange with XOAUTH2 over TLS, as an app
// that speaks OAuth itself would.
func (b *imapBench) dialDirect() (*imapclient.Client, error) {
	tc := b.fw.ms.ClientTLSConfig()
	c, err := imapclient.DialTLS(b.fw.ms.IMAPAddr, &imapclient.Options{TLSConfig: tc.Clone()})
	if err != nil {
		return nil, err
	}
	if err := c.Authenticate(sasl.NewXOAuth2Client(demoMailbox, b.token)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// dialRelay logs in to the relay with a plain LOGIN, as the legacy app does.
func (b *imapBench) dialRelay() (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(b.rp.imapAddr, nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(demoUser, demoPassword).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// fetchAll FETCHes every message body in INBOX and returns the time taken.
func (b *imapBench) fetchAll(ctx context.Context, dial func() (*imapclient.Client, error)) (time.Duration, error) {
	c, err := dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return 0, err
	}
	start := time.Now()
	section := &imap.FetchItemBodySection{Peek: true}
	seq := imap.SeqSet{}
	seq.AddRange(1, 0)
	cmd := c.Fetch(seq, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}})
	for m := cmd.Next(); m != nil; m = cmd.Next() {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		for item := m.Next(); item != nil; item = m.Next() {
			if bs, ok := item.(imapclient.FetchItemDataBodySection); ok && bs.Literal != nil {
				io.Copy(io.Discard, bs.Literal)
			}
		}
	}
	if err := cmd.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// loginLatency returns the durations of n sequential connect+login.
func (b *imapBench) loginLatency(ctx context.Context, dial func() (*imapclient.Client, error), n int) ([]time.Duration, error) {
	var d []time.Duration
	for i := 0; i < n && ctx.Err() == nil; i++ {
		start := time.Now()
		c, err := dial()
		if err != nil {
			return nil, err
		}
		d = append(d, time.Since(start))
		c.Close()
	}
	return d, nil
}

// percentiles returns the p50 and p99 of d.
func percentiles(d []time.Duration) [2]time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return [2]time.Duration{s[len(s)/2], s[len(s)*99/100]}
}

// rawIMAPLogin logs in with a bare socket (no client library state on our
// side) and leaves the connection idle.
func rawIMAPLogin(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	if _, err := c.Read(buf); err != nil {
		c.Close()
		return nil, err
	}
	fmt.Fprintf(c, "a LOGIN %s %s\r\n", demoUser, demoPassword)
	var got []byte
	for !containsLine(got, "a OK") {
		n, err := c.Read(buf)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("login: %w (got %q)", err, got)
		}
		got = append(got, buf[:n]...)
		if containsLine(got, "a NO") || containsLine(got, "a BAD") {
			c.Close()
			return nil, fmt.Errorf("login refused: %q", got)
		}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// containsLine reports whether a line of b starts with prefix.
func containsLine(b []byte, prefix string) bool {
	for _, l := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(prefix)) {
			return true
		}
	}
	return false
}

// processCPU is the CPU time (user and system) process pid has used, from
// /proc/PID/stat (Linux; clock ticks of USER_HZ, 100 on every Linux).
func processCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("the relay's CPU time: %w", err)
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// the fields counted from after its closing one.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("the relay's CPU time: unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("the relay's CPU time: unexpected /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("the relay's CPU time: unexpected /proc/%d/stat", pid)
	}
	const userHZ = 100
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}
