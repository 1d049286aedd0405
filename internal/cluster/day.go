package cluster

import (
	"context"
	"iter"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The daily recipient count of a mailbox, shared: Exchange counts the
// recipients of a mailbox in any 24 hours (10,000 by default, then
// 554 5.2.0 SubmissionQuotaExceededException, and the mailbox may be
// blocked for the rest of the day). Three instances each keeping their own
// count would let 30,000 through.
//
// The count is kept in per-minute buckets rather than a member per
// recipient (as the pace is): a hash of "minute|instance" → recipients, a
// "total" field, and a sorted set of the same fields scored by when they
// stop counting (the minute's end plus 24 hours: a recipient frees up to a
// minute late, never early — the local day log's rule). That bounds a
// mailbox's keys to 1,440 fields per instance whatever the limit (a tenant
// may allow 1,000,000 recipients a day, the config's maximum, which as
// sorted-set members of ~25 bytes would be tens of MB per mailbox), and
// keeping the total makes a take O(1) plus what ages out. Each instance
// has its own field per minute so that registering its counts again after
// an outage is idempotent (see AddRecipients): a store that was only
// unreachable already holds them, one that restarted lost them, and the
// instance need not know which.
//
// A recipient is held in the store at RCPT (so that open transactions on
// several instances cannot pass the limit together), in the minute of its
// RCPT, and moved to the minute its message was sent at the final reply
// (RecipientsSent), or given back (ReleaseRecipients). One whose instance
// dies before that stays counted from its RCPT: over-counting a few
// recipients for a day errs on the limit's side.

// dayWindow is Exchange's rolling 24 hours (delivery's dayWindow);
// dayBucket the buckets' width.
const (
	dayWindow = 24 * time.Hour
	dayBucket = time.Minute
)

func dayKey(mailbox string) string      { return keyPrefix + "day:" + strings.ToLower(mailbox) }
func dayIdxKey(mailbox string) string   { return keyPrefix + "dayidx:" + strings.ToLower(mailbox) }
func dayBlockKey(mailbox string) string { return keyPrefix + "dayblock:" + strings.ToLower(mailbox) }

// dayKeys are the three keys of a mailbox's day, in the scripts' order.
func dayKeys(mailbox string) []string {
	return []string{dayKey(mailbox), dayIdxKey(mailbox), dayBlockKey(mailbox)}
}

// minuteOf is the start of t's bucket, in ms since the epoch.
func minuteOf(t time.Time) int64 {
	ms := t.UnixMilli()
	return ms - ms%dayBucket.Milliseconds()
}

// dayExpiry is when a bucket stops counting: its end plus the window.
func dayExpiry(minute int64) int64 { return minute + (dayBucket + dayWindow).Milliseconds() }

// dayKeep is the keys' lifetime after their last write (real time): a
// mailbox idle for a day has nothing left to count.
const dayKeep = dayWindow + 2*dayBucket

// dayField is this instance's field of a bucket.
func (s *Store) dayField(minute int64) string {
	return strconv.FormatInt(minute, 10) + "|" + s.instance
}

// dayView is what the store last said of a mailbox's day (see Day).
type dayView struct {
	count           int
	oldest, blocked time.Time
	known           bool
}

// maxDayViews bounds the mailboxes one refresh script reads.
const maxDayViews = 100

// Day returns the mailbox's day as the store last counted it: count is
// every instance's recipients of the last 24 hours (held ones too),
// oldest when the oldest bucket stops counting, blocked when Exchange's
// quota reply stops blocking the day (zero: none); known is false when the
// store has not answered for the mailbox yet. It does not ask the store:
// every call that touches the day, and the heartbeat (every second, for
// every mailbox asked about once), refresh it. It implements
// delivery.SharedLimits.
func (s *Store) Day(mailbox string) (count int, oldest, blocked time.Time, known bool) {
	k := strings.ToLower(mailbox)
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.days[k]
	if !ok {
		s.days[k] = dayView{}
	}
	return v.count, v.oldest, v.blocked, v.known
}

// setDay records a view of mailbox's day; block and oldest are kept when
// the caller did not learn them (zero).
func (s *Store) setDay(mailbox string, count int64, oldest, block int64) {
	k := strings.ToLower(mailbox)
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.days[k]
	v.count, v.known = int(count), true
	if oldest >= 0 {
		v.oldest = msTime(oldest)
	}
	if block >= 0 {
		v.blocked = msTime(block)
	}
	s.days[k] = v
}

// msTime is a time in ms since the epoch; 0 is the zero time.
func msTime(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// TakeRecipient holds a place for one recipient of mailbox in its day:
// limit recipients in any 24 hours of the caller's clock, every
// instance's and every held one counted. ok false when the day is full, or
// blocked after Exchange's quota reply (BlockDay), with when it frees
// (zero: not by time alone). The place is held in the minute of now until
// RecipientsSent or ReleaseRecipients settles it. It implements
// delivery.SharedLimits.
func (s *Store) TakeRecipient(ctx context.Context, mailbox string, limit int, now time.Time) (bool, time.Time, error) {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	m := minuteOf(now)
	r, err := dayTakeScript.Run(ctx, s.rdb, dayKeys(mailbox), s.dayField(m), 1, limit, now.UnixMilli(),
		dayExpiry(m), dayKeep.Milliseconds()).Int64Slice()
	if err := s.result(err); err != nil {
		return false, time.Time{}, err
	}
	// {ok, total, free, block, oldest}
	s.setDay(mailbox, r[1], r[4], r[3])
	if r[0] == 1 {
		return true, time.Time{}, nil
	}
	return false, msTime(r[2]), nil
}

// heldPairs turns the times recipients were held at into the scripts'
// field, count pairs of this instance.
func (s *Store) heldPairs(held []time.Time) []any {
	n := map[int64]int{}
	for _, t := range held {
		n[minuteOf(t)]++
	}
	var args []any
	for _, m := range slices.Sorted(maps.Keys(n)) {
		args = append(args, s.dayField(m), n[m])
	}
	return args
}

// RecipientsSent counts the recipients held at the times held (one time
// each, as TakeRecipient took them) as sent at now: they move to now's
// minute and count until a day after it. A store that lost them (it
// restarted) counts them anew.
func (s *Store) RecipientsSent(mailbox string, held []time.Time, now time.Time) {
	if len(held) == 0 {
		return
	}
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	m := minuteOf(now)
	args := append([]any{now.UnixMilli(), s.dayField(m), dayExpiry(m), dayKeep.Milliseconds()}, s.heldPairs(held)...)
	s.move(ctx, mailbox, args)
}

// move runs dayMoveScript and keeps the count it returns.
func (s *Store) move(ctx context.Context, mailbox string, args []any) {
	n, err := dayMoveScript.Run(ctx, s.rdb, dayKeys(mailbox)[:2], args...).Int64()
	if s.result(err) == nil {
		s.setDay(mailbox, n, -1, -1)
	}
}

// ReleaseRecipients gives back recipients held at the times held whose
// message was not sent (refused, aborted).
func (s *Store) ReleaseRecipients(mailbox string, held []time.Time) {
	if len(held) == 0 {
		return
	}
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	args := append([]any{0, "", 0, dayKeep.Milliseconds()}, s.heldPairs(held)...)
	s.move(ctx, mailbox, args)
}

// AddRecipients registers the recipients this instance sent as mailbox in
// the day, by minute (the minute's start and its count), after the store
// was unreachable or restarted: the store then counts at least that many
// of this instance's in each minute. Registering the same counts twice
// changes nothing, so the whole day can be sent each time. Minutes that
// have aged out by now are skipped.
func (s *Store) AddRecipients(ctx context.Context, mailbox string, now time.Time, sent iter.Seq2[time.Time, int]) error {
	ctx, cancel := callCtx(ctx)
	defer cancel()
	n := map[int64]int{}
	for t, c := range sent {
		if c > 0 {
			n[minuteOf(t)] += c
		}
	}
	if len(n) == 0 {
		return nil
	}
	args := []any{now.UnixMilli(), dayKeep.Milliseconds()}
	for _, m := range slices.Sorted(maps.Keys(n)) {
		args = append(args, s.dayField(m), dayExpiry(m), n[m])
	}
	total, err := dayAddScript.Run(ctx, s.rdb, dayKeys(mailbox)[:2], args...).Int64()
	if err := s.result(err); err != nil {
		return err
	}
	s.setDay(mailbox, total, -1, -1)
	return nil
}

// BlockDay shares what Exchange's quota reply (554 5.2.0
// SubmissionQuotaExceededException) said: no instance takes a recipient of
// mailbox before until (on the callers' clock). A later block wins.
func (s *Store) BlockDay(mailbox string, until, now time.Time) {
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	ttl := max(until.Sub(now), 0) + dayBucket
	s.result(dayBlockScript.Run(ctx, s.rdb, []string{dayBlockKey(mailbox)}, until.UnixMilli(), ttl.Milliseconds()).Err())
}

// refreshDays reads the day of every mailbox Day was asked about (at most
// maxDayViews a call): part of the heartbeat, so that an instance that has
// not sent as a mailbox for a while still knows how much of its day the
// others used when the store is lost (its safe share is taken from that).
func (s *Store) refreshDays(ctx context.Context) error {
	s.mu.Lock()
	boxes := slices.Sorted(maps.Keys(s.days))
	s.mu.Unlock()
	now := s.now().UnixMilli()
	for chunk := range slices.Chunk(boxes, maxDayViews) {
		var keys []string
		for _, b := range chunk {
			keys = append(keys, dayKeys(b)...)
		}
		r, err := dayViewScript.Run(ctx, s.rdb, keys, now).Int64Slice()
		if err := s.result(err); err != nil {
			return err
		}
		for i, b := range chunk {
			if 3*i+2 < len(r) {
				s.setDay(b, r[3*i], r[3*i+1], r[3*i+2])
			}
		}
	}
	return nil
}
