package delivery

import (
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/graph"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// graphDelivery is testAccount's Graph delivery against the fake's Graph.
func (w *world) graphDelivery(t *testing.T) *Graph {
	c := graph.New(graph.Options{URL: w.fake.GraphURL, Mailbox: testMailbox, HTTPClient: w.fake.HTTPClient(), Logger: testLogger(t)})
	t.Cleanup(c.CloseIdle)
	return NewGraph(GraphOptions{Account: testAccount, Client: c, Tokens: testutil.NewGraphTokens(w.fake.TokenURL, testClientID, testSecret, w.fake.HTTPClient()), URL: w.fake.GraphURL,
		SaveToSentItems: true, TempDir: t.TempDir(), Logger: testLogger(t), Observer: w.obs})
}

// sendVia sends one small message through d as the front end does.
func sendVia(t *testing.T, w *world, d Delivery) *Accepted {
	t.Helper()
	tx, err := d.Begin(testCtx(t), w.cred, testMailbox, nil)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := tx.Rcpt("customer@example.net", nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	acc, err := tx.Data(strings.NewReader("From: " + testMailbox + "\r\nTo: customer@example.net\r\nSubject: auto\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatalf("Data: %v", err)
	}
	return acc
}

// Auto moves to Graph when Exchange answers 535 5.7.139, stays there (no
// SMTP login per message) until the hourly probe, and moves back to SMTP
// when the probe's login works again.
func TestAutoProbesSMTPAgain(t *testing.T) {
	w := newWorld(t)
	auto := NewAuto(testAccount, w.direct, w.graphDelivery(t), testLogger(t))
	now := time.Now()
	auto.now = func() time.Time { return now }
	w.fake.SetTenantSMTPAuthDisabled(true)
	if err := auto.Ready(testCtx(t), w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if st := auto.State(); !st.Graph || !st.NextProbe.Equal(now.Add(autoProbeInterval)) {
		t.Fatalf("state %+v", st)
	}
	sendVia(t, w, auto)
	w.fake.SetTenantSMTPAuthDisabled(false)
	dials := w.dials.Load()
	sendVia(t, w, auto) // before the probe: Graph, no SMTP login
	if n := len(w.fake.GraphMessages()); n != 2 || w.dials.Load() != dials {
		t.Fatalf("%d Graph messages, %d new SMTP dials", n, w.dials.Load()-dials)
	}
	now = now.Add(autoProbeInterval)
	sendVia(t, w, auto) // the probe: SMTP works again
	if n := len(w.fake.Messages()); n != 1 || auto.State().Graph {
		t.Fatalf("%d SMTP messages after the probe, state %+v", n, auto.State())
	}
}

// The Graph pace: the sliding window's places, a request in flight
// holding its place, and a waiter let through when the oldest ages out on
// the pace's clock.
func TestGraphPace(t *testing.T) {
	clk := newTestClock()
	p := &graphPace{clock: clk, limit: 3, w: window{span: graphWindow}, changed: make(chan struct{})}
	ctx := testCtx(t)
	for range 3 {
		done, err := p.Take(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	got := make(chan error, 1)
	go func() {
		done, err := p.Take(ctx)
		if err == nil {
			done()
		}
		got <- err
	}()
	// The fourth waits for the window on the clock: one timer armed.
	deadline := time.Now().Add(testLimit)
	for clk.pending() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-got:
		t.Fatalf("the fourth request went at once: %v", err)
	default:
	}
	clk.advance(graphWindow)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}
