package delivery

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

var _ SharedLimits = (*cluster.Store)(nil)

// clusterWorld is one Sender of testMailbox per relay instance, each
// counting its limits with the others in a redis-server, in front of one
// fake that keeps Exchange's limits, all on one test clock.
type clusterWorld struct {
	fake    *fakems.Server
	redis   *testutil.Redis
	clock   *testClock
	senders []*Sender
	directs []*Direct
	cred    *fakeCreds
}

func newClusterWorld(t *testing.T, n int, l config.Limits, fo fakems.Options) *clusterWorld {
	t.Helper()
	w := &clusterWorld{redis: testutil.StartRedis(t), clock: newTestClock()}
	fo.SMTPLimits, fo.Clock = true, w.clock
	fake := startFake(t, testCtx(t), fo)
	w.fake, w.cred = fake, &fakeCreds{fake: fake, mailbox: testMailbox}
	tgt := upstream.Target{
		Account: testAccount,
		Server:  config.Upstream{Addr: fake.SMTPAddr, TLS: config.TLSStartTLS},
		TLS:     &tls.Config{RootCAs: fake.CAPool},
	}
	for i := range n {
		st, err := cluster.Open(config.Cluster{Store: w.redis.URL, Instance: fmt.Sprintf("relay-%d", i)},
			testLogger(t), cluster.Options{Now: w.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() }) // after the Sender (cleanups run last first)
		s := NewSender(tgt, SenderOptions{Limits: l, Clock: w.clock, Logger: testLogger(t), Shared: st})
		st.Join()
		d := NewDirect(testAccount, s, nil)
		t.Cleanup(d.Close)
		w.senders, w.directs = append(w.senders, s), append(w.directs, d)
	}
	return w
}

// waitAll waits until cond holds for every instance's Sender.
func (w *clusterWorld) waitAll(t *testing.T, what string, cond func(Stats) bool) {
	t.Helper()
	for i, s := range w.senders {
		pollStats(t, s, fmt.Sprintf("relay-%d: %s", i, what), cond)
	}
}

// pollStats waits until cond holds for s's Stats, asking every 20 ms: what
// the store says changes without a word to the Sender (waitStats waits for
// one).
func pollStats(t *testing.T, s *Sender, what string, cond func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(testLimit)
	for {
		st := s.Stats()
		if cond(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within %v; stats %+v", what, testLimit, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rcpts returns n recipient addresses, distinct across calls.
func (w *clusterWorld) rcpts(n int) []string {
	var out []string
	for range n {
		out = append(out, fmt.Sprintf("r%d@example.net", len(w.fake.Messages())*100+len(out)))
	}
	return out
}

// Three instances share a mailbox's 12 recipients a day: 6 counted
// together; the store lost, each keeps a third of the 6 left (2) on its
// own, and together they reach 12, never more; the store back empty
// (restarted), each registers its day again and the day is full for every
// instance. The fake never had to refuse one.
func TestSharedRecipientsPerDay(t *testing.T) {
	w := newClusterWorld(t, 3, limits(func(l *config.Limits) { l.RecipientsPerDay = 12 }), fakems.Options{RecipientsPerDay: 12})
	ctx := testCtx(t)

	// Open transactions on two instances hold their places in the
	// store: together they cannot pass the limit.
	tx0, tx1, tx2 := begin(t, ctx, w.directs[0], w.cred), begin(t, ctx, w.directs[1], w.cred), begin(t, ctx, w.directs[2], w.cred)
	for range 6 {
		if err := tx0.Rcpt(w.rcpts(1)[0], nil); err != nil {
			t.Fatalf("Rcpt: %v", err)
		}
	}
	for range 6 {
		if err := tx1.Rcpt(w.rcpts(1)[0]+"x", nil); err != nil {
			t.Fatalf("Rcpt: %v", err)
		}
	}
	wantReply(t, tx2.Rcpt("late@example.net", nil), 451, smtp.EnhancedCode{4, 7, 0},
		"invoices@contoso.com reached its daily recipient limit (12 recipients in 24 hours); it frees at 2024-03-02 09:01 UTC; try again then")
	for _, tx := range []Tx{tx0, tx1, tx2} {
		tx.Abort()
	}
	w.waitAll(t, "the places given back", func(st Stats) bool { return st.SharedRecipientsToday == 0 })

	for i, d := range w.directs {
		sendTo(t, begin(t, ctx, d, w.cred), w.rcpts(2)...)
		if st := w.senders[i].Stats(); st.RecipientsToday != 2 {
			t.Fatalf("relay-%d counted %d recipients itself, want 2", i, st.RecipientsToday)
		}
	}
	w.waitAll(t, "the store counts 6", func(st Stats) bool { return st.SharedDayKnown && st.SharedRecipientsToday == 6 })

	w.redis.Stop()
	w.waitAll(t, "a safe share of 2 recipients", func(st Stats) bool { return st.SafeShare && st.SafeShareRecipients == 2 })
	w.clock.advance(2 * time.Minute) // the pace's grace
	for _, d := range w.directs {
		sendTo(t, begin(t, ctx, d, w.cred), w.rcpts(2)...)
	}
	// The share used up: the next message is refused at once; the share
	// is renewed a day after the loss at the latest.
	_, err := w.directs[0].Begin(ctx, w.cred, testMailbox, nil)
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0},
		"invoices@contoso.com reached its daily recipient limit (12 recipients in 24 hours); it frees at 2024-03-02 09:00 UTC; try again then")

	w.redis.Start() // empty: it kept nothing
	w.waitAll(t, "the store counts 12 again", func(st Stats) bool {
		return !st.SafeShare && st.SharedDayKnown && st.SharedRecipientsToday == 12
	})
	for i, d := range w.directs {
		_, err := d.Begin(ctx, w.cred, testMailbox, nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0}, "invoices@contoso.com reached its daily recipient limit "+
			"(12 recipients in 24 hours); it frees at 2024-03-02 09:01 UTC; try again then")
		if st := w.senders[i].Stats(); st.RecipientsToday != 4 {
			t.Errorf("relay-%d counted %d itself, want 4", i, st.RecipientsToday)
		}
	}
	var rcpts int
	for _, m := range w.fake.Messages() {
		rcpts += len(m.To)
	}
	if l := w.fake.LimitReplies(); rcpts != 12 || l.Total() != 0 {
		t.Fatalf("the fake took %d recipients and refused %+v; want 12 and none", rcpts, l)
	}
}

// Exchange's quota reply to one instance blocks the day for the others:
// their next message is refused by the relay at once, without going
// upstream, until the block ends.
func TestSharedQuotaReply(t *testing.T) {
	w := newClusterWorld(t, 2, config.Limits{}, fakems.Options{RecipientsPerDay: 3})
	ctx := testCtx(t)
	for range 3 {
		sendTo(t, begin(t, ctx, w.directs[0], w.cred), w.rcpts(1)...)
	}
	pollStats(t, w.senders[1], "relay-1 sees relay-0's 3", func(st Stats) bool { return st.SharedRecipientsToday == 3 })
	tx := begin(t, ctx, w.directs[0], w.cred)
	if err := tx.Rcpt("fourth@example.net", nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	_, err := tx.Data(strings.NewReader(testMessage))
	if se := (*smtp.SMTPError)(nil); !errors.As(err, &se) || se.Code != 554 || classify(se) != limitQuota {
		t.Fatalf("Data past the fake's quota: %v, want its 554 5.2.0 quota reply", err)
	}
	until := w.clock.Now().Add(dayWindow)
	pollStats(t, w.senders[1], "relay-1 hears of the block", func(st Stats) bool { return st.QuotaBlockedUntil.Equal(until) })
	_, err = w.directs[1].Begin(ctx, w.cred, testMailbox, nil)
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0}, "invoices@contoso.com reached its daily recipient limit "+
		"(10000 recipients in 24 hours); it frees at 2024-03-02 09:00 UTC; try again then")
	if l := w.fake.LimitReplies(); l.Quota != 1 || l.Total() != 1 {
		t.Fatalf("the fake's limit replies %+v, want the one quota reply", l)
	}
}
