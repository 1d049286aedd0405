package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// queueTTL is how long an instance's published queue stays in the store
// after its last heartbeat: one that stopped is soon no longer listed.
const queueTTL = 10 * heartbeatEvery

func queueKey(instance string) string { return keyPrefix + "queue:" + instance }

// QueueStats is one instance's queue as it publishes it: every instance
// keeps its own spool, and the others see its depth through the store.
type QueueStats struct {
	Instance string    `json:"instance"`
	At       time.Time `json:"at"` // when it was published
	Depth    int       `json:"depth"`
	InFlight int       `json:"in_flight"`
	Failed   int       `json:"failed"`
	Oldest   time.Time `json:"oldest,omitzero"`
}

// PublishQueue makes the heartbeat publish what f returns (ok false:
// nothing, no queue yet).
func (s *Store) PublishQueue(f func() (QueueStats, bool)) {
	s.mu.Lock()
	s.publish = f
	s.mu.Unlock()
}

// maxQueues bounds the instances Queues reads.
const maxQueues = 1000

// Queues returns every instance's published queue, by instance name.
func (s *Store) Queues(ctx context.Context) ([]QueueStats, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	var keys []string
	iter := s.rdb.Scan(ctx, 0, queueKey("*"), 100).Iterator()
	for iter.Next(ctx) && len(keys) < maxQueues {
		keys = append(keys, iter.Val())
	}
	if err := s.result(iter.Err()); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, nil
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err := s.result(err); err != nil {
		return nil, err
	}
	var out []QueueStats
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // expired between SCAN and MGET
		}
		var q QueueStats
		if err := json.Unmarshal([]byte(str), &q); err != nil {
			return out, fmt.Errorf("shared store: %s: %w", keys[i], err)
		}
		out = append(out, q)
	}
	slices.SortFunc(out, func(a, b QueueStats) int { return strings.Compare(a.Instance, b.Instance) })
	return out, nil
}

// staleAfter is how old a published queue may be before it counts as
// stale: its instance has missed three heartbeats (it stopped, or cannot
// reach the store).
const staleAfter = 3 * heartbeatEvery

// Stale reports whether q was published longer than three heartbeats
// before now.
func (q QueueStats) Stale(now time.Time) bool { return now.Sub(q.At) > staleAfter }

// Peer is one instance as the store knows it: Alive while its heartbeat's
// lease holds (on the store's clock), and its published queue (HasQueue
// false: it publishes none — no account of it has delivery: queue — or
// its entry expired).
type Peer struct {
	Name     string
	Alive    bool
	HasQueue bool
	Queue    QueueStats
}

// Peers returns every instance alive or with a queue still published, by
// name.
func (s *Store) Peers(ctx context.Context) ([]Peer, error) {
	qs, err := s.Queues(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := callCtx(ctx)
	defer cancel()
	alive, err := liveScript.Run(ctx, s.rdb, []string{keyPrefix + "instances"}, maxQueues).StringSlice()
	if err := s.result(err); err != nil {
		return nil, err
	}
	byName := map[string]*Peer{}
	for _, n := range alive {
		byName[n] = &Peer{Name: n, Alive: true}
	}
	for _, q := range qs {
		p := byName[q.Instance]
		if p == nil {
			p = &Peer{Name: q.Instance}
			byName[q.Instance] = p
		}
		p.HasQueue, p.Queue = true, q
	}
	out := make([]Peer, 0, len(byName))
	for _, p := range byName {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
