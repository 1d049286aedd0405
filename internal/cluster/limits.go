package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"
)

// The keys of a mailbox's limits; mailbox is compared without regard to
// case, as the Senders do.
func connKey(mailbox string) string { return keyPrefix + "conn:" + strings.ToLower(mailbox) }
func paceKey(mailbox string) string { return keyPrefix + "pace:" + strings.ToLower(mailbox) }

// inFlightFor is how long a message taken but not yet settled counts
// against the pace, measured from when it took its slot: an instance that
// dies with messages in flight frees their slots after this. It is longer
// than any transaction may last (DATA of a large message on a slow line).
const inFlightFor = 15 * time.Minute

// newID returns a member name unique among all instances: the instance's
// name and 8 random bytes.
func (s *Store) newID() string {
	var b [8]byte
	rand.Read(b[:])
	return s.instance + ":" + hex.EncodeToString(b[:])
}

// TakeConnection takes one of limit connection slots of mailbox across
// all instances: ok false when live holders have them all. The slot is
// leased, renewed by this instance's heartbeat, and freed by
// ReleaseConnection or, if the instance dies, leaseTTL after its last
// renewal. It implements delivery.SharedLimits.
func (s *Store) TakeConnection(ctx context.Context, mailbox string, limit int) (string, bool, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	key, h := connKey(mailbox), s.newID()
	got, err := semAcquireScript.Run(ctx, s.rdb, []string{key}, h, limit, s.lease.Milliseconds()).Int()
	if err := s.result(err); err != nil {
		return "", false, err
	}
	if got != 1 {
		return "", false, nil
	}
	s.mu.Lock()
	if s.held[key] == nil {
		s.held[key] = map[string]bool{}
	}
	s.held[key][h] = true
	s.mu.Unlock()
	return h, true, nil
}

// ReleaseConnection frees a slot TakeConnection took. A store that does
// not answer frees it at its lease's end.
func (s *Store) ReleaseConnection(mailbox, slot string) {
	key := connKey(mailbox)
	s.mu.Lock()
	delete(s.held[key], slot)
	if len(s.held[key]) == 0 {
		delete(s.held, key)
	}
	s.mu.Unlock()
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	s.result(s.rdb.ZRem(ctx, key, slot).Err())
}

// TakePace takes a slot in mailbox's pace, limit messages in any window
// of the caller's clock across all instances, at now: ok false, with
// when a slot frees by time alone, when limit count already. The slot
// counts as in flight (inFlightFor) until PaceSent or RefundPace.
func (s *Store) TakePace(ctx context.Context, mailbox string, limit int, now time.Time, window time.Duration) (string, bool, time.Time, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	id := s.newID()
	r, err := windowTakeScript.Run(ctx, s.rdb, []string{paceKey(mailbox)}, id, limit, now.UnixMilli(),
		now.Add(inFlightFor).UnixMilli(), (inFlightFor + window).Milliseconds()).Int64Slice()
	if err := s.result(err); err != nil {
		return "", false, time.Time{}, err
	}
	if r[0] == 1 {
		return id, true, time.Time{}, nil
	}
	var free time.Time
	if r[1] > 0 {
		free = time.UnixMilli(r[1])
	}
	return "", false, free, nil
}

// PaceSent counts the message of slot as sent at now: it holds its place
// in the pace until a window later.
func (s *Store) PaceSent(mailbox, slot string, now time.Time, window time.Duration) {
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	s.result(s.rdb.ZAddXX(ctx, paceKey(mailbox), zmember(slot, now.Add(window))).Err())
}

// RefundPace gives back a slot whose message never reached DATA.
func (s *Store) RefundPace(mailbox, slot string) {
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	s.result(s.rdb.ZRem(ctx, paceKey(mailbox), slot).Err())
}

// AddPace counts messages this instance sent at the given times while
// the store was down, so that the shared pace knows them once it is back.
func (s *Store) AddPace(ctx context.Context, mailbox string, sent []time.Time, window time.Duration) error {
	if len(sent) == 0 {
		return nil
	}
	ctx, cancel := callCtx(ctx)
	defer cancel()
	ms := make([]zm, 0, len(sent))
	for _, t := range sent {
		ms = append(ms, zmember(s.newID(), t.Add(window)))
	}
	return s.result(s.rdb.ZAdd(ctx, paceKey(mailbox), ms...).Err())
}
