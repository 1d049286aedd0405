package delivery

import (
	"context"
	"time"
)

// SharedLimits is a store where several relay instances count one
// mailbox's limits together (package cluster implements it on Redis), so
// that three instances keep Exchange's 3 connections and 30 messages a
// minute in total rather than each. The Sender still keeps its own count
// too: a shared slot is taken only once the local one is free.
//
// When the store does not answer (a call fails, Healthy false) the Sender
// keeps a safe share on its own: 1 connection, and 1/Instances of the
// pace (at least 1 message a minute), until the store is back; then it
// first registers what it holds (its open sessions, the messages it sent
// in the window) so that the shared count is true again.
type SharedLimits interface {
	// Healthy reports whether the store answered its last call;
	// Instances how many instances were alive when it last did.
	Healthy() bool
	Instances() int
	// Generation changes when the store came back or restarted: what
	// was registered before may be gone, and is registered again.
	Generation() uint64
	// TakeConnection takes one of limit connection slots of mailbox:
	// ok false when other holders have them all. The slot is leased:
	// it frees by itself if this instance dies.
	TakeConnection(ctx context.Context, mailbox string, limit int) (slot string, ok bool, err error)
	ReleaseConnection(mailbox, slot string)
	// TakePace takes a slot in mailbox's pace of limit messages in any
	// window at now, or says when one frees by time alone (zero: not
	// known). PaceSent and RefundPace settle it.
	TakePace(ctx context.Context, mailbox string, limit int, now time.Time, window time.Duration) (slot string, ok bool, free time.Time, err error)
	PaceSent(mailbox, slot string, now time.Time, window time.Duration)
	RefundPace(mailbox, slot string)
	// AddPace counts messages sent while the store was down.
	AddPace(ctx context.Context, mailbox string, sent []time.Time, window time.Duration) error
}

// sharedRetry is how soon (on the Sender's clock) a message that found
// every shared slot taken by other instances asks again: they free their
// slots without telling this one.
const sharedRetry = 100 * time.Millisecond

// sharedLocked reports whether the mailbox's limits are shared now. On
// the store's return it first registers what the Sender holds (rejoin);
// until that succeeds the Sender stays on its safe share.
func (s *Sender) sharedLocked(ctx context.Context) bool {
	if s.shared == nil {
		return false
	}
	if !s.shared.Healthy() {
		s.degradeLocked()
		return false
	}
	if g := s.shared.Generation(); g != s.gen && !s.degraded {
		// Back (or restarted) before this mailbox noticed it gone: its
		// slots and sent messages may have been lost with the store.
		s.slots = nil
		s.degraded, s.degradedAt = true, s.clock.Now().Add(-s.pace.length())
	}
	if s.degraded && !s.rejoinLocked(ctx) {
		return false
	}
	return true
}

// degradeLocked puts the safe share in force.
func (s *Sender) degradeLocked() {
	if s.degraded {
		return
	}
	s.degraded, s.degradedAt = true, s.clock.Now()
	s.stats.degraded++
	s.log.Warn("the shared store is unreachable: this mailbox keeps a safe share of its limits on this instance",
		"connections", 1, "messages_per_minute", s.safePace(s.limits.MessagesPerMinute))
	// Slots held may have expired in the store by the time it is back:
	// rejoin takes fresh ones for every session then.
	for _, slot := range s.slots {
		s.bg.Go(func() { s.shared.ReleaseConnection(s.sharedKey, slot) })
	}
	s.slots = nil
}

// rejoinLocked registers the sessions opened and the messages sent while
// the store was down, and reports whether all of it is: only then does
// the shared count include this instance's share again.
func (s *Sender) rejoinLocked(ctx context.Context) bool {
	for len(s.slots) < s.open {
		slot, ok, err := s.shared.TakeConnection(ctx, s.sharedKey, s.limits.Connections)
		if err != nil || !ok {
			return false
		}
		s.slots = append(s.slots, slot)
	}
	// Every message of the window, not only those since the loss: a
	// store that restarted lost the rest. One the store still holds is
	// then counted twice, which errs on the safe side for a window. The
	// messages in flight count as sent now.
	now := s.clock.Now()
	sent := s.pace.sentSince(time.Time{})
	for range s.pace.inFlight {
		sent = append(sent, now)
	}
	if err := s.shared.AddPace(ctx, s.sharedKey, sent, s.pace.length()); err != nil {
		return false
	}
	s.degraded, s.gen, s.rejoinedAt = false, s.shared.Generation(), now
	s.log.Info("the mailbox's limits are shared with the other instances again")
	return true
}

// trimSlotsLocked frees the shared connection slots beyond the sessions
// open (one was closed), without waiting on the network under the lock.
func (s *Sender) trimSlotsLocked() {
	for len(s.slots) > s.open && len(s.slots) > 0 {
		slot := s.slots[len(s.slots)-1]
		s.slots = s.slots[:len(s.slots)-1]
		s.bg.Go(func() { s.shared.ReleaseConnection(s.sharedKey, slot) })
	}
}

// takeSharedConnLocked takes a shared slot for a new session when the
// limits are shared; ok false means all are taken elsewhere, or the safe
// share's grace is not over.
func (s *Sender) takeSharedConnLocked() bool {
	if s.shared == nil {
		return true
	}
	if !s.sharedLocked(context.Background()) {
		return !s.inGraceLocked(s.clock.Now())
	}
	slot, ok, err := s.shared.TakeConnection(context.Background(), s.sharedKey, s.limits.Connections)
	if err != nil {
		s.degradeLocked()
		return false // the grace starts now
	}
	if ok {
		s.slots = append(s.slots, slot)
	}
	return ok
}

// inGraceLocked reports whether the safe share is in its first pace
// window. What the other instances sent in the window before the store
// was lost, and the sessions they hold, are not known here: had each
// started on its share at once, the window straddling the loss could see
// the full pace before it plus every share after it (twice the limit),
// and the others' sessions beside a new one of this instance's. So for
// one window no message takes a new slot in the pace and no new session
// logs in (transactions under way finish, and sessions over the share
// close when they come back); after it the share alone is in force.
func (s *Sender) inGraceLocked(now time.Time) bool {
	return s.degraded && now.Before(s.graceEndLocked())
}

// graceEndLocked is when the safe share's grace ends: a window, and a
// sixth of one more for the transactions under way when the store was
// lost (admitted in the shared count, they end a little later).
func (s *Sender) graceEndLocked() time.Time {
	return s.degradedAt.Add(s.pace.length() + s.pace.length()/6)
}

// degradations is how many times the safe share came into force.
func (s *Sender) degradations() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.degraded
}

// inReturnLocked reports whether the Sender rejoined the store less than a
// pace window ago. The others may not have yet (they notice the store's
// return within probeEvery of each other), and what they send on their
// safe share is not in the store until they do: so for a window the
// Sender keeps its own safe share as well as the shared count.
func (s *Sender) inReturnLocked(now time.Time) bool {
	return !s.rejoinedAt.IsZero() && now.Before(s.rejoinedAt.Add(s.pace.length()))
}

// safePace is this instance's share of limit while the store is down.
func (s *Sender) safePace(limit int) int {
	return max(limit/max(s.shared.Instances(), 1), 1)
}
