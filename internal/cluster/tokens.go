package cluster

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Tokens is the store's part for delegated grants' token state
// (oauth.SharedTokens): one value per account, which oauth.ClusterStore
// keeps encrypted with the token store's key, written with
// compare-and-swap, and a lease per account held by one token source at
// a time. Without an expiry: a refresh token outlives any access token
// and must survive until the next rotation replaces it.
type Tokens struct{ s *Store }

// Tokens returns the store's token state.
func (s *Store) Tokens() *Tokens { return &Tokens{s: s} }

func tokenKey(account string) string      { return keyPrefix + "token:" + account }
func tokenLeaseKey(account string) string { return keyPrefix + "lease:token:" + account }

// Instance is this relay's name in the store.
func (t *Tokens) Instance() string { return t.s.instance }

// Healthy reports whether the store answered its last call.
func (t *Tokens) Healthy() bool { return t.s.Healthy() }

// Changed returns a channel closed when the store is found down, back, or
// restarted (its data lost) — each a moment to reconcile token state.
func (t *Tokens) Changed() <-chan struct{} { return t.s.Changed() }

// Get returns the account's value, "" when there is none.
func (t *Tokens) Get(ctx context.Context, account string) (string, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	v, err := t.s.rdb.Get(ctx, tokenKey(account)).Result()
	if err == redis.Nil {
		return "", t.s.result(nil)
	}
	return v, t.s.result(err)
}

// Swap replaces the account's value with new if it is old ("" for none;
// new "" deletes it) and reports whether it did.
func (t *Tokens) Swap(ctx context.Context, account, old, new string) (bool, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	n, err := tokenSwapScript.Run(ctx, t.s.rdb, []string{tokenKey(account)}, old, new).Int()
	if err := t.s.result(err); err != nil {
		return false, err
	}
	return n == 1, nil
}

// Lease takes or renews the account's refresh lease for holder, for ttl
// on the server's clock: ok false while another holder has it.
func (t *Tokens) Lease(ctx context.Context, account, holder string, ttl time.Duration) (bool, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	n, err := leaseScript.Run(ctx, t.s.rdb, []string{tokenLeaseKey(account)}, holder, ttl.Milliseconds()).Int()
	if err := t.s.result(err); err != nil {
		return false, err
	}
	return n == 1, nil
}

// Release gives the account's lease up if holder has it.
func (t *Tokens) Release(ctx context.Context, account, holder string) error {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	return t.s.result(leaseReleaseScript.Run(ctx, t.s.rdb, []string{tokenLeaseKey(account)}, holder).Err())
}

// tokenSwapScript: KEYS[1] value, ARGV old, new → 1 when the value was old
// ("" for none) and is new now (deleted when new is ""), 0 when it was
// something else.
var tokenSwapScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if (v or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1`)
