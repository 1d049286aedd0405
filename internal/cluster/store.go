// Package cluster is the store several relay instances share: a Redis (or
// Valkey) server holding what must be counted once for all of them — each
// mailbox's upstream connections, its pace and its daily recipients — and
// the instances' heartbeats and queue depths.
//
// Every primitive is one Lua script, so it is atomic on the server however
// many instances call it at once (Redis runs a script to its end before
// any other command). Times that Exchange's limits are counted in (the
// pace, the day) come from the caller's clock, as the local limits do;
// leases that must expire when an instance dies are kept on the server's
// own clock (TIME), so instances' clocks need not agree.
//
// The client is github.com/redis/go-redis/v9, the maintained client of the
// Redis project: connection pooling, RESP2/3, TLS, ACL users, EVALSHA with
// a fallback to EVAL. Writing that well is more than this relay should own.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/oauthrelay/oauthrelay/config"
)

const (
	// keyPrefix starts every key of the relay in the store, so it can
	// share a server (and a database) with other users.
	keyPrefix = "oauthrelay:"
	// opTimeout bounds one call to the store. On loopback a call takes
	// well under a millisecond; one that takes this long means the store
	// is unreachable, and the caller falls back to its safe share.
	opTimeout = 500 * time.Millisecond
	// heartbeatEvery is how often an instance says it is alive (and
	// renews its connection leases, and checks a store found down);
	// leaseTTL how long a lease outlives its last renewal: an instance
	// that dies holding connection slots frees them within it.
	heartbeatEvery = time.Second
	leaseTTL       = 15 * time.Second
	// probeEvery is how often a store found down is asked again, so that
	// the instances notice its return within this of each other (see
	// delivery.SharedLimits: each keeps its safe share for a pace window
	// after it rejoins, for the ones that have not yet).
	probeEvery = 100 * time.Millisecond
)

// Store is one instance's connection to the shared store. Its methods are
// safe for concurrent use; Close ends it.
type Store struct {
	rdb      *redis.Client
	instance string
	log      *slog.Logger

	// lease is leaseTTL; tests shorten it.
	lease time.Duration

	down  atomic.Bool // the last call failed; see Healthy
	gen   atomic.Uint64
	epoch string // the store's epoch at the last heartbeat (loop only)
	// fewerSince is when the heartbeat first saw fewer instances than
	// Instances says (loop only; see seen).
	fewerSince time.Time
	instances  atomic.Int64
	// changed is closed and replaced when down flips (see Changed).
	mu      sync.Mutex
	changed chan struct{}
	held    map[string]map[string]bool // semaphore key → holders of this instance, renewed
	publish func() (QueueStats, bool)  // the queue stats to publish, see PublishQueue
	days    map[string]dayView         // lower-case mailbox → its day as last read (see Day)

	// now is the clock the mailboxes' limits are kept by (Options.Now).
	now func() time.Time

	stop   chan struct{}
	wg     sync.WaitGroup
	joined bool // Join was called: Close leaves the instances
}

// Open connects to the store of c (c.Enabled()). It fails only on a
// configuration it cannot use; a store that does not answer yet is a
// store that is down (Healthy false), and the instance runs on its safe
// share until it answers. Only Join makes it an instance that others
// count (a command such as `queue list` only reads).
func Open(c config.Cluster, log *slog.Logger, opts ...Options) (*Store, error) {
	opt, err := options(c)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		rdb:      redis.NewClient(opt),
		instance: c.Instance,
		log:      log.With("store", opt.Addr, "instance", c.Instance),
		changed:  make(chan struct{}),
		held:     map[string]map[string]bool{},
		days:     map[string]dayView{},
		stop:     make(chan struct{}),
		lease:    leaseTTL,
		now:      time.Now,
	}
	s.instances.Store(1)
	if len(opts) > 0 && opts[0].Lease > 0 {
		s.lease = opts[0].Lease
	}
	if len(opts) > 0 && opts[0].Now != nil {
		s.now = opts[0].Now
	}
	return s, nil
}

// Options are a Store's settings beyond the configuration.
type Options struct {
	// Lease is how long a connection slot outlives its holder's last
	// renewal; zero is leaseTTL (15 s). Tests on a fast clock shorten
	// it, so that a killed instance's slots free within a queued
	// message's wait.
	Lease time.Duration
	// Now is the clock the mailboxes' limits are kept by: the Senders'
	// (delivery.Clock), which the heartbeat needs to age out the daily
	// counts it reads. Nil is the system clock; tests and benchmarks on
	// a fast clock pass theirs.
	Now func() time.Time
}

// Join starts the instance's heartbeat (see heartbeat) until Close. The
// connection slots a previous life of this instance (same name) still
// holds are freed first: it died holding them.
func (s *Store) Join() {
	s.joined = true
	s.forgetPreviousLife()
	s.heartbeat()
	s.wg.Go(s.loop)
}

// forgetPreviousLife removes this instance's members from every
// connection semaphore (best effort: a store that does not answer frees
// them at their leases' end).
func (s *Store) forgetPreviousLife() {
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	iter := s.rdb.Scan(ctx, 0, keyPrefix+"conn:*", 100).Iterator()
	for n := 0; iter.Next(ctx) && n < maxQueues; n++ {
		s.result(forgetScript.Run(ctx, s.rdb, []string{iter.Val()}, s.instance+":").Err())
	}
	s.result(iter.Err())
}

// options turns the configuration into the client's.
func options(c config.Cluster) (*redis.Options, error) {
	u, err := url.Parse(c.Store)
	if err != nil {
		return nil, fmt.Errorf("cluster.store: %w", err)
	}
	opt := &redis.Options{
		Addr:            u.Host,
		Username:        c.Username,
		Password:        c.Password,
		DialTimeout:     opTimeout,
		ReadTimeout:     opTimeout,
		WriteTimeout:    opTimeout,
		MaxRetries:      -1, // a failed call is the caller's to handle, now
		PoolSize:        16,
		DisableIdentity: true,
		Protocol:        2,
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		if opt.DB, err = strconv.Atoi(db); err != nil {
			return nil, fmt.Errorf("cluster.store: database %q: %w", db, err)
		}
	}
	if u.Scheme == "rediss" {
		roots, err := x509.SystemCertPool()
		if err != nil {
			roots = x509.NewCertPool()
		}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("cluster.ca_file: %w", err)
			}
			if !roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cluster.ca_file: no PEM certificates in %s", c.CAFile)
			}
		}
		opt.TLSConfig = &tls.Config{RootCAs: roots, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return opt, nil
}

// Instance is this relay's name in the store.
func (s *Store) Instance() string { return s.instance }

// Healthy reports whether the store answered the last call.
func (s *Store) Healthy() bool { return !s.down.Load() }

// Instances is how many instances were alive at the last heartbeat that
// reached the store (at least 1): the divisor of the safe share.
func (s *Store) Instances() int { return int(max(s.instances.Load(), 1)) }

// Generation changes each time the store comes back from an outage or is
// found to have restarted: what an instance registered before may be gone.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// Changed returns a channel closed when Healthy next changes.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// result records the outcome of a call: the first failure is logged once,
// as is the recovery, however many calls fail in between.
func (s *Store) result(err error) error {
	if err == nil || errors.Is(err, redis.Nil) {
		if s.down.CompareAndSwap(true, false) {
			s.log.Warn("the shared store is back: the mailboxes' limits are shared again")
			s.gen.Add(1)
			s.flip()
		}
		return nil
	}
	if s.down.CompareAndSwap(false, true) {
		s.log.Error("the shared store is unreachable: each mailbox falls back to this instance's safe share "+
			"(1 connection, its fraction of the pace) until it is back", "err", err, "instances", s.Instances())
		s.flip()
	}
	return fmt.Errorf("shared store: %w", err)
}

func (s *Store) flip() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// callCtx bounds one call by opTimeout, and only by it: a caller that
// gives up (an app that hung up during RCPT) does not cut the call short,
// or its context's error would count as the store's (result) and take
// every mailbox to its safe share. The caller waits for at most opTimeout
// more; on loopback a call takes well under a millisecond.
func callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
}

// loop beats the heart until Close.
func (s *Store) loop() {
	for {
		every := heartbeatEvery
		if s.down.Load() {
			every = probeEvery
		}
		t := time.NewTimer(every)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
			s.heartbeat()
		}
	}
}

// heartbeat says this instance is alive, learns how many are, renews
// this instance's leases of connection slots, publishes its queue and
// reads the mailboxes' days (see Day).
func (s *Store) heartbeat() {
	ctx, cancel := callCtx(context.Background())
	r, err := heartbeatScript.Run(ctx, s.rdb, []string{keyPrefix + "instances", keyPrefix + "epoch"},
		s.instance, s.lease.Milliseconds(), s.newID()).Slice()
	cancel()
	if s.result(err) != nil {
		return
	}
	if len(r) == 2 {
		n, _ := r[0].(int64)
		e, _ := r[1].(string)
		s.seen(n, time.Now())
		if s.epoch != "" && e != s.epoch {
			// The store restarted without this instance noticing: what
			// it held there is gone, as after an outage.
			s.log.Warn("the shared store restarted and lost its counts: this instance registers what it holds again")
			s.gen.Add(1)
			s.flip()
		}
		s.epoch = e
	}
	if s.renewAll() != nil {
		return
	}
	// Each step has a call's time of its own: a heartbeat of an instance
	// with many mailboxes on a busy host must not look like a lost store.
	ctx, cancel = callCtx(context.Background())
	err = s.refreshDays(ctx)
	cancel()
	if err != nil {
		return
	}
	s.mu.Lock()
	publish := s.publish
	s.mu.Unlock()
	if publish != nil {
		if st, ok := publish(); ok {
			st.Instance, st.At = s.instance, time.Now()
			if v, err := json.Marshal(st); err == nil {
				ctx, cancel := callCtx(context.Background())
				s.result(s.rdb.Set(ctx, queueKey(s.instance), v, queueTTL).Err())
				cancel()
			}
		}
	}
}

// maxRenew bounds the connection slots one renewal script renews.
const maxRenew = 500

// renewAll renews every connection slot this instance holds, maxRenew a
// round trip (one per slot took longer than a call may take, for an
// instance holding a few hundred on a busy host).
func (s *Store) renewAll() error {
	s.mu.Lock()
	var keys, holders []string
	for key, hs := range s.held {
		for h := range hs {
			keys, holders = append(keys, key), append(holders, h)
		}
	}
	s.mu.Unlock()
	for i := 0; i < len(keys); i += maxRenew {
		j := min(i+maxRenew, len(keys))
		args := []any{s.lease.Milliseconds()}
		for _, h := range holders[i:j] {
			args = append(args, h)
		}
		ctx, cancel := callCtx(context.Background())
		err := renewScript.Run(ctx, s.rdb, keys[i:j], args...).Err()
		cancel()
		if err := s.result(err); err != nil {
			return err
		}
	}
	return nil
}

// seen takes the instances alive at a heartbeat. A count that grows is
// taken at once; one that shrinks only after it stayed lower for a lease:
// an instance that died is gone by then, while a store that restarted
// empty counts only the instances that have beaten since, and the safe
// share must not grow from that.
func (s *Store) seen(n int64, now time.Time) {
	switch cur := s.instances.Load(); {
	case n >= cur:
		s.instances.Store(n)
		s.fewerSince = time.Time{}
	case s.fewerSince.IsZero():
		s.fewerSince = now
	case now.Sub(s.fewerSince) >= s.lease:
		s.instances.Store(n)
		s.fewerSince = time.Time{}
	}
}

// Ping asks the store now (for /readyz) and reports whether it answered.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	return s.result(s.rdb.Ping(ctx).Err())
}

// Close stops the heartbeat, frees the connection slots still held and
// closes the client.
func (s *Store) Close() error {
	close(s.stop)
	s.wg.Wait()
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	s.mu.Lock()
	for key, hs := range s.held {
		for h := range hs {
			s.rdb.ZRem(ctx, key, h)
		}
	}
	s.held = map[string]map[string]bool{}
	s.mu.Unlock()
	if s.joined {
		// Only an instance that joined leaves: a reader under the
		// same name (`queue list` on the instance's host) must not
		// take the running relay out of the count.
		s.rdb.ZRem(ctx, keyPrefix+"instances", s.instance)
	}
	return s.rdb.Close()
}
