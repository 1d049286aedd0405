package proxy

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Throttle slows down repeated failed logins, so a password cannot be
// guessed at line rate. Failures are counted per client address and user
// name (names that are no account's share one bucket per address): the apps
// on one host all come from 127.0.0.1, and one of them retrying with a
// wrong password must not slow the others down. After freeFailures failures
// within window, each further attempt with that key waits
// 2^(n-freeFailures) seconds (capped at maxDelay) before it is checked. A
// success clears the key. Entries expire after window without failures.
type Throttle struct {
	mu      sync.Mutex
	entries map[throttleKey]*throttleEntry
	now     func() time.Time
}

// throttleKey is a client address and a lower-case user name ("" for names
// that are no account's).
type throttleKey struct {
	addr netip.Addr
	user string
}

type throttleEntry struct {
	failures int
	last     time.Time
}

const (
	freeFailures = 3
	maxDelay     = 30 * time.Second
	window       = 15 * time.Minute
)

// NewThrottle returns an empty Throttle.
func NewThrottle() *Throttle {
	return &Throttle{entries: make(map[throttleKey]*throttleEntry), now: time.Now}
}

// Delay returns how long an attempt with key k must wait.
func (t *Throttle) Delay(k throttleKey) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[k]
	if e == nil || t.now().Sub(e.last) > window {
		return 0
	}
	n := e.failures - freeFailures
	if n < 0 {
		return 0
	}
	if n > 5 {
		return maxDelay
	}
	return min(time.Second<<n, maxDelay)
}

// Wait blocks for Delay(k) or until ctx is done.
func (t *Throttle) Wait(ctx context.Context, k throttleKey) error {
	d := t.Delay(k)
	if d == 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Fail records a failed login with key k.
func (t *Throttle) Fail(k throttleKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	// Sweep expired entries now and then so the map stays bounded by the
	// addresses that failed within the window.
	if len(t.entries) > 1024 {
		for k, e := range t.entries {
			if now.Sub(e.last) > window {
				delete(t.entries, k)
			}
		}
	}
	e := t.entries[k]
	if e == nil || now.Sub(e.last) > window {
		e = &throttleEntry{}
		t.entries[k] = e
	}
	e.failures++
	e.last = now
}

// Succeed clears k.
func (t *Throttle) Succeed(k throttleKey) {
	t.mu.Lock()
	delete(t.entries, k)
	t.mu.Unlock()
}
