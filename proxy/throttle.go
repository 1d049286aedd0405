package proxy

import (
	"context"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Throttle limits password guessing against the local logins without
// slowing down the apps that know their password. It is built the way
// Dovecot's auth penalty and fail2ban are, in four parts.
//
// Verification slots. At most verifySlots() bcrypt comparisons run at once,
// for all clients together; waiting for a slot ends with the caller's ctx.
// bcrypt costs tens of milliseconds of CPU by design: unbounded, parallel
// guessing took every CPU and a correct login waited behind it (1.7 ms
// became 230 ms). The slots are also the global bound on guessing work:
// rotating source addresses buys fresh counters, never more CPU.
//
// A failure delay per address and name. A failed login is held after its
// password was checked and before the failure is answered, as Dovecot's
// auth_failure_delay and auth_penalty hold the reply. The first
// freeFailures failures of a key within window are answered at once (a
// typo), the next after 1 s, doubling up to maxDelay. The delay never comes
// before the check, so a correct password is not delayed by anyone's
// failures (the old throttle waited first: a local attacker failing the
// app's name from 127.0.0.1 made the app's correct login wait 30 s). The
// count is taken under one lock at the moment of the failure, so N parallel
// connections walk one schedule together instead of one each.
//
// One schedule for every name. The key is the literal name the client sent,
// lower-cased, whether or not an account has it, and an unknown name costs
// a bcrypt comparison of the accounts' cost (Relay.hashFor). The old
// throttle counted unknown names in one bucket per address, so after three
// failures any unknown name was answered after a second and a known one at
// once: user enumeration by timing.
//
// A cap per address range for remote clients. After rangeFailureCap
// failures within window from one /24 (IPv4) or /64 (IPv6, what one site
// gets), every further attempt from the range fails at once without its
// password being checked, until window has passed since the last counted
// failure (fail2ban's ban; attempts refused meanwhile do not extend it, so a
// legitimate client retrying gets in again). Loopback clients are keyed by
// name alone and never banned: every local app comes from 127.0.0.1, and a
// local attacker must not lock out the local app's correct password.
//
// The memo of the last verified password (Account.memoHit) answers a
// correct login in microseconds, without a slot, even for a name under
// attack: that is what keeps the app's login fast while someone guesses its
// name from the same host. It does not make guessing cheaper: a guess the
// memo does not match still waits for a slot, pays its bcrypt comparison
// and is held before it is answered, and its connection is taken all that
// time, so guesses are tested against the memo no faster than against
// bcrypt. This relies on the front ends not ending Login's ctx when a client
// hangs up (they do not: an abandoned guess would skip its slot and hold).
//
// Limits of the design. A failure is held at most maxDelay, so N
// connections guessing one key get about N answers per maxDelay once its
// count is high: N is bounded by proxy.Listener's cap on connections per
// address before login, and all of them together by the slots. A local
// process guessing the app's own name from loopback is bounded only so (a
// ban would lock the app out).
//
// State is bounded: entries expire window after their last failure and are
// swept when the maps have doubled or a window has passed; names are cut to
// maxNameLen bytes; each map holds at most maxEntries (an arbitrary entry
// makes room).
type Throttle struct {
	slots chan struct{} // verification semaphore, verifySlots() wide

	mu        sync.Mutex
	keys      map[throttleKey]*throttleEntry
	ranges    map[netip.Prefix]*throttleEntry
	sweepAt   int       // total entries at which the next sweep runs
	lastSweep time.Time // a window after it, the next sweep runs anyway

	// NewThrottle sets these; tests and benchmarks replace them before the
	// first use.
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error // holds a failure
	local   func(netip.Addr) bool                            // keyed by name alone, no range cap
	compare func(hash, password []byte) error
	speedup time.Duration // divides every delay and the window; 1 in production
}

// throttleKey is what failures are counted by: the client address (the
// zero Addr for local clients, see Throttle) and the lower-case name the
// client sent.
type throttleKey struct {
	addr netip.Addr
	user string
}

// throttleEntry counts the failures of a key or a range.
type throttleEntry struct {
	failures int
	last     time.Time // of the last failure
}

const (
	// freeFailures are answered without delay: a person mistyping.
	freeFailures = 3
	// maxDelay bounds the hold of one failure (Dovecot's auth penalty
	// stops at 15 s; a mail client's login timeout is longer than 30 s).
	maxDelay = 30 * time.Second
	// window is how long a failure is remembered.
	window = 15 * time.Minute
	// rangeFailureCap is the number of failures within window one remote
	// /24 or /64 may have; further attempts from it fail fast.
	rangeFailureCap = 30
	// rangeBits4 and rangeBits6 are the prefix lengths of a range: a
	// customer's IPv4 block, and the /64 that one IPv6 LAN gets (RFC 4291
	// section 2.5.1).
	rangeBits4, rangeBits6 = 24, 64
	// maxNameLen cuts the user names kept as keys.
	maxNameLen = 256
	// maxEntries bounds each map (keys, ranges); minSweep is the size
	// below which expired entries are not swept.
	maxEntries = 1 << 15
	minSweep   = 1024
)

// NewThrottle returns an empty Throttle with verifySlots() slots.
func NewThrottle() *Throttle {
	return &Throttle{
		slots:   make(chan struct{}, verifySlots()),
		keys:    make(map[throttleKey]*throttleEntry),
		ranges:  make(map[netip.Prefix]*throttleEntry),
		sweepAt: minSweep,
		now:     time.Now,
		sleep:   sleepCtx,
		local:   isLocal,
		compare: bcrypt.CompareHashAndPassword,
		speedup: 1,
	}
}

// verifySlots is half the CPUs Go uses, at least one: password hashing,
// however many guess at once, leaves the other half to relayed sessions.
func verifySlots() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// isLocal reports loopback clients, and clients without an IP address
// (which cannot be told apart either).
func isLocal(a netip.Addr) bool { return !a.IsValid() || a.IsLoopback() }

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// keyFor is the key of a login with name from addr.
func (t *Throttle) keyFor(addr netip.Addr, name string) throttleKey {
	name = strings.ToLower(name)
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	addr = addr.Unmap()
	if t.local(addr) {
		return throttleKey{user: name}
	}
	return throttleKey{addr: addr, user: name}
}

// rangeOf is the range a remote address is capped with.
func rangeOf(a netip.Addr) netip.Prefix {
	bits := rangeBits6
	if a.Is4() {
		bits = rangeBits4
	}
	p, _ := a.Prefix(bits)
	return p
}

// span is window, sped up for benchmarks.
func (t *Throttle) span() time.Duration { return window / t.speedup }

// delayAfter is the hold of a failure that follows n failures.
func (t *Throttle) delayAfter(n int) time.Duration {
	n -= freeFailures
	if n < 0 {
		return 0
	}
	d := maxDelay
	if n < 5 {
		d = min(time.Second<<n, maxDelay)
	}
	return d / t.speedup
}

// expire forgets failures older than span.
func (e *throttleEntry) expire(now time.Time, span time.Duration) {
	if e.failures > 0 && now.Sub(e.last) > span {
		e.failures = 0
	}
}

// Delay returns how long the next failure with k will be held.
func (t *Throttle) Delay(k throttleKey) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.keys[k]
	if e == nil {
		return 0
	}
	e.expire(t.now(), t.span())
	return t.delayAfter(e.failures)
}

// Blocked reports whether an attempt with k must fail unchecked: k is a
// remote client whose range has had rangeFailureCap failures within window.
func (t *Throttle) Blocked(k throttleKey) bool {
	if !k.addr.IsValid() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.ranges[rangeOf(k.addr)]
	if r == nil {
		return false
	}
	r.expire(t.now(), t.span())
	return r.failures >= rangeFailureCap
}

// Fail records a failed login with k and returns how long its answer must
// be held. The count is read and raised under one lock, so parallel
// failures get consecutive places in the schedule.
func (t *Throttle) Fail(k throttleKey) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now, span := t.now(), t.span()
	t.maybeSweep(now, span)
	e := t.keys[k]
	if e == nil {
		e = add(t.keys, k)
	}
	e.expire(now, span)
	d := t.delayAfter(e.failures)
	e.failures++
	e.last = now
	if k.addr.IsValid() {
		p := rangeOf(k.addr)
		r := t.ranges[p]
		if r == nil {
			r = add(t.ranges, p)
		}
		r.expire(now, span)
		r.failures++
		r.last = now
	}
	return d
}

// Succeed records a successful login with k. It clears a remote key (that
// client knows the password); a local key keeps its failures, since they may
// be another local process's and a success must not restart its schedule.
// A range's count is never cleared by a success.
func (t *Throttle) Succeed(k throttleKey) {
	if !k.addr.IsValid() {
		return
	}
	t.mu.Lock()
	delete(t.keys, k)
	t.mu.Unlock()
}

// add puts a new entry for k into m, first making room if m is full.
func add[K comparable](m map[K]*throttleEntry, k K) *throttleEntry {
	if len(m) >= maxEntries {
		for old := range m {
			delete(m, old)
			break
		}
	}
	e := &throttleEntry{}
	m[k] = e
	return e
}

// maybeSweep drops expired entries once the maps have doubled since the
// last sweep, or a window after it (maps kept full by add's evictions do not
// double), so the work stays proportional to the failures recorded.
func (t *Throttle) maybeSweep(now time.Time, span time.Duration) {
	n := len(t.keys) + len(t.ranges)
	if n < t.sweepAt && (n < minSweep || now.Sub(t.lastSweep) <= span) {
		return
	}
	sweep(t.keys, now, span)
	sweep(t.ranges, now, span)
	t.sweepAt = max(minSweep, 2*(len(t.keys)+len(t.ranges)))
	t.lastSweep = now
}

func sweep[K comparable](m map[K]*throttleEntry, now time.Time, span time.Duration) {
	for k, e := range m {
		e.expire(now, span)
		if e.failures == 0 {
			delete(m, k)
		}
	}
}

// Verify compares password with a bcrypt hash in one of the verification
// slots, waiting for one until ctx is done (then the error is ctx's).
func (t *Throttle) Verify(ctx context.Context, hash []byte, password string) (bool, error) {
	select {
	case t.slots <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-t.slots }()
	return t.compare(hash, []byte(password)) == nil, nil
}

// Hold waits d, the delay of a failure, or until ctx is done (then the
// error is ctx's).
func (t *Throttle) Hold(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	return t.sleep(ctx, d)
}
