package cluster

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease takes or renews the lease called name for this instance for ttl:
// ok false when another instance holds it. It is how one instance at a
// time does a job all could do (refreshing one account's token).
func (s *Store) Lease(ctx context.Context, name string, ttl time.Duration) (bool, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	n, err := leaseScript.Run(ctx, s.rdb, []string{keyPrefix + "lease:" + name}, s.instance, ttl.Milliseconds()).Int()
	if err := s.result(err); err != nil {
		return false, err
	}
	return n == 1, nil
}

// ReleaseLease gives the lease up if this instance holds it.
func (s *Store) ReleaseLease(ctx context.Context, name string) error {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	return s.result(leaseReleaseScript.Run(ctx, s.rdb, []string{keyPrefix + "lease:" + name}, s.instance).Err())
}

// Get returns the value called name ("" when there is none).
func (s *Store) Get(ctx context.Context, name string) (string, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	v, err := s.rdb.Get(ctx, keyPrefix+"value:"+name).Result()
	if err == redis.Nil {
		return "", s.result(nil)
	}
	return v, s.result(err)
}

// Swap sets the value called name to new if it is old ("" for none) and
// reports whether it did: the compare-and-swap a rotation is written with,
// so that of two instances that read the same old value only one writes.
// ttl 0 keeps the value until it is swapped again.
func (s *Store) Swap(ctx context.Context, name, old, new string, ttl time.Duration) (bool, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	n, err := casScript.Run(ctx, s.rdb, []string{keyPrefix + "value:" + name}, old, new, ttl.Milliseconds()).Int()
	if err := s.result(err); err != nil {
		return false, err
	}
	return n == 1, nil
}
