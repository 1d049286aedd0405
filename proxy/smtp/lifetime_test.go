package smtp

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// endHold is how long the test log handler holds a connection goroutine
// in its last log line: long enough that a Close which does not wait for
// the connection goroutines returns while they are still running.
const endHold = 200 * time.Millisecond

// slowEnd delays the "client connection ended" record, which the
// connection's own goroutine logs after its socket was closed.
type slowEnd struct{ slog.Handler }

func (h slowEnd) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "client connection ended" {
		time.Sleep(endHold)
	}
	return h.Handler.Handle(ctx, r)
}

func (h slowEnd) WithAttrs(as []slog.Attr) slog.Handler { return slowEnd{h.Handler.WithAttrs(as)} }
func (h slowEnd) WithGroup(n string) slog.Handler       { return slowEnd{h.Handler.WithGroup(n)} }

// connGoroutines counts the goroutines go-smtp runs for the relay's
// connections, now, without waiting for any to end (the tests of this
// package do not run in parallel).
func connGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "go-smtp.(*Server).Serve.func") && strings.Contains(g, "oauthrelay/proxy/smtp.") {
			count++
		}
	}
	return count
}

// TestCloseJoinsConnections: when Close returns, every connection
// goroutine has, on both go-smtp servers of a STARTTLS listener (before and
// after the upgrade), whether the session was idle or in a transaction.
// go-smtp's own Close does not wait for them.
func TestCloseJoinsConnections(t *testing.T) {
	w := newWorld(t, worldOptions{listenTLS: "starttls", wrapLog: func(h slog.Handler) slog.Handler { return slowEnd{h} }})
	const clients = 4
	for i := range clients {
		var c *smtp.Client
		var err error
		if i%2 == 0 {
			c, err = smtp.DialStartTLS(w.addr, w.cert.ClientTLS())
		} else {
			c, err = smtp.Dial(w.addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Hello("app.test"); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			// Over TLS: a transaction open at Close.
			if err := c.Auth(gosasl.NewPlainClient("", username, password)); err != nil {
				t.Fatal(err)
			}
			if err := c.Mail(mailbox, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// At least one each (a STARTTLS connection's first goroutine may still
	// be ending after the upgrade).
	if n := connGoroutines(); n < clients {
		t.Fatalf("%d connection goroutines before Close, want %d or more", n, clients)
	}
	if err := w.srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if n := connGoroutines(); n != 0 {
		t.Errorf("%d connection goroutines still running after Close returned", n)
	}
}
