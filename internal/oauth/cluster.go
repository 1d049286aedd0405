package oauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// SharedTokens is the store relay instances share for delegated grants
// (config cluster:); *cluster.Tokens implements it. Values are opaque
// here: ClusterStore seals them with the token store's key. Every call
// is bounded by the implementation (a store that does not answer fails
// fast), and a failed call marks the store down until it answers again.
type SharedTokens interface {
	// Instance names this relay among the others.
	Instance() string
	// Get returns the account's value, "" when there is none.
	Get(ctx context.Context, account string) (string, error)
	// Swap replaces the account's value with new if it is old ("" for
	// none; new "" deletes it) and reports whether it did.
	Swap(ctx context.Context, account, old, new string) (bool, error)
	// Lease takes or renews the account's refresh lease for holder, for
	// ttl; false while another holder has it.
	Lease(ctx context.Context, account, holder string, ttl time.Duration) (bool, error)
	// Release gives the lease up if holder has it.
	Release(ctx context.Context, account, holder string) error
	// Healthy reports whether the store answered its last call; Changed
	// is closed when the store is next found down, back or restarted.
	Healthy() bool
	Changed() <-chan struct{}
}

// LocalStore is the token files of this instance (*tokenstore.Store):
// the Store a single relay has, plus the sealing that gives the shared
// copy the same encryption, and Delete for `login -replace`.
type LocalStore interface {
	Store
	Seal(account string, r tokenstore.Record) ([]byte, error)
	Unseal(account string, b []byte) (tokenstore.Record, error)
	Delete(account string) error
}

// ClusterStore is the Store of a relay that shares delegated grants with
// other instances (Options.Store; serve, `login` and `token` use it when
// cluster: is configured). The shared store holds each account's newest
// record — refresh token, its chain's sign-in time and rotation count,
// and the access tokens last issued — sealed with the token store's key
// and format; the local token files keep a copy of the refresh token, so
// that an instance starts and works alone while the shared store is
// down. A Source given a ClusterStore refreshes through it (see
// fetchShared): one instance at a time per account under a lease,
// rotations written with compare-and-swap.
//
// Every instance must have the same key (state_dir/key or
// OAUTHRELAY_KEY): a shared record sealed with another key is reported
// as such and never overwritten.
type ClusterStore struct {
	local  LocalStore
	shared SharedTokens
	log    *slog.Logger

	mu     sync.Mutex
	accts  map[string]*sharedAccount
	down   bool      // an outage was noted (logged once) and not yet ended
	backAt time.Time // when the store was last found back or restarted
	// lock serialises the refreshes of one account by this instance's
	// Sources while the store is down (the mail and Graph sources redeem
	// one refresh token).
	locks map[string]*sync.Mutex
}

// sharedAccount is what this instance knows of one account's shared
// record.
type sharedAccount struct {
	raw   string            // the shared value last read or written ("" none)
	known tokenstore.Record // the newest record seen or made here
	has   bool              // known is set
	// pending: known was made here while the store was unreachable and
	// is to be published when it is back.
	pending        bool
	mismatchLogged bool
	// contested is the refresh token another instance held the lease to
	// redeem when this one last looked: its outcome is not known here, so
	// this instance does not redeem it alone (fetchAlone).
	contested string
}

// NewClusterStore shares local's refresh tokens through shared. log nil:
// discard.
func NewClusterStore(local LocalStore, shared SharedTokens, log *slog.Logger) *ClusterStore {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ClusterStore{local: local, shared: shared, log: log.With(slog.String("instance", shared.Instance())),
		accts: map[string]*sharedAccount{}, locks: map[string]*sync.Mutex{}}
}

// storeCall bounds ClusterStore's calls made without a caller's context
// (Load, Save, Delete); the store's own bound is shorter.
const storeCall = 5 * time.Second

// errKeyMismatch marks a shared record this instance cannot decrypt.
var errKeyMismatch = errors.New("the shared store's record does not decrypt with this instance's key")

// sharedView is the account's shared record as last read.
type sharedView struct {
	raw string
	rec tokenstore.Record
	ok  bool // there is a record
}

func (c *ClusterStore) acct(name string) *sharedAccount {
	a, ok := c.accts[name]
	if !ok {
		a = &sharedAccount{}
		c.accts[name] = a
	}
	return a
}

// learn records a record seen in the store or written there.
func (c *ClusterStore) learn(account, raw string, rec tokenstore.Record, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.acct(account)
	a.raw = raw
	if ok && (!a.has || !a.known.Newer(rec)) {
		a.known, a.has, a.pending = rec, true, false
	}
}

// read gets and decrypts the account's shared record. A store error is
// returned as it is; a record that does not decrypt wraps
// errKeyMismatch and tokenstore.ErrDecrypt, and is logged once.
func (c *ClusterStore) read(ctx context.Context, account string) (sharedView, error) {
	raw, err := c.shared.Get(ctx, account)
	if err != nil {
		return sharedView{}, err
	}
	if raw == "" {
		c.learn(account, "", tokenstore.Record{}, false)
		return sharedView{}, nil
	}
	rec, err := c.local.Unseal(account, []byte(raw))
	if err != nil {
		c.mu.Lock()
		a := c.acct(account)
		first := !a.mismatchLogged
		a.mismatchLogged = true
		c.mu.Unlock()
		what := "corrupt or another account's"
		if errors.Is(err, tokenstore.ErrOtherKey) {
			what = "sealed with another key"
		}
		if first {
			c.log.Error("the shared store's token record does not decrypt with this instance's key: every instance must use the same state key; "+
				"this instance does not refresh the account and overwrites nothing", slog.String("account", account), slog.String("why", what),
				slog.String("err", err.Error()))
		}
		return sharedView{}, fmt.Errorf("%w (%w)", errKeyMismatch, err)
	}
	c.learn(account, raw, rec, true)
	return sharedView{raw: raw, rec: rec, ok: true}, nil
}

// sync reads the account's shared record and reconciles it with what
// this instance has: a newer record here (the local file, or one made or
// seen here, e.g. a rotation while the store was down, or a store that
// restarted empty) is published over the store's with compare-and-swap;
// a newer one in the store is copied to the local file. It returns the
// store's record after that.
func (c *ClusterStore) sync(ctx context.Context, account string) (sharedView, error) {
	for range 4 { // each round is one lost race with another instance
		v, err := c.read(ctx, account)
		if err != nil {
			return v, err
		}
		best, ok := c.newest(account)
		if !ok || best.RefreshToken == "" || v.ok && !best.Newer(v.rec) {
			if v.ok {
				c.mirror(account, v.rec)
			}
			return v, nil
		}
		won, raw, err := c.swap(ctx, account, v.raw, best)
		if err != nil {
			return sharedView{}, err
		}
		if won {
			c.log.Info("published this instance's refresh token to the shared store: it is newer than the store's",
				slog.String("account", account), slog.Uint64("generation", best.Generation), slog.Bool("store_had_one", v.ok))
			return sharedView{raw: raw, rec: best, ok: true}, nil
		}
	}
	return c.read(ctx, account)
}

// newest is the newest record this instance has for account: the local
// file's or the one it knows from the store or made itself.
func (c *ClusterStore) newest(account string) (tokenstore.Record, bool) {
	local, lerr := c.local.Load(account)
	c.mu.Lock()
	a := c.acct(account)
	best, ok := a.known, a.has
	c.mu.Unlock()
	if lerr == nil && local.RefreshToken != "" && (!ok || local.Newer(best)) {
		return local, true
	}
	return best, ok
}

// swap seals rec and writes it over old (the raw value read before).
func (c *ClusterStore) swap(ctx context.Context, account, old string, rec tokenstore.Record) (bool, string, error) {
	b, err := c.local.Seal(account, rec)
	if err != nil {
		return false, "", err
	}
	won, err := c.shared.Swap(ctx, account, old, string(b))
	if err != nil || !won {
		return false, "", err
	}
	c.learn(account, string(b), rec, true)
	c.mirror(account, rec)
	return true, string(b), nil
}

// mirror writes rec to the local file unless the file holds it already
// (or something newer), so that the instance can go on alone with the
// newest refresh token it knew.
func (c *ClusterStore) mirror(account string, rec tokenstore.Record) {
	local, err := c.local.Load(account)
	if err == nil && local.RefreshToken == rec.RefreshToken && !rec.Newer(local) || err == nil && local.Newer(rec) {
		return
	}
	if err := c.local.Save(account, rec); err != nil {
		c.log.Warn("cannot copy the shared refresh token to the local token file", slog.String("account", account), slog.String("err", err.Error()))
	}
}

// keepLocal records rec, made while the store was unreachable: in the
// local file, and to be published when the store is back.
func (c *ClusterStore) keepLocal(account string, rec tokenstore.Record) error {
	c.mu.Lock()
	a := c.acct(account)
	a.known, a.has, a.pending = rec, true, true
	c.mu.Unlock()
	return c.local.Save(account, rec)
}

// setContested records the refresh token another instance is redeeming
// ("" when this instance holds the lease).
func (c *ClusterStore) setContested(account, rt string) {
	c.mu.Lock()
	c.acct(account).contested = rt
	c.mu.Unlock()
}

// isContested reports whether rt was being redeemed by another instance at
// this instance's last look.
func (c *ClusterStore) isContested(account, rt string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.acct(account)
	return a.contested != "" && a.contested == rt
}

// noteDown logs, once per outage, that delegated grants go on alone.
func (c *ClusterStore) noteDown(cause error) {
	c.mu.Lock()
	first := !c.down
	c.down = true
	c.mu.Unlock()
	if first {
		attrs := []any{}
		if cause != nil {
			attrs = append(attrs, slog.String("err", cause.Error()))
		}
		c.log.Warn("the shared store is unreachable: delegated grants keep their access tokens while they last, then refresh "+
			"with this instance's own copy of the refresh token, as a single relay does, until the store is back", attrs...)
	}
}

// noteBack records that the store was found back or restarted: what this
// instance made meanwhile is published, and for reconcileGrace nobody
// redeems a record another instance may be about to replace.
func (c *ClusterStore) noteBack(now time.Time) {
	c.mu.Lock()
	c.backAt = now
	c.down = false
	c.mu.Unlock()
}

// graceLeft is how long, from now, the reconciliation after the store's
// return lasts.
func (c *ClusterStore) graceLeft(now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.backAt.IsZero() {
		return 0
	}
	return c.backAt.Add(reconcileGrace).Sub(now)
}

func (c *ClusterStore) lock(account string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locks[account]
	if !ok {
		l = &sync.Mutex{}
		c.locks[account] = l
	}
	return l
}

// Load returns the account's newest record: the shared store's when it is
// newer than the local file (and then copied to it), else the local
// file's. A shared record that does not decrypt is an error wrapping
// tokenstore.ErrDecrypt.
func (c *ClusterStore) Load(account string) (tokenstore.Record, error) {
	if c.shared.Healthy() {
		ctx, cancel := context.WithTimeout(context.Background(), storeCall)
		defer cancel()
		v, err := c.sync(ctx, account)
		switch {
		case errors.Is(err, tokenstore.ErrDecrypt):
			return tokenstore.Record{}, err
		case err == nil && v.ok:
			return v.rec, nil
		}
	}
	if rec, ok := c.newest(account); ok {
		return rec, nil
	}
	return c.local.Load(account)
}

// Save stores r (a sign-in) in the local file and publishes it: a sign-in
// is newer than every record of the account (Record.Newer), so the other
// instances redeem it from their next refresh on instead of reporting
// that the account needs a sign-in. With the store unreachable it is
// published when the store is back; a shared record sealed with another
// key is not overwritten (the error says so).
func (c *ClusterStore) Save(account string, r tokenstore.Record) error {
	if err := c.local.Save(account, r); err != nil {
		return err
	}
	c.mu.Lock()
	a := c.acct(account)
	if !a.has || !a.known.Newer(r) {
		a.known, a.has, a.pending = r, true, true
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), storeCall)
	defer cancel()
	v, err := c.sync(ctx, account)
	switch {
	case errors.Is(err, tokenstore.ErrDecrypt):
		return fmt.Errorf("saved in the local token file, not in the shared store: %w; give every instance the same key, or replace the shared record with `oauthrelay login -replace`", err)
	case err != nil:
		c.log.Warn("the shared store is unreachable: the sign-in is saved in the local token file and reaches the other instances when the store is back",
			slog.String("account", account), slog.String("err", err.Error()))
	case v.ok && v.rec.RefreshToken == r.RefreshToken:
		c.log.Info("refresh token saved in the shared store", slog.String("account", account))
	}
	return nil
}

// Delete removes the account's local file and its shared record, whether
// or not they decrypt: `oauthrelay login -replace` before a new sign-in.
func (c *ClusterStore) Delete(account string) error {
	if err := c.local.Delete(account); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.accts, account)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), storeCall)
	defer cancel()
	for range 4 {
		raw, err := c.shared.Get(ctx, account)
		if err != nil {
			return fmt.Errorf("the shared store's record of %s: %w", account, err)
		}
		if raw == "" {
			return nil
		}
		if won, err := c.shared.Swap(ctx, account, raw, ""); err != nil || won {
			return err
		}
	}
	return fmt.Errorf("the shared store's record of %s kept changing", account)
}

// withAccess is rec with the access token at added under key, and the
// other access tokens that have not expired kept.
func withAccess(rec tokenstore.Record, key string, at tokenstore.AccessToken, now time.Time) tokenstore.Record {
	acc := map[string]tokenstore.AccessToken{}
	for k, v := range maps.All(rec.Access) {
		if v.Expiry.After(now) {
			acc[k] = v
		}
	}
	acc[key] = at
	rec.Access = acc
	return rec
}
