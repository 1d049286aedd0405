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
