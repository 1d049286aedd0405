package delivery

import (
	"context"
	"iter"
	"time"
)

// SharedLimits is a store where several relay instances count one
// mailbox's limits together (package cluster implements it on Redis), so
// that three instances keep Exchange's 3 connections, 30 messages a
// minute and 10,000 recipients a day in total rather than each. The
// Sender still keeps its own count too: a shared slot is taken only once
// the local one is free.
//
// When the store does not answer (a call fails, Healthy false) the Sender
// keeps a safe share on its own: 1 connection, 1/Instances of the pace
// (at least 1 message a minute) and 1/Instances of the recipients the day
// had left when the store was lost, until the store is back; then it
// first registers what it holds (its open sessions, the messages it sent
// in the window, its recipients of the day) so that the shared count is
// true again.
type SharedLimits interface {
	// Healthy reports whether the store answered its last call;
	// Instances how many instances were alive when it last did.
	Healthy() bool
	Instances() int
	// Generation changes when the store came back or restarted: what
	// was registered before may be gone, and is registered again.
	// Changed is closed when Healthy or Generation next changes.
	Generation() uint64
	Changed() <-chan struct{}
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

	// TakeRecipient holds a place for one recipient in mailbox's day:
	// limit in any 24 hours at now, every instance's recipients and
	// every held one counted. ok false: the day is full, or blocked
	// after Exchange's quota reply, until free (zero: not known).
	// RecipientsSent (the message was sent at now) and
	// ReleaseRecipients (it was not) settle the places held at the
	// times given, one time per recipient.
	TakeRecipient(ctx context.Context, mailbox string, limit int, now time.Time) (ok bool, free time.Time, err error)
	RecipientsSent(mailbox string, held []time.Time, now time.Time)
	ReleaseRecipients(mailbox string, held []time.Time)
	// AddRecipients registers the recipients this instance sent as
	// mailbox in the day, by minute (its start, and the count): the
	// store counts at least these of this instance's in each minute, so
	// registering the whole day again changes nothing.
	AddRecipients(ctx context.Context, mailbox string, now time.Time, sent iter.Seq2[time.Time, int]) error
	// BlockDay shares Exchange's quota reply: no instance takes a
	// recipient of mailbox before until.
	BlockDay(mailbox string, until, now time.Time)
	// Day is the store's count of mailbox's day as last seen, without
	// asking it: every instance's recipients of the last 24 hours,
	// when the oldest of them stop counting, and the block in force;
	// known false when the store has not said yet. Asking once makes
	// the store keep it current (the heartbeat reads it): the safe
	// share of the day is taken from it when the store is lost.
	Day(mailbox string) (count int, oldest, blocked time.Time, known bool)
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
		// slots, sent messages and recipients may have been lost with
		// the store. No grace: the store answers, and rejoin follows.
		// The slots are given back first: where they survived (a
		// generation counted twice for one return), they would
		// otherwise hold places against this rejoin until their leases
		// ran out.
		s.releaseSlotsLocked()
		now := s.clock.Now()
		s.degraded, s.degradedAt = true, now.Add(-s.pace.length())
		s.degradeDayLocked(now)
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
	s.degradeDayLocked(s.degradedAt)
	day := any(s.dayShare)
	if !s.dayKnown {
		day = "none: the store never said how many the day had left"
	}
	s.log.Warn("the shared store is unreachable: this mailbox keeps a safe share of its limits on this instance",
		"connections", 1, "messages_per_minute", s.safePace(s.limits.MessagesPerMinute), "recipients_until_back", day)
	// Slots held may have expired in the store by the time it is back:
	// rejoin takes fresh ones for every session then.
	s.releaseSlotsLocked()
}

// releaseSlotsLocked gives back every shared connection slot held, without
// waiting on the network under the lock.
func (s *Sender) releaseSlotsLocked() {
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
	// The whole day, for the same reason; the store keeps the larger of
	// its count and this one for each minute, so nothing counts twice.
	s.day.expire(now)
	if err := s.shared.AddRecipients(ctx, s.sharedKey, now, s.day.perMinute()); err != nil {
		return false
	}
	if now.Before(s.learned.quotaUntil) {
		s.shared.BlockDay(s.sharedKey, s.learned.quotaUntil, now)
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

// degradeDayLocked takes the safe share of the day at a loss of the store
// at now: the recipients the day had left as the store last counted them
// (every instance's, a heartbeat ago at most), divided among the
// instances. The others take theirs from the same count, so together they
// cannot pass the limit. A day Exchange's quota reply blocked stays
// blocked. Without a count (the store never answered for the mailbox)
// the share is none: what the others sent is not known at all.
func (s *Sender) degradeDayLocked(now time.Time) {
	count, _, blocked, known := s.shared.Day(s.sharedKey)
	s.dayKnown, s.dayOutage = known, 0
	s.dayShare = max(s.limits.RecipientsPerDay-count, 0) / max(s.shared.Instances(), 1)
	s.learned.quotaUntil = later(s.learned.quotaUntil, blocked)
}

// dayShareRoomLocked reports whether n more recipients fit the safe share
// of the day (see dayShareLeftLocked) and, if not, when that may change by
// time alone (zero: only when the store is back).
func (s *Sender) dayShareRoomLocked(now time.Time, n int) (bool, time.Time) {
	left := s.dayShareLeftLocked(now)
	switch {
	case left >= n:
		return true, time.Time{}
	case !s.dayKnown:
		return false, time.Time{}
	case now.Before(s.degradedAt.Add(dayWindow)):
		return false, s.degradedAt.Add(dayWindow)
	}
	return false, s.day.freeAt(n - left)
}

// dayShareLeftLocked is how many recipients the safe share of the day has
// left. In the day after the loss the share is dayShare; after it, every
// recipient the others sent before the loss has aged out, and the share
// is 1/Instances of the limit over this instance's own last 24 hours.
func (s *Sender) dayShareLeftLocked(now time.Time) int {
	if !s.dayKnown {
		return 0
	}
	if now.Before(s.degradedAt.Add(dayWindow)) {
		return max(s.dayShare-s.dayOutage, 0)
	}
	s.day.expire(now)
	own := s.limits.RecipientsPerDay / max(s.shared.Instances(), 1)
	return max(own-s.day.counted-s.day.pending, 0)
}

// sharedDayOpenLocked is dayOpenLocked's part for shared limits: the
// store's count as last seen (the take at RCPT is the authority), or the
// safe share while the store is down.
func (s *Sender) sharedDayOpenLocked(now time.Time) (bool, time.Time) {
	if !s.shared.Healthy() {
		s.degradeLocked()
	}
	if s.degraded {
		return s.dayShareRoomLocked(now, 1)
	}
	count, oldest, blocked, known := s.shared.Day(s.sharedKey)
	switch {
	case !known:
	case now.Before(blocked):
		return false, blocked
	case count >= s.limits.RecipientsPerDay:
		if !oldest.After(now) {
			oldest = time.Time{}
		}
		return false, oldest
	}
	return true, time.Time{}
}

// watchShared follows the store until stop is closed: when it is lost,
// every mailbox takes its safe share at once (the share of the day is
// taken from the store's count at the loss), and when it is back, or
// restarted, every mailbox registers what it holds within a probe of the
// store's return — one that sends nothing now too: its recipients of the
// day count for the others as long as they do for Exchange.
//
// A rejoin that fails with the store answering (the others hold every
// connection slot for now) is tried again every sharedRetry.
func (s *Sender) watchShared(stop <-chan struct{}) {
	for {
		changed := s.shared.Changed()
		s.mu.Lock()
		retry := false
		if !s.closed {
			retry = !s.sharedLocked(context.Background()) && s.shared.Healthy()
		}
		s.mu.Unlock()
		var again <-chan time.Time // nil: no retry
		if retry {
			again = time.After(sharedRetry) // collected unfired since Go 1.23
		}
		select {
		case <-stop:
			return
		case <-changed:
		case <-again:
		}
	}
}

// safePace is this instance's share of limit while the store is down.
func (s *Sender) safePace(limit int) int {
	return max(limit/max(s.shared.Instances(), 1), 1)
}
