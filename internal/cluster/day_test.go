package cluster

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// openAt is open with the limits' clock at now().
func openAt(t *testing.T, r *testutil.Redis, name string, now func() time.Time) *Store {
	t.Helper()
	s, err := Open(config.Cluster{Store: r.URL, Instance: name}, nil, Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	s.Join()
	t.Cleanup(func() { s.Close() })
	return s
}

// Three instances taking one mailbox's recipients at once get the limit
// in total; a released place is free again, a sent one counts from the
// minute it was sent in, and the day frees when the oldest minute is a
// day old (the minute's end: never early).
func TestDayShared(t *testing.T) {
	r := testutil.StartRedis(t)
	t0 := time.Date(2024, 3, 1, 9, 0, 10, 0, time.UTC)
	now := func() time.Time { return t0 }
	stores := []*Store{openAt(t, r, "a", now), openAt(t, r, "b", now), openAt(t, r, "c", now)}
	ctx := context.Background()
	var got atomic.Int32
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			ok, _, err := stores[i%3].TakeRecipient(ctx, "M@x", 10, t0)
			if err != nil {
				t.Error(err)
			}
			if ok {
				got.Add(1)
			}
		})
	}
	wg.Wait()
	if got.Load() != 10 {
		t.Fatalf("%d recipients held of 10", got.Load())
	}
	ok, free, err := stores[0].TakeRecipient(ctx, "m@x", 10, t0)
	if wantFree := time.Date(2024, 3, 2, 9, 1, 0, 0, time.UTC); ok || err != nil || !free.Equal(wantFree) {
		t.Fatalf("an 11th: ok %v free %v err %v; want refused, free at %v (the minute's end a day later)", ok, free, err, wantFree)
	}
	waitDay(t, stores[1], "m@x", 10)

	// a gives one back (its message was refused) and sends one 5 minutes
	// later: it moves out of the first minute.
	stores[0].ReleaseRecipients("m@x", []time.Time{t0})
	if ok, _, _ := stores[1].TakeRecipient(ctx, "m@x", 10, t0); !ok {
		t.Fatal("a released place was not free")
	}
	sent := t0.Add(5 * time.Minute)
	stores[0].RecipientsSent("m@x", []time.Time{t0}, sent)
	// A day and a minute later the first minute has aged out but for
	// the one sent later.
	later := t0.Add(dayWindow + dayBucket)
	for range 9 {
		if ok, _, err := stores[2].TakeRecipient(ctx, "m@x", 10, later); !ok || err != nil {
			t.Fatalf("the first minute did not age out: %v %v", ok, err)
		}
	}
	ok, free, _ = stores[2].TakeRecipient(ctx, "m@x", 10, later)
	if wantFree := time.Date(2024, 3, 2, 9, 6, 0, 0, time.UTC); ok || !free.Equal(wantFree) {
		t.Fatalf("the one sent at +5 min: ok %v free %v, want refused until %v", ok, free, wantFree)
	}
}

// Registering an instance's day again changes nothing while the store
// holds it, and restores it after the store restarted empty; a block of
// the day (Exchange's quota reply) stops every instance's takes until it
// ends; the heartbeat keeps every instance's view of a mailbox current.
func TestDayRejoinAndBlock(t *testing.T) {
	r := testutil.StartRedis(t)
	t0 := time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := t0
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	a, b := openAt(t, r, "a", now), openAt(t, r, "b", now)
	ctx := context.Background()
	if _, _, _, known := b.Day("m@x"); known {
		t.Fatal("b knows a day nobody counted")
	}
	for range 4 {
		if ok, _, err := a.TakeRecipient(ctx, "m@x", 100, t0); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	a.RecipientsSent("m@x", []time.Time{t0, t0, t0, t0}, t0)
	day := maps.All(map[time.Time]int{t0: 4})
	for range 2 {
		if err := a.AddRecipients(ctx, "m@x", t0, day); err != nil {
			t.Fatal(err)
		}
	}
	waitDay(t, b, "m@x", 4) // b learns it from the heartbeat alone

	r.Stop()
	r.Start() // empty: no persistence
	waitDay(t, b, "m@x", 0)
	if err := a.AddRecipients(ctx, "m@x", t0, day); err != nil {
		t.Fatal(err)
	}
	waitDay(t, b, "m@x", 4)

	until := t0.Add(time.Hour)
	b.BlockDay("m@x", until, t0)
	b.BlockDay("m@x", t0.Add(time.Minute), t0) // an earlier end does not shorten it
	ok, free, err := a.TakeRecipient(ctx, "m@x", 100, t0.Add(30*time.Minute))
	if ok || err != nil || !free.Equal(until) {
		t.Fatalf("blocked day: ok %v free %v err %v, want refused until %v", ok, free, err, until)
	}
	if _, _, blocked, _ := a.Day("m@x"); !blocked.Equal(until) {
		t.Fatalf("a's view of the block: %v, want %v", blocked, until)
	}
	if ok, _, _ := a.TakeRecipient(ctx, "m@x", 100, until); !ok {
		t.Fatal("still blocked at the block's end")
	}

	// The view ages out with the limits' clock.
	mu.Lock()
	clock = t0.Add(dayWindow + dayBucket)
	mu.Unlock()
	waitDay(t, b, "m@x", 1) // the one taken at the block's end
}

// waitDay waits (bounded) until s's view of mailbox's day is n.
func waitDay(t *testing.T, s *Store, mailbox string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * heartbeatEvery)
	for {
		got, _, _, known := s.Day(mailbox)
		if known && got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's view of %s: %d (known %v), want %d", s.instance, mailbox, got, known, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Peers lists every instance alive and what it published of its queue.
func TestPeers(t *testing.T) {
	r := testutil.StartRedis(t)
	a, b := open(t, r, "a"), open(t, r, "b")
	at := time.Now()
	a.PublishQueue(func() (QueueStats, bool) { return QueueStats{Depth: 7, InFlight: 1, Oldest: at}, true })
	b.PublishQueue(func() (QueueStats, bool) { return QueueStats{}, false }) // delivery: direct
	deadline := time.Now().Add(5 * heartbeatEvery)
	for {
		ps, err := b.Peers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) == 2 && ps[0].HasQueue {
			if ps[0].Name != "a" || !ps[0].Alive || ps[0].Queue.Depth != 7 || ps[0].Queue.Stale(time.Now()) ||
				ps[1].Name != "b" || !ps[1].Alive || ps[1].HasQueue {
				t.Fatalf("peers %+v", ps)
			}
			if !ps[0].Queue.Stale(time.Now().Add(time.Minute)) {
				t.Fatal("a queue published a minute ago is not stale")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers %+v", ps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
