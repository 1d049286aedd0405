package oauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// Refreshing a delegated grant shared by several relay instances
// (Options.Store is a *ClusterStore). The rules, each for a reason:
//
//   - The shared record is the truth, read before every refresh and
//     reconciled with the local file (ClusterStore.sync): a sign-in or a
//     rotation made anywhere is what the next refresh redeems.
//   - The access token is shared too (Record.Access, by scopes): an
//     instance whose token is due first takes one from the store that is
//     not due, so the cluster redeems the refresh token once per access
//     token lifetime rather than once per instance.
//   - Only the holder of the account's lease redeems (renewed while the
//     request runs); the others poll the store until a fresh access token
//     appears there or the lease is free. Redeeming a refresh token twice
//     is what makes Entra answer invalid_grant when the old one dies on
//     use.
//   - The rotation is written with compare-and-swap over the record that
//     was redeemed; a swap that loses (a lease that ran out under a
//     stalled holder) keeps the winner's refresh token and uses its own
//     access token, which is valid either way.
//   - With the store unreachable the instance is a single relay again:
//     it keeps its access token while it lasts (a short outage redeems
//     nothing, so it cannot race), then redeems its own newest copy and
//     publishes that rotation, which is newer by generation, when the
//     store is back — unless another instance held the lease to redeem
//     that very copy at its last look (the outcome is unknown here). For reconcileGrace after the store's return nobody
//     redeems a record another instance may be about to replace with the
//     one it made during the outage.
const (
	// tokenLease is the refresh lease's expiry on the store's clock, and
	// tokenLeaseRenew how often the holder renews it: an instance that
	// dies holding it stops blocking the others within tokenLease.
	tokenLease      = 10 * time.Second
	tokenLeaseRenew = tokenLease / 4
	// leasePoll is how often an instance waiting on another's refresh
	// looks at the store.
	leasePoll = 25 * time.Millisecond
	// reconcileGrace: instances notice the store's return within its
	// probe interval (100 ms) of each other and publish what they made
	// while it was away at once.
	reconcileGrace = time.Second
	// signInPoll is how often a source that needs a sign-in looks for
	// one made on another instance (one read of the store).
	signInPoll = 2 * time.Second
	// maxSharedRounds bounds fetchShared's loop besides its context.
	maxSharedRounds = 4000
)

// scopeKey names the access tokens of this source in Record.Access.
func (s *Source) scopeKey() string { return strings.Join(s.scopes, " ") }

// fetchShared redeems the account's refresh token for the cluster, or
// takes the access token another instance got.
func (s *Source) fetchShared(ctx context.Context) (tokenResult, *Error) {
	if !s.cluster.shared.Healthy() {
		return s.fetchAlone(ctx, nil)
	}
	return s.refreshShared(ctx)
}

// refreshShared is fetchShared with the store answering; it goes alone
// (fetchAlone, with the store's error) when it stops answering.
func (s *Source) refreshShared(ctx context.Context) (tokenResult, *Error) {
	c := s.cluster
	var leased bool
	var stopRenew func()
	defer func() {
		if leased {
			stopRenew()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeCall)
			if err := c.shared.Release(rctx, s.acct.Name, s.holder); err != nil {
				s.log.Debug("cannot release the refresh lease (it expires by itself)", slog.String("err", err.Error()))
			}
			cancel()
		}
	}()
	for range maxSharedRounds {
		if err := ctx.Err(); err != nil {
			return tokenResult{}, &Error{Class: Transient, Reason: "waited too long for the refresh of another relay instance", Err: err}
		}
		v, err := c.sync(ctx, s.acct.Name)
		if errors.Is(err, errKeyMismatch) {
			return tokenResult{}, s.keyMismatch(err)
		}
		if err != nil {
			return s.fetchAlone(ctx, err)
		}
		if !v.ok {
			return tokenResult{}, s.quietIfRepeated(&Error{Class: NeedsSignIn, Reason: "not signed in yet (no refresh token on any instance)", Fix: "run `oauthrelay login -config FILE " + s.acct.Name + "` on any instance (or sign in on a status page)"})
		}
		if res, ok := s.adoptable(v.rec); ok {
			s.log.Debug("took the access token of another instance", slog.String("by", v.rec.By), slog.Time("expiry", res.expiry))
			return res, nil
		}
		if e := s.deadErr(v.rec.RefreshToken); e != nil {
			return tokenResult{}, e
		}
		if wait := c.graceLeft(s.now()); wait > 0 && s.hasUsable() {
			sleepCtx(ctx, min(wait, leasePoll))
			continue
		}
		if !leased {
			ok, err := c.shared.Lease(ctx, s.acct.Name, s.holder, tokenLease)
			if err != nil {
				return s.fetchAlone(ctx, err)
			}
			if !ok {
				c.setContested(s.acct.Name, v.rec.RefreshToken)
				sleepCtx(ctx, leasePoll)
				continue
			}
			c.setContested(s.acct.Name, "")
			leased, stopRenew = true, s.renewLease(ctx)
			continue // read again under the lease: a refresh may have just ended
		}
		if e := s.deadErr(v.rec.RefreshToken); e != nil {
			return tokenResult{}, e
		}
		res, rec, e := s.redeem(ctx, v.rec)
		if e != nil {
			if e.Class == NeedsSignIn {
				// Another instance may have rotated it after all (a
				// lease that ran out, a rotation made during an outage
				// published since): then its token is the one to use.
				if again, err := c.read(ctx, s.acct.Name); err == nil && again.ok && again.raw != v.raw {
					s.log.Info("the refresh token was replaced by another instance while this one redeemed it; taking the new one", slog.String("by", again.rec.By))
					continue
				}
				s.markDead(v.rec.RefreshToken, e)
			}
			return tokenResult{}, e
		}
		won, _, err := c.swap(ctx, s.acct.Name, v.raw, rec)
		switch {
		case err != nil:
			// The new refresh token exists only here: keep it, publish
			// it when the store is back.
			c.noteDown(err)
			if err := c.keepLocal(s.acct.Name, rec); err != nil {
				return tokenResult{}, &Error{Class: Transient, Reason: "cannot save the rotated refresh token", Fix: "check the shared store and free space and permissions of state_dir/tokens", Err: err}
			}
		case !won:
			s.log.Warn("another instance rotated the refresh token at the same time: keeping its refresh token, using this access token")
			if _, err := c.read(ctx, s.acct.Name); err != nil {
				s.log.Debug("cannot read the shared record again", slog.String("err", err.Error()))
			}
		case rec.RefreshToken != v.rec.RefreshToken:
			s.log.Info("refresh token rotated and saved in the shared store", slog.Uint64("generation", rec.Generation))
		}
		return res, nil
	}
	return tokenResult{}, &Error{Class: Transient, Reason: "the shared token record kept changing"}
}

// redeem redeems cur's refresh token and returns the access token and the
// record that follows cur.
func (s *Source) redeem(ctx context.Context, cur tokenstore.Record) (tokenResult, tokenstore.Record, *Error) {
	start := s.now()
	tok, err := s.request(ctx, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {cur.RefreshToken}}, s.clientAuth())
	if err != nil {
		return tokenResult{}, tokenstore.Record{}, classify(err, s.grant, s.now())
	}
	life := lifetimeOf(tok)
	res := tokenResult{access: tok.AccessToken, lifetime: life, expiry: start.Add(life)}
	next := cur
	next.Updated, next.By = s.now(), s.cluster.shared.Instance()
	if len(next.Scopes) == 0 {
		next.Scopes = s.prov.Scopes
	}
	if nrt := tok.RefreshToken; nrt != "" && nrt != cur.RefreshToken {
		next.RefreshToken = nrt
		next.Generation++
	}
	next = withAccess(next, s.scopeKey(), tokenstore.AccessToken{Token: res.access, Expiry: res.expiry, Lifetime: life}, s.now())
	return res, next, nil
}

// fetchAlone refreshes as a single relay while the shared store is
// unreachable (cause, when known): the cached access token is kept while
// it is usable (the refresh is deferred, so that a short outage redeems
// nothing another instance might redeem too), then this instance's own
// newest refresh token is redeemed and the rotation kept for the store's
// return. The account's Sources of this instance take turns.
func (s *Source) fetchAlone(ctx context.Context, cause error) (tokenResult, *Error) {
	c := s.cluster
	c.noteDown(cause)
	s.mu.Lock()
	if _, ok := s.usableLocked(s.now()); ok {
		until := s.expiry.Add(-min(usableSlack, s.lifetime/4))
		s.mu.Unlock()
		return tokenResult{}, &Error{Class: Transient, quiet: true, RetryAt: until,
			Reason: "the shared store is unreachable: the refresh waits for it while the access token lasts",
			Fix:    "check the shared store (cluster.store)", Err: cause}
	}
	s.mu.Unlock()
	if cause == nil {
		// Known down, not asked: before redeeming alone, ask once (the
		// store may be back before the heartbeat noticed).
		if _, err := c.sync(ctx, s.acct.Name); err == nil || errors.Is(err, errKeyMismatch) {
			return s.refreshShared(ctx)
		}
	}
	l := c.lock(s.acct.Name)
	l.Lock()
	defer l.Unlock()
	cur, ok := c.newest(s.acct.Name)
	if !ok || cur.RefreshToken == "" {
		return tokenResult{}, &Error{Class: NeedsSignIn, Reason: "not signed in on this instance, and the shared store is unreachable", Fix: "bring the shared store back, or run `oauthrelay login -config FILE " + s.acct.Name + "` here"}
	}
	if res, ok := s.adoptable(cur); ok { // the account's other Source of this instance just refreshed
		return res, nil
	}
	if c.isContested(s.acct.Name, cur.RefreshToken) {
		// Knowledge to the contrary: another instance was redeeming this
		// very token when the store went away; its successor is not
		// known here, and redeeming it too is the race to avoid.
		return tokenResult{}, s.quietIfRepeated(&Error{Class: Transient,
			Reason: "the shared store became unreachable while another instance was refreshing this account: its new token is not known here, and redeeming the old one would race it; waiting for the store",
			Fix:    "check the shared store (cluster.store)", Err: cause})
	}
	if e := s.deadErr(cur.RefreshToken); e != nil {
		return tokenResult{}, e
	}
	res, rec, e := s.redeem(ctx, cur)
	if e != nil {
		if e.Class == NeedsSignIn {
			// Most likely another instance redeemed the same copy in the
			// dark; the store's token is read again when it is back, and
			// only then does a refused token mean a sign-in is needed.
			t := *e
			t.Class = Transient
			t.Reason += " (while the shared store is unreachable: another instance may have redeemed this refresh token; the store's is read again when it is back)"
			s.markDead(cur.RefreshToken, &t)
			return tokenResult{}, &t
		}
		return tokenResult{}, e
	}
	if err := c.keepLocal(s.acct.Name, rec); err != nil {
		return tokenResult{}, &Error{Class: Transient, Reason: "cannot save the rotated refresh token", Fix: "check free space and permissions of state_dir/tokens", Err: err}
	}
	s.log.Info("refresh token rotated while the shared store is unreachable: saved locally, published when the store is back", slog.Uint64("generation", rec.Generation))
	return res, nil
}

// adoptable returns the access token of rec for this source's scopes if
// it is worth taking: not the one the upstream rejected, later than the
// cached one, and not itself due for refresh (so that Run does not take
// it again and again).
func (s *Source) adoptable(rec tokenstore.Record) (tokenResult, bool) {
	at, ok := rec.Access[s.scopeKey()]
	if !ok || at.Token == "" || at.Lifetime <= 0 {
		return tokenResult{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	m := min(s.margin, at.Lifetime/2)
	if at.Token == s.rejected || at.Expiry.Sub(now) <= m+m/10 || s.access != "" && !at.Expiry.After(s.expiry) {
		return tokenResult{}, false
	}
	return tokenResult{access: at.Token, lifetime: at.Lifetime, expiry: at.Expiry}, true
}

// hasUsable reports whether the cached access token can still be handed
// out.
func (s *Source) hasUsable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.usableLocked(s.now())
	return ok
}

// deadErr is the error a refresh token the provider rejected got (quiet:
// it was logged then), nil for any other token.
func (s *Source) deadErr(rt string) *Error {
	sum := sha256.Sum256([]byte(rt))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead != nil && subtle.ConstantTimeCompare(sum[:], s.dead.sum[:]) == 1 {
		e := *s.dead.err
		e.quiet = true
		return &e
	}
	return nil
}

func (s *Source) markDead(rt string, e *Error) {
	s.mu.Lock()
	s.dead = &deadRefresh{sum: sha256.Sum256([]byte(rt)), err: e}
	s.mu.Unlock()
}

// keyMismatch is the error for a shared record this instance cannot
// decrypt; it is logged once (by the ClusterStore), then quiet.
func (s *Source) keyMismatch(err error) *Error {
	e := &Error{Class: NeedsSignIn,
		Reason: "the shared store's token record does not decrypt with this instance's key: every instance must use the same state key",
		Fix:    "give this instance the key the others use (copy state_dir/key, or set the same OAUTHRELAY_KEY everywhere) and restart it; nothing was overwritten",
		Err:    err}
	return s.quietIfRepeated(e)
}

// quietIfRepeated marks e quiet when the last failure was the same: a
// failure found again without a token request is logged once.
func (s *Source) quietIfRepeated(e *Error) *Error {
	s.mu.Lock()
	e.quiet = s.lastErr != nil && s.lastErr.Class == e.Class && s.lastErr.Reason == e.Reason
	s.mu.Unlock()
	return e
}

// renewLease renews the refresh lease until the returned stop is called
// (which waits for the renewer).
func (s *Source) renewLease(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(tokenLeaseRenew)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				ok, err := s.cluster.shared.Lease(ctx, s.acct.Name, s.holder, tokenLease)
				if err == nil && !ok {
					s.log.Warn("the refresh lease ran out while refreshing: another instance may refresh too (its rotation and this one are reconciled by compare-and-swap)")
					return
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// syncShared is Run's answer to the store coming back or restarting:
// publish what this instance made meanwhile, and start the grace.
func (s *Source) syncShared(ctx context.Context) {
	c := s.cluster
	c.noteBack(s.now())
	ctx, cancel := context.WithTimeout(ctx, storeCall)
	defer cancel()
	if _, err := c.sync(ctx, s.acct.Name); err != nil && !errors.Is(err, errKeyMismatch) {
		s.log.Debug("cannot reconcile with the shared store yet", slog.String("err", err.Error()))
	}
	s.mu.Lock()
	if s.lastErr != nil && s.lastErr.quiet && s.lastErr.Class == Transient {
		s.holdUntil, s.retryAt = time.Time{}, time.Time{}
	}
	s.mu.Unlock()
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
