package fakems

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// endHold is how long the test log handler holds an IMAP connection's
// goroutine in its last log line: long enough that a Close which does not
// wait for the connection goroutines returns while they are still running.
const endHold = 200 * time.Millisecond

// slowEnd delays the "imap: session ended" record, which go-imap's
// connection goroutine logs (through the session's Close) as it ends.
type slowEnd struct{ slog.Handler }

func (h slowEnd) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "imap: session ended" {
		time.Sleep(endHold)
	}
	return h.Handler.Handle(ctx, r)
}

func (h slowEnd) WithAttrs(as []slog.Attr) slog.Handler { return slowEnd{h.Handler.WithAttrs(as)} }
func (h slowEnd) WithGroup(n string) slog.Handler       { return slowEnd{h.Handler.WithGroup(n)} }

// connGoroutines counts the goroutines go-smtp and go-imap run for the
// fake's connections, now, without waiting for any to end. The test that
// calls it is not parallel, so no other fake runs meanwhile.
func connGoroutines() (smtpConns, imapConns int) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		switch {
		case strings.Contains(g, "go-smtp.(*Server).Serve.func") && strings.Contains(g, "internal/fakems."):
			smtpConns++
		case strings.Contains(g, "imapserver.(*Conn).serve"):
			imapConns++
		}
	}
	return smtpConns, imapConns
}

// TestCloseJoinsConnections: when Close returns, the goroutines of every
// SMTP and IMAP connection have returned too (go-smtp's and go-imap's own
// Close do not wait for them), the IMAP ones logged in and in IDLE.
func TestCloseJoinsConnections(t *testing.T) {
	s := newWorldLog(t, Options{}, func(h slog.Handler) slog.Handler { return slowEnd{h} })
	tok, err := daemonConfig(s).Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	const clients = 3
	for range clients {
		dialSMTP(t, s)
		c := dialIMAP(t, s)
		if err := c.Authenticate(sasl.NewXOAuth2Client(alice, tok.AccessToken)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Idle(); err != nil {
			t.Fatal(err)
		}
	}
	if sc, ic := connGoroutines(); sc != clients || ic != clients {
		t.Fatalf("before Close: %d SMTP and %d IMAP connection goroutines, want %d each", sc, ic, clients)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if sc, ic := connGoroutines(); sc != 0 || ic != 0 {
		t.Errorf("after Close returned: %d SMTP and %d IMAP connection goroutines still running", sc, ic)
	}
}
