package delivery

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// benchFake starts the fake (keeping no message data) and returns a
// target straight to it and credentials for the mailbox.
func benchFake(b *testing.B) (upstream.Target, *fakeCreds) {
	b.Helper()
	fake := startFake(b, context.Background(), fakems.Options{DiscardData: true})
	tgt := upstream.Target{
		Account: testAccount,
		Server:  config.Upstream{Addr: fake.SMTPAddr, TLS: config.TLSStartTLS},
		TLS:     &tls.Config{RootCAs: fake.CAPool, ClientSessionCache: tls.NewLRUClientSessionCache(8)},
	}
	return tgt, &fakeCreds{fake: fake, mailbox: testMailbox}
}

// sendOne relays testMessage through d.
func sendOne(ctx context.Context, d Delivery, cred upstream.Credentials) error {
	tx, err := d.Begin(ctx, cred, testMailbox, nil)
	if err != nil {
		return err
	}
	if err := tx.Rcpt(recipient, nil); err != nil {
		tx.Abort()
		return err
	}
	_, err = tx.Data(strings.NewReader(testMessage))
	return err
}

// One message at a time through the pool, which reuses its session (RSET
// between messages), against one that logs in for every message (max
// session age 0), as the relay did for an app that connects per message
// before the pool: the cost the pool saves, on loopback (over the
// internet each login adds several round trips more).
func BenchmarkMessage(b *testing.B) {
	for _, c := range []struct {
		name   string
		maxAge time.Duration
	}{{"pooled", maxSessionAge}, {"login-each", 0}} {
		b.Run(c.name, func(b *testing.B) {
			tgt, cred := benchFake(b)
			s := NewSender(tgt, SenderOptions{Limits: limits(func(l *config.Limits) { l.MessagesPerMinute = 1 << 30; l.RecipientsPerDay = 1 << 30 })})
			s.maxAge = c.maxAge
			d := NewDirect(testAccount, s, nil)
			b.Cleanup(d.Close)
			ctx := context.Background()
			for b.Loop() {
				if err := sendOne(ctx, d, cred); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A burst of 300 messages from 20 concurrent senders against 30 messages
// a minute and 3 connections, on a clock 600 times as fast as real time:
// every message waits its turn (max_wait an hour) and none is refused.
// drain/min is the time from the first message to the last against the
// least the pace allows (nine minutes: 30 at once, then 30 a minute), on
// the Sender's clock; refused/op the messages turned away.
func BenchmarkBurstPace(b *testing.B) {
	const (
		messages = 300
		senders  = 20
		speed    = 600
	)
	tgt, cred := benchFake(b)
	minimum := time.Duration((messages+29)/30-1) * paceWindow
	var ratio float64
	var refused atomic.Int64
	for b.Loop() {
		clock := NewScaledClock(speed)
		s := NewSender(tgt, SenderOptions{Clock: clock, Limits: limits(func(l *config.Limits) { l.MaxWait = time.Hour })})
		d := NewDirect(testAccount, s, nil)
		var next atomic.Int64
		var wg sync.WaitGroup
		start := clock.Now()
		var lastMu sync.Mutex
		var last time.Time
		for range senders {
			wg.Go(func() {
				for next.Add(1) <= messages {
					if err := sendOne(context.Background(), d, cred); err != nil {
						refused.Add(1)
						continue
					}
					lastMu.Lock()
					last = later(last, clock.Now())
					lastMu.Unlock()
				}
			})
		}
		wg.Wait()
		d.Close()
		ratio += float64(last.Sub(start)) / float64(minimum)
	}
	b.ReportMetric(ratio/float64(b.N), "drain/min")
	b.ReportMetric(float64(refused.Load())/float64(b.N), "refused/op")
}
