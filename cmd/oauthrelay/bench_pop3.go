package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// The POP3 bench's own mailbox and local user: the IMAP bench fills the demo
// mailbox's INBOX, which is POP3's maildrop too, so each measures its own.
const (
	pop3Mailbox = "mailroom@contoso.com"
	pop3User    = "mailroom"
	// pop3MessageSize is the size of each message of the bench's maildrop.
	pop3MessageSize = 1 << 20
	// pop3BenchTimeout bounds each exchange of the bench's POP3 client.
	pop3BenchTimeout = 60 * time.Second
)

// pop3Account is the relay account of the POP3 bench, appended to the
// bench relay's configuration (hash is the bcrypt hash of demoPassword).
func pop3Account(hash string) string {
	return fmt.Sprintf("  - {name: mailroom, provider: fake365, mailbox: %q, username: %q, password_hash: %q}\n",
		pop3Mailbox, pop3User, hash)
}

// pop3Bench measures the POP3 proxy against a direct connection to the same
// fake Exchange: RETR throughput of a 100 MB maildrop, login latency with a
// cached token, and the relay's resident memory per idle logged-in session.
type pop3Bench struct {
	fw    *fakeWorld
	rp    *relayProcess
	token string
	p     func(format string, a ...any)
	// fresh starts another relay like rp, for the idle memory (idleRSS).
	fresh func(context.Context) (*relayProcess, error)
}

func (b *pop3Bench) run(ctx context.Context, quick bool) error {
	msgs, conns, logins := 100, 2000, 300
	if quick {
		msgs, conns, logins = 10, 200, 50
	}
	b.fw.ms.AddMailbox(pop3Mailbox, "not-used-with-oauth")
	b.fw.ms.GrantApp(demoClientID, pop3Mailbox)
	msg := body(pop3MessageSize)
	for range msgs {
		if err := b.fw.ms.AppendIMAP(pop3Mailbox, "INBOX", msg); err != nil {
			return err
		}
	}
	dial := func(relay bool) func() (*pop3Conn, error) {
		if relay {
			return b.dialRelay
		}
		return b.dialDirect
	}
	a, err := alternate(b.rp.cmd.Process.Pid,
		func(relay bool) (time.Duration, error) { return b.retrAll(ctx, dial(relay), msgs) },
		func(relay bool) ([]time.Duration, error) { return b.loginLatency(ctx, dial(relay), logins/benchRounds) })
	if err != nil {
		return fmt.Errorf("POP3: %w", err)
	}
	a.report(b.p, "POP3", "POP3 RETR", msgs, float64(msgs*len(msg)), 0.95, 0)
	per, err := idleRSS(ctx, b.fresh, conns, func(rp *relayProcess) (io.Closer, error) {
		pc, err := dialPOP3Relay(rp.pop3Addr)
		if err != nil {
			return nil, err
		}
		return pc.c, nil
	})
	if err != nil {
		return fmt.Errorf("idle sessions: %w", err)
	}
	b.p("POP3 idle logged-in sessions: %d open, relay RSS %.1f KiB each", conns, per/1024)
	return nil
}

// pop3Conn is the bench's POP3 client: a connection in the TRANSACTION
// state.
type pop3Conn struct {
	c  net.Conn
	br *bufio.Reader
}

// dialDirect logs in to the fake Exchange with AUTH XOAUTH2 over TLS, as an
// app that speaks OAuth itself would.
func (b *pop3Bench) dialDirect() (*pop3Conn, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: pop3BenchTimeout}, "tcp", b.fw.ms.POP3Addr, b.fw.ms.ClientTLSConfig())
	if err != nil {
		return nil, err
	}
	pc := newPOP3Conn(c)
	resp := base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(pop3Mailbox, b.token))
	if err := pc.login("AUTH XOAUTH2", resp); err != nil {
		c.Close()
		return nil, err
	}
	return pc, nil
}

// dialRelay logs in to the relay with USER/PASS, as the legacy app does.
func (b *pop3Bench) dialRelay() (*pop3Conn, error) { return dialPOP3Relay(b.rp.pop3Addr) }

// dialPOP3Relay logs in to the relay's POP3 listener at addr with USER and
// PASS, as the legacy app does.
func dialPOP3Relay(addr string) (*pop3Conn, error) {
	c, err := net.DialTimeout("tcp", addr, pop3BenchTimeout)
	if err != nil {
		return nil, err
	}
	pc := newPOP3Conn(c)
	if err := pc.login("USER "+pop3User, "PASS "+demoPassword); err != nil {
		c.Close()
		return nil, err
	}
	return pc, nil
}

func newPOP3Conn(c net.Conn) *pop3Conn {
	c.SetDeadline(time.Now().Add(pop3BenchTimeout))
	return &pop3Conn{c: c, br: bufio.NewReaderSize(c, 64<<10)}
}

// login reads the greeting and sends the two lines of a login (USER and
// PASS, or AUTH and its response after "+"), each answered by one line.
func (pc *pop3Conn) login(first, second string) error {
	if err := pc.status(); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	for _, l := range []string{first, second} {
		if _, err := io.WriteString(pc.c, l+"\r\n"); err != nil {
			return err
		}
		if err := pc.status(); err != nil {
			return fmt.Errorf("login: %w", err)
		}
	}
	pc.c.SetDeadline(time.Time{})
	return nil
}

// status reads a status line: +OK or a "+" continuation, else an error.
func (pc *pop3Conn) status() error {
	l, err := pc.br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(l, "+") {
		return fmt.Errorf("server said %q", strings.TrimSpace(l))
	}
	return nil
}

// retr runs RETR n and reads the message to its terminating line.
func (pc *pop3Conn) retr(n int) (int64, error) {
	pc.c.SetDeadline(time.Now().Add(pop3BenchTimeout))
	if _, err := io.WriteString(pc.c, "RETR "+strconv.Itoa(n)+"\r\n"); err != nil {
		return 0, err
	}
	if err := pc.status(); err != nil {
		return 0, err
	}
	var size int64
	for {
		l, err := pc.br.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return size, err
		}
		if string(l) == ".\r\n" {
			return size, nil
		}
		size += int64(len(l))
	}
}

func (pc *pop3Conn) close() {
	io.WriteString(pc.c, "QUIT\r\n")
	pc.c.Close()
}

// retrAll RETRs every message of the maildrop and returns the time taken.
func (b *pop3Bench) retrAll(ctx context.Context, dial func() (*pop3Conn, error), msgs int) (time.Duration, error) {
	pc, err := dial()
	if err != nil {
		return 0, err
	}
	defer pc.close()
	start := time.Now()
	for i := 1; i <= msgs && ctx.Err() == nil; i++ {
		if _, err := pc.retr(i); err != nil {
			return 0, fmt.Errorf("RETR %d: %w", i, err)
		}
	}
	return time.Since(start), ctx.Err()
}

// loginLatency returns the durations of n sequential connect+login.
func (b *pop3Bench) loginLatency(ctx context.Context, dial func() (*pop3Conn, error), n int) ([]time.Duration, error) {
	var d []time.Duration
	for i := 0; i < n && ctx.Err() == nil; i++ {
		start := time.Now()
		pc, err := dial()
		if err != nil {
			return nil, err
		}
		d = append(d, time.Since(start))
		pc.close()
	}
	return d, nil
}
