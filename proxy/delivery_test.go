package proxy

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// TestExpireFailedQueue: the relay removes failed queued messages older
// than queue.keep_failed and keeps the younger ones and the active queue.
func TestExpireFailedQueue(t *testing.T) {
	r := testRelay(t, `
  - name: q
    provider: p
    mailbox: q@contoso.com
    username: q
    password_hash: "`+hash(t, "pw")+`"
    delivery: queue
queue: {keep_failed: 1h}
`)
	dir := filepath.Join(r.Config().StateDir, "queue")
	sp, _, err := spool.Open(dir, spool.Options{Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	env := spool.Envelope{Account: "other", Mailbox: "q@contoso.com", From: "q@contoso.com",
		Recipients: []spool.Recipient{{Addr: "x@example.net"}}, NextAttempt: time.Now().Add(time.Hour)}
	old, err := sp.Create(context.Background(), env, strings.NewReader("Subject: old\r\n\r\nx\r\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Fail(old.ID, "test"); err != nil {
		t.Fatal(err)
	}
	active, err := sp.Create(context.Background(), env, strings.NewReader("Subject: active\r\n\r\nx\r\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	sp.Close()

	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); r.Run(ctx) }()
	// Run removes expired failed messages at once, then hourly.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.spoolForTest().Get(old.ID); errors.Is(err, spool.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed message older than keep_failed was not removed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := r.spoolForTest().Get(active.ID); err != nil {
		t.Errorf("the active message went too: %v", err)
	}
	cancel()
	<-ran
}

func (r *Relay) spoolForTest() *spool.Spool {
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	return r.spool
}

// TestQueueWorkerStartsWithRun: a relay that is only built (as `oauthrelay
// check` builds one) leaves queued mail alone; Run starts the worker.
func TestQueueWorkerStartsWithRun(t *testing.T) {
	r := testRelay(t, `
  - name: q
    provider: p
    mailbox: q@contoso.com
    username: q
    password_hash: "`+hash(t, "pw")+`"
    delivery: queue
`)
	sp, _, err := spool.Open(filepath.Join(r.Config().StateDir, "queue"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	env, err := sp.Create(context.Background(), spool.Envelope{Account: "q", Mailbox: "q@contoso.com", From: "q@contoso.com",
		Recipients: []spool.Recipient{{Addr: "x@example.net"}}}, strings.NewReader("Subject: x\r\n\r\nx\r\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // a worker started by NewRelay would have tried it by now
	if got, err := sp.Get(env.ID); err != nil || got.Attempts != 0 {
		t.Fatalf("the message was attempted before Run: %+v, %v", got, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); r.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, err := sp.Get(env.ID); err == nil && got.Attempts > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not start the queue's worker")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-ran
}
