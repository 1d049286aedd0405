package proxy

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Throttle slows down repeated failed logins from one client address, so a
// password cannot be guessed at line rate. After freeFailures failures within
// window, each further attempt from that address waits 2^(n-freeFailures)
// seconds (capped at maxDelay) before it is checked. A success clears the
// address. Entries expire after window without failures.
type Throttle struct {
	mu      sync.Mutex
	entries map[netip.Addr]*throttleEntry
	now     func() time.Time
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
	return &Throttle{entries: make(map[netip.Addr]*throttleEntry), now: time.Now}
}

// Delay returns how long an attempt from addr must wait.
func (t *Throttle) Delay(addr netip.Addr) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[addr]
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

// Wait blocks for Delay(addr) or until ctx is done.
func (t *Throttle) Wait(ctx context.Context, addr netip.Addr) error {
	d := t.Delay(addr)
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

// Fail records a failed login from addr.
func (t *Throttle) Fail(addr netip.Addr) {
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
	e := t.entries[addr]
	if e == nil || now.Sub(e.last) > window {
		e = &throttleEntry{}
		t.entries[addr] = e
	}
	e.failures++
	e.last = now
}

// Succeed clears addr.
func (t *Throttle) Succeed(addr netip.Addr) {
	t.mu.Lock()
	delete(t.entries, addr)
	t.mu.Unlock()
}
