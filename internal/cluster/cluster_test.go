package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, r *testutil.Redis, name string) *Store {
	t.Helper()
	s, err := Open(config.Cluster{Store: r.URL, Instance: name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Join()
	t.Cleanup(func() { s.Close() })
	return s
}

// Three instances asking for one mailbox's connections at once get 3 in
// total; a slot released is taken by the next, and one whose holder
// stopped renewing it (an instance that died) frees at its lease's end.
func TestConnectionSemaphore(t *testing.T) {
	r := testutil.StartRedis(t)
	stores := []*Store{open(t, r, "a"), open(t, r, "b"), open(t, r, "c")}
	ctx := context.Background()
	var got atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slots []string
	for i := range 30 {
		wg.Go(func() {
			h, ok, err := stores[i%3].TakeConnection(ctx, "A@x", 3)
			if err != nil {
				t.Error(err)
			}
			if ok {
				got.Add(1)
				mu.Lock()
				slots = append(slots, h)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got.Load() != 3 {
		t.Fatalf("%d slots taken of 3", got.Load())
	}
	if _, ok, _ := stores[0].TakeConnection(ctx, "a@x", 3); ok {
		t.Fatal("a 4th slot (the key ignores case)")
	}
	stores[0].ReleaseConnection("a@x", slots[0])
	if _, ok, _ := stores[1].TakeConnection(ctx, "a@x", 3); !ok {
		t.Fatal("a released slot was not free")
	}

	// A dead instance's slot: d takes one with a short lease and never
	// renews it (its heartbeat is stopped by closing only the loop).
	d, err := Open(config.Cluster{Store: r.URL, Instance: "d"}, nil, Options{Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d.Join()
	t.Cleanup(func() { d.Close() })
	if _, ok, _ := d.TakeConnection(ctx, "dead@x", 1); !ok {
		t.Fatal("d got no slot")
	}
	if _, ok, _ := stores[0].TakeConnection(ctx, "dead@x", 1); ok {
		t.Fatal("slot free while d holds it")
	}
	d.mu.Lock()
	d.held = map[string]map[string]bool{} // d "dies": nothing renews it
	d.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok, _ := stores[0].TakeConnection(ctx, "dead@x", 1); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a dead holder's slot never freed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The shared pace admits limit messages in a window across instances and
// says when the next slot frees; a refunded slot is free at once, a sent
// one a window after it was sent.
func TestPace(t *testing.T) {
	r := testutil.StartRedis(t)
	a, b := open(t, r, "a"), open(t, r, "b")
	ctx := context.Background()
	now := time.UnixMilli(1_000_000_000_000)
	var ids []string
	for i := range 4 {
		s := []*Store{a, b}[i%2]
		id, ok, _, err := s.TakePace(ctx, "m@x", 4, now, time.Minute)
		if err != nil || !ok {
			t.Fatalf("take %d: %v %v", i, ok, err)
		}
		ids = append(ids, id)
	}
	if _, ok, _, _ := b.TakePace(ctx, "m@x", 4, now, time.Minute); ok {
		t.Fatal("a 5th message in the window")
	}
	a.RefundPace("m@x", ids[0])
	if _, ok, _, _ := b.TakePace(ctx, "m@x", 4, now, time.Minute); !ok {
		t.Fatal("a refunded slot was not free")
	}
	for _, id := range ids[1:] {
		a.PaceSent("m@x", id, now, time.Minute)
	}
	_, ok, free, _ := a.TakePace(ctx, "m@x", 4, now.Add(time.Second), time.Minute)
	if ok || !free.Equal(now.Add(time.Minute)) {
		t.Fatalf("full: ok %v free %v, want %v", ok, free, now.Add(time.Minute))
	}
	if _, ok, _, _ := a.TakePace(ctx, "m@x", 4, now.Add(time.Minute), time.Minute); !ok {
		t.Fatal("no slot a window after the sends")
	}
	if err := a.AddPace(ctx, "n@x", []time.Time{now, now}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, ok, _, _ := a.TakePace(ctx, "n@x", 2, now, time.Minute); ok {
		t.Fatal("messages added after an outage did not count")
	}
}

// A store that stops is noticed by the next call (Healthy false, Changed
// closed) and one that comes back by the heartbeat.
func TestDownAndBack(t *testing.T) {
	r := testutil.StartRedis(t)
	a := open(t, r, "a")
	ctx := context.Background()
	if err := a.Ping(ctx); err != nil || !a.Healthy() {
		t.Fatal(err)
	}
	ch := a.Changed()
	r.Stop()
	if _, _, err := a.TakeConnection(ctx, "m@x", 3); err == nil {
		t.Fatal("no error from a stopped store")
	}
	<-ch
	if a.Healthy() {
		t.Fatal("healthy with the store stopped")
	}
	ch = a.Changed()
	r.Start()
	select {
	case <-ch:
	case <-time.After(3 * heartbeatEvery):
		t.Fatal("the heartbeat did not notice the store back")
	}
	if !a.Healthy() {
		t.Fatal("not healthy after the store came back")
	}
}

// The instance count behind the safe share grows at once and shrinks
// only after a lease: a store that restarted empty first counts only the
// instances that have beaten since.
func TestInstancesShrinkSlowly(t *testing.T) {
	s := &Store{lease: time.Minute}
	s.instances.Store(1)
	t0 := time.Now()
	s.seen(3, t0)
	s.seen(1, t0.Add(time.Second))
	if n := s.Instances(); n != 3 {
		t.Fatalf("instances %d right after a drop, want 3", n)
	}
	s.seen(1, t0.Add(time.Minute+time.Second))
	if n := s.Instances(); n != 1 {
		t.Fatalf("instances %d a lease after the drop, want 1", n)
	}
}

// An instance that starts again under its name frees the connection slots
// its previous life died holding, without waiting for their leases.
func TestRestartFreesPreviousLife(t *testing.T) {
	r := testutil.StartRedis(t)
	ctx := context.Background()
	old := open(t, r, "a")
	if _, ok, _ := old.TakeConnection(ctx, "m@x", 1); !ok {
		t.Fatal("no slot")
	}
	open(t, r, "a") // the new life joins
	other := open(t, r, "b")
	if _, ok, _ := other.TakeConnection(ctx, "m@x", 1); !ok {
		t.Fatal("the previous life's slot is still held")
	}
}

// A live instance's heartbeat renews every slot it holds, in one round
// trip: held past several leases, none frees.
func TestLeasesRenewed(t *testing.T) {
	r := testutil.StartRedis(t)
	ctx := context.Background()
	a, err := Open(config.Cluster{Store: r.URL, Instance: "a"}, nil, Options{Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a.Join()
	t.Cleanup(func() { a.Close() })
	for _, m := range []string{"m1@x", "m2@x", "m3@x"} {
		if _, ok, _ := a.TakeConnection(ctx, m, 1); !ok {
			t.Fatal("no slot")
		}
	}
	time.Sleep(4 * a.lease)
	b := open(t, r, "b")
	for _, m := range []string{"m1@x", "m2@x", "m3@x"} {
		if _, ok, _ := b.TakeConnection(ctx, m, 1); ok {
			t.Fatalf("a's slot of %s freed while a was alive", m)
		}
	}
}

// A caller that gives up does not make the store look lost: the call is
// bounded by its own timeout only.
func TestCallerGivingUpIsNotTheStore(t *testing.T) {
	r := testutil.StartRedis(t)
	a := open(t, r, "a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok, err := a.TakeConnection(ctx, "m@x", 1); !ok || err != nil {
		t.Fatalf("take with a cancelled context: %v %v", ok, err)
	}
	if ok, _, err := a.TakeRecipient(ctx, "m@x", 10, time.Now()); !ok || err != nil || !a.Healthy() {
		t.Fatalf("take a recipient with a cancelled context: %v %v, healthy %v", ok, err, a.Healthy())
	}
}
