package oauth

import (
	"context"
	"log/slog"
	"time"
)

const (
	backoffMin = 2 * time.Second
	backoffMax = 5 * time.Minute
)

// Run refreshes the access token in the background, RefreshMargin (minus a
// little jitter, so that many accounts do not refresh in step) before it
// expires, so that logins find a fresh token in the cache. Failures are
// retried with exponential backoff capped at five minutes (Retry-After is
// honoured); NeedsSignIn failures are retried at the cap, which also picks up
// a sign-in written to the store by another process. A failed refresh never
// discards a cached token that is still valid. Run returns when ctx is done
// and every token request in progress (its own or a caller's, detached
// from them) has ended: a refresher that stopped leaves nothing running.
func (s *Source) Run(ctx context.Context) {
	defer s.waitFlights()
	if s.grant == grantPassword && s.acct.Password == "" {
		<-ctx.Done() // passthrough: there is nothing to refresh with
		return
	}
	failures := 0
	var class Class
	// changed is closed when the shared store is found down, back or
	// restarted (nil without one: never).
	var changed <-chan struct{}
	if s.cluster != nil {
		changed = s.cluster.shared.Changed()
	}
	for {
		s.mu.Lock()
		now := s.now()
		var wait time.Duration
		if failures > 0 {
			wait = backoff(failures, class)
			if e := s.lastErr; e != nil && e.RetryAt.After(now) {
				wait = max(wait, e.RetryAt.Sub(now))
			}
			if s.cluster != nil && class == NeedsSignIn {
				// A sign-in on another instance arrives through the
				// shared store: look for it often (one read).
				wait = min(wait, signInPoll)
			}
			s.retryAt = now.Add(wait)
		} else {
			wait = s.untilRefreshLocked(now)
		}
		s.mu.Unlock()

		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-s.wake:
				// A token arrived through Token, or Reload: start over.
				t.Stop()
				failures = 0
				continue
			case <-changed:
				t.Stop()
				changed = s.cluster.shared.Changed()
				if s.cluster.shared.Healthy() {
					// Back or restarted: reconcile, then refresh if due.
					s.syncShared(ctx)
					failures = 0
				}
				continue
			case <-t.C:
			}
		}

		s.mu.Lock()
		due := failures > 0 || s.untilRefreshLocked(s.now()) <= 0
		gen := s.gen
		s.mu.Unlock()
		if !due {
			continue
		}
		_, err := s.shared(ctx, "token", func(ctx context.Context) (string, *Error) { return s.refreshToken(ctx, gen) })
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			class = classify(err, s.grant, s.now()).Class
			s.log.Debug("background refresh failed", slog.Int("failures", failures))
			continue
		}
		failures = 0
	}
}

// untilRefreshLocked is how long until the cached token should be refreshed;
// zero or less means now.
func (s *Source) untilRefreshLocked(now time.Time) time.Duration {
	if s.access == "" {
		return 0
	}
	return s.expiry.Add(-s.effectiveMarginLocked() - s.jitter).Sub(now)
}

// backoff is the wait after the n-th consecutive failure, ±20% jitter.
func backoff(n int, class Class) time.Duration {
	d := backoffMax
	if class != NeedsSignIn && n < 16 {
		d = min(backoffMin<<(n-1), backoffMax)
	}
	return d - d/5 + jitter(2*d/5)
}
