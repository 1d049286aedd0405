package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// probe watches a Relay's throttle through its seams: a fake clock, holds
// that are recorded instead of slept, and the real bcrypt comparison
// wrapped to count calls, their hash costs and their peak concurrency.
type probe struct {
	th *Throttle

	mu       sync.Mutex
	now      time.Time
	holds    []time.Duration
	compares int
	costs    []int
	inFlight int
	peak     int
	widen    time.Duration // sleep inside a comparison, so overlaps show
}

func newProbe(r *Relay) *probe {
	p := &probe{th: r.throttle, now: time.Unix(1_000_000, 0)}
	p.th.now = func() time.Time {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.now
	}
	p.th.sleep = func(ctx context.Context, d time.Duration) error {
		p.mu.Lock()
		p.holds = append(p.holds, d)
		p.mu.Unlock()
		return ctx.Err()
	}
	p.th.compare = func(hash, password []byte) error {
		cost, _ := bcrypt.Cost(hash)
		p.mu.Lock()
		p.compares++
		p.costs = append(p.costs, cost)
		p.inFlight++
		p.peak = max(p.peak, p.inFlight)
		widen := p.widen
		p.mu.Unlock()
		time.Sleep(widen)
		err := bcrypt.CompareHashAndPassword(hash, password)
		p.mu.Lock()
		p.inFlight--
		p.mu.Unlock()
		return err
	}
	return p
}

// counts returns the number of holds and comparisons so far.
func (p *probe) counts() (holds, compares int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.holds), p.compares
}

// lastHold is the hold recorded by the latest failure (0 if none).
func (p *probe) lastHold() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.holds) == 0 {
		return 0
	}
	return p.holds[len(p.holds)-1]
}

func (p *probe) advance(d time.Duration) {
	p.mu.Lock()
	p.now = p.now.Add(d)
	p.mu.Unlock()
}

const throttleAccounts = `
  - name: a
    provider: p
    mailbox: alice@contoso.com
    username: alice
    password_hash: "%s"
  - name: c
    provider: p
    mailbox: carol@contoso.com
    username: carol
    password_hash: "%s"
`

func throttleRelay(t testing.TB) *Relay {
	return testRelay(t, fmt.Sprintf(throttleAccounts, hash(t, "pw-a"), hash(t, "pw-c")))
}

// wantFailure fails the test unless err is a *LoginError of failure f.
func wantFailure(t *testing.T, err error, f Failure) *LoginError {
	t.Helper()
	var le *LoginError
	if !errors.As(err, &le) || le.Failure != f {
		t.Fatalf("login error %v, want %v", err, f)
	}
	return le
}

// schedule is the holds of n consecutive failures of one key.
func schedule(n int) []time.Duration {
	var s []time.Duration
	for i := range n {
		d := time.Duration(0)
		if i >= freeFailures {
			d = min(time.Second<<min(i-freeFailures, 5), maxDelay)
		}
		s = append(s, d)
	}
	return s
}

// attempt logs in and returns the error and the hold recorded meanwhile
// (0 if none).
func (p *probe) attempt(r *Relay, ctx context.Context, addr, name, pw string) (error, time.Duration) {
	before, _ := p.counts()
	_, err := r.Login(ctx, netip.MustParseAddr(addr), name, pw)
	if after, _ := p.counts(); after > before {
		return err, p.lastHold()
	}
	return err, 0
}

// TestCorrectLoginNotDelayed: other connections' failures from the same
// address, for another name or for the app's own, never hold a correct
// password (the old throttle made it wait up to 30 s before checking it).
func TestCorrectLoginNotDelayed(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "192.0.2.7"} {
		t.Run(addr, func(t *testing.T) {
			r := throttleRelay(t)
			p := newProbe(r)
			ctx := context.Background()
			key := r.throttle.keyFor(netip.MustParseAddr(addr), "alice")
			if err, _ := p.attempt(r, ctx, addr, "alice", "pw-a"); err != nil {
				t.Fatal(err)
			}
			for range 8 {
				err, _ := p.attempt(r, ctx, addr, "carol", "guess")
				wantFailure(t, err, BadCredentials)
			}
			for range 6 {
				err, _ := p.attempt(r, ctx, addr, "alice", "guess")
				wantFailure(t, err, BadCredentials)
			}
			if d := r.throttle.Delay(key); d != 8*time.Second {
				t.Fatalf("after 6 failures alice's next failure is held %v, want 8s", d)
			}
			// The memo answers: no hold, no bcrypt.
			holds, compares := p.counts()
			if err, _ := p.attempt(r, ctx, addr, "alice", "pw-a"); err != nil {
				t.Fatalf("correct login after others' failures: %v", err)
			}
			if h, c := p.counts(); h != holds || c != compares {
				t.Fatalf("correct login: %d holds, %d comparisons; want none", h-holds, c-compares)
			}
			if addr == "127.0.0.1" {
				// However long the attack on its name, the app's
				// password is answered by the memo, and (a local key)
				// its success does not restart the attacker's schedule.
				for range 20 {
					p.attempt(r, ctx, addr, "alice", "guess")
				}
				d := r.throttle.Delay(key)
				holds, compares = p.counts()
				if err, _ := p.attempt(r, ctx, addr, "alice", "pw-a"); err != nil {
					t.Fatalf("correct login under attack: %v", err)
				}
				if h, c := p.counts(); h != holds || c != compares {
					t.Fatalf("correct login under attack: %d holds, %d comparisons; want none", h-holds, c-compares)
				}
				if r.throttle.Delay(key) != d {
					t.Fatal("a local success restarted the failure schedule")
				}
			} else if d := r.throttle.Delay(key); d != 0 {
				t.Fatalf("a remote success left the key's delay at %v", d)
			}
		})
	}
}

// TestSameScheduleKnownAndUnknown: an unknown name and a known name with a
// wrong password are held on the same schedule and cost the same bcrypt
// comparison, so neither the delay nor the time tells which names exist.
// (Before, unknown names shared one bucket per address, and the dummy hash
// had a cost of its own.)
func TestSameScheduleKnownAndUnknown(t *testing.T) {
	r := throttleRelay(t)
	p := newProbe(r)
	ctx := context.Background()
	var known, unknown []time.Duration
	for range 10 {
		err, d := p.attempt(r, ctx, "127.0.0.1", "alice", "wrong")
		wantFailure(t, err, BadCredentials)
		known = append(known, d)
		err, d = p.attempt(r, ctx, "127.0.0.1", "Ghost", "wrong")
		wantFailure(t, err, BadCredentials)
		unknown = append(unknown, d)
	}
	if want := schedule(10); !slices.Equal(known, want) || !slices.Equal(unknown, want) {
		t.Fatalf("holds: known name %v, unknown name %v; want both %v", known, unknown, want)
	}
	// Names that have not failed yet start fresh, known or not.
	for _, name := range []string{"carol", "ghost2"} {
		if err, d := p.attempt(r, ctx, "127.0.0.1", name, "wrong"); d != 0 {
			t.Fatalf("first failure of %q held %v (%v)", name, d, err)
		}
	}
	for i, c := range p.costs {
		if c != bcrypt.MinCost {
			t.Fatalf("comparison %d had cost %d, want the accounts' %d", i, c, bcrypt.MinCost)
		}
	}
	if len(p.costs) != 22 {
		t.Fatalf("%d comparisons for 22 failures", len(p.costs))
	}
}

// TestParallelGuessesShareOneSchedule: N connections guessing one name at
// once walk one failure schedule together (not N), whatever loopback
// address each comes from, and never run more bcrypt comparisons at once
// than there are verification slots, also when every guess comes from a
// fresh remote range.
func TestParallelGuessesShareOneSchedule(t *testing.T) {
	const conns, each, slots = 16, 4, 2
	for _, tc := range []struct {
		name string
		addr func(conn, i int) string
		want []time.Duration // sorted holds
	}{
		{"loopback", func(c, _ int) string { return fmt.Sprintf("127.0.0.%d", c+1) }, schedule(conns * each)[freeFailures:]},
		{"rotating", func(c, i int) string { return fmt.Sprintf("10.%d.%d.1", c, i) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := throttleRelay(t)
			r.throttle.slots = make(chan struct{}, slots)
			p := newProbe(r)
			p.widen = time.Millisecond
			ctx := context.Background()
			var wg sync.WaitGroup
			errs := make(chan error, conns*each)
			for c := range conns {
				wg.Go(func() {
					for i := range each {
						_, err := r.Login(ctx, netip.MustParseAddr(tc.addr(c, i)), "alice", fmt.Sprintf("guess-%d-%d", c, i))
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				wantFailure(t, err, BadCredentials)
			}
			slices.Sort(p.holds)
			if !slices.Equal(p.holds, tc.want) {
				t.Errorf("holds %v, want %v", p.holds, tc.want)
			}
			if p.compares != conns*each {
				t.Errorf("%d comparisons for %d guesses", p.compares, conns*each)
			}
			if p.peak > slots {
				t.Errorf("%d comparisons ran at once, want at most %d", p.peak, slots)
			}
		})
	}
}

// TestRangeCap: failures from one remote /24 beyond rangeFailureCap make
// every attempt from the range fail fast, unchecked and unheld, even with
// the right password, until window has passed since the last counted
// failure; other ranges and loopback clients are not affected.
func TestRangeCap(t *testing.T) {
	ctx := context.Background()
	trip := func(t *testing.T, r *Relay, p *probe) {
		t.Helper()
		for i := range rangeFailureCap {
			err, d := p.attempt(r, ctx, fmt.Sprintf("127.0.0.%d", i%200+1), fmt.Sprintf("ghost-%d", i), "guess")
			wantFailure(t, err, BadCredentials)
			if d != 0 {
				t.Fatalf("failure %d (a fresh name) held %v", i, d)
			}
		}
	}
	t.Run("remote", func(t *testing.T) {
		r := throttleRelay(t)
		r.throttle.local = func(netip.Addr) bool { return false }
		p := newProbe(r)
		trip(t, r, p)
		holds, compares := p.counts()
		for _, name := range []string{"alice", "nobody"} {
			err, _ := p.attempt(r, ctx, "127.0.0.99", name, "pw-a")
			if le := wantFailure(t, err, BadCredentials); le.Reason != reasonRangeBlocked {
				t.Fatalf("%s from a banned range: %v", name, le)
			}
		}
		if h, c := p.counts(); h != holds || c != compares {
			t.Fatalf("banned attempts: %d holds, %d comparisons; want none", h-holds, c-compares)
		}
		if err, _ := p.attempt(r, ctx, "127.0.1.1", "alice", "pw-a"); err != nil {
			t.Fatalf("another /24: %v", err)
		}
		// Refused attempts do not extend the ban.
		p.advance(window / 2)
		if err, _ := p.attempt(r, ctx, "127.0.0.99", "alice", "pw-a"); err == nil {
			t.Fatal("banned range let a login in")
		}
		p.advance(window/2 + time.Second)
		if err, _ := p.attempt(r, ctx, "127.0.0.99", "alice", "pw-a"); err != nil {
			t.Fatalf("after the window: %v", err)
		}
	})
	t.Run("loopback exempt", func(t *testing.T) {
		r := throttleRelay(t)
		p := newProbe(r)
		trip(t, r, p)
		if err, _ := p.attempt(r, ctx, "127.0.0.99", "alice", "pw-a"); err != nil {
			t.Fatalf("loopback after %d failures: %v", rangeFailureCap, err)
		}
	})
}

func TestThrottleKeys(t *testing.T) {
	th := NewThrottle()
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1", "192.0.2.254"},
		{"::ffff:192.0.2.1", "192.0.2.9"},
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::7"},
	} {
		if a, b := rangeOf(th.keyFor(netip.MustParseAddr(tc.a), "x").addr), rangeOf(th.keyFor(netip.MustParseAddr(tc.b), "x").addr); a != b {
			t.Errorf("%s and %s in ranges %v and %v, want one", tc.a, tc.b, a, b)
		}
	}
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1", "192.0.3.1"},
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
	} {
		if rangeOf(netip.MustParseAddr(tc.a)) == rangeOf(netip.MustParseAddr(tc.b)) {
			t.Errorf("%s and %s in one range", tc.a, tc.b)
		}
	}
	if th.keyFor(netip.MustParseAddr("127.0.0.1"), "ERP") != th.keyFor(netip.MustParseAddr("::1"), "erp") {
		t.Error("loopback clients are not keyed by name alone")
	}
	if th.keyFor(netip.MustParseAddr("192.0.2.1"), "erp") == th.keyFor(netip.MustParseAddr("192.0.2.2"), "erp") {
		t.Error("remote addresses share a key")
	}
	if k := th.keyFor(netip.Addr{}, strings.Repeat("x", 5000)); len(k.user) != maxNameLen || k.addr.IsValid() {
		t.Errorf("key for no address and a long name: %d bytes, addr %v", len(k.user), k.addr)
	}
}

// TestLoginUnavailable: a ctx that ends while the check waits for a slot,
// or while a failure is held, gives Unavailable.
func TestLoginUnavailable(t *testing.T) {
	r := throttleRelay(t)
	p := newProbe(r)
	addr := netip.MustParseAddr("127.0.0.1")
	for range cap(r.throttle.slots) {
		r.throttle.slots <- struct{}{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, name := range []string{"alice", "nobody"} {
		_, err := r.Login(ctx, addr, name, "guess")
		wantFailure(t, err, Unavailable)
	}
	for range cap(r.throttle.slots) {
		<-r.throttle.slots
	}
	for range freeFailures {
		r.Login(context.Background(), addr, "carol", "guess")
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	compare := r.throttle.compare
	r.throttle.compare = func(hash, pw []byte) error { cancel(); return compare(hash, pw) }
	_, err := r.Login(ctx, addr, "carol", "guess")
	wantFailure(t, err, Unavailable)
	if h := p.lastHold(); h != time.Second {
		t.Fatalf("held %v, want 1s", h)
	}
}

// TestPassthroughFailuresCount: a password the identity provider refuses
// (AADSTS50126) is a failure of the client's key, held on the same
// schedule; a banned range is refused before the identity provider is
// asked.
func TestPassthroughFailuresCount(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ms, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	const publicID = "22222222-aaaa-bbbb-cccc-000000000002"
	ms.AddApp(fakems.App{ClientID: publicID, PublicClient: true})
	ms.AddMailbox("shared@contoso.com", "mailbox-password")
	cfg, err := config.Parse("t.yaml", []byte(fmt.Sprintf(`
state_dir: %s
providers:
  ropc:
    type: microsoft
    tenant: %s
    client_id: %s
    grant: password
    token_url: %s
    ca_file: %s
accounts:
  - name: shared
    provider: ropc
    mailbox: shared@contoso.com
    username: shared
    password_passthrough: true
`, t.TempDir(), ms.Tenant, publicID, ms.TokenURL, ms.CAFile)), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRelay(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := newProbe(r)
	r.throttle.local = func(netip.Addr) bool { return false }
	addr := netip.MustParseAddr("192.0.2.5")
	var holds []time.Duration
	for range freeFailures + 2 {
		a, err := r.Login(ctx, addr, "Shared", "wrong")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := p.counts()
		_, err = r.Token(ctx, addr, a, "wrong")
		wantFailure(t, err, BadCredentials)
		d := time.Duration(0)
		if m, _ := p.counts(); m > n {
			d = p.lastHold()
		}
		holds = append(holds, d)
	}
	if want := schedule(freeFailures + 2); !slices.Equal(holds, want) {
		t.Fatalf("holds %v, want %v", holds, want)
	}
	a, err := r.Login(ctx, addr, "shared", "mailbox-password")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Token(ctx, addr, a, "mailbox-password"); err != nil {
		t.Fatal(err)
	}
	if d := r.throttle.Delay(r.throttle.keyFor(addr, "shared")); d != 0 {
		t.Fatalf("after a success: delay %v", d)
	}
	for i := range rangeFailureCap {
		r.throttle.Fail(r.throttle.keyFor(netip.MustParseAddr("192.0.2.9"), fmt.Sprint(i)))
	}
	n := ms.TokenRequests()
	_, err = r.Login(ctx, addr, "shared", "mailbox-password")
	if le := wantFailure(t, err, BadCredentials); le.Reason != reasonRangeBlocked {
		t.Fatalf("banned range: %v", le)
	}
	if ms.TokenRequests() != n {
		t.Fatal("a banned range's attempt reached the identity provider")
	}
}

func TestDummyHash(t *testing.T) {
	for _, cost := range []int{bcrypt.MinCost, bcrypt.DefaultCost} {
		h := dummyHash(cost)
		if c, err := bcrypt.Cost(h); err != nil || c != cost {
			t.Fatalf("dummy hash %q: cost %d, %v", h, c, err)
		}
		if err := bcrypt.CompareHashAndPassword(h, []byte("x")); !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			t.Fatalf("comparing with the dummy hash: %v", err)
		}
	}
	accounts := []*Account{
		{Account: &config.Account{PasswordHash: "$2a$04$" + strings.Repeat("a", 53)}},
		{Account: &config.Account{PasswordHash: "$2a$12$" + strings.Repeat("a", 53)}},
		{Account: &config.Account{PasswordHash: "$2a$04$" + strings.Repeat("a", 53)}},
		{Account: &config.Account{PasswordPassthrough: true}},
	}
	if c := commonCost(accounts); c != bcrypt.MinCost {
		t.Fatalf("common cost %d, want %d", c, bcrypt.MinCost)
	}
	if c := commonCost(nil); c != bcrypt.DefaultCost {
		t.Fatalf("common cost of no accounts %d", c)
	}
}

// TestThrottleBounded: a flood of distinct keys keeps each map within
// maxEntries, and entries past the window are swept.
func TestThrottleBounded(t *testing.T) {
	th := NewThrottle()
	now := time.Unix(1000, 0)
	th.now = func() time.Time { return now }
	for i := range maxEntries + 5000 {
		th.Fail(th.keyFor(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), "x"))
	}
	if len(th.keys) > maxEntries || len(th.ranges) > maxEntries {
		t.Fatalf("%d keys, %d ranges; want at most %d each", len(th.keys), len(th.ranges), maxEntries)
	}
	now = now.Add(window + time.Second)
	th.Fail(th.keyFor(netip.MustParseAddr("192.0.2.1"), "x"))
	if n := len(th.keys) + len(th.ranges); n != 2 {
		t.Fatalf("%d entries after the window, want 2", n)
	}
}
