package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// budget is how long one message may wait in all: for its slot in the
// pace and for a session, however often it has to.
type budget struct {
	deadline time.Time
	// shared: the message took its slot in the shared pace, when the
	// safe share had come into force degradations times (see acquire).
	shared       bool
	degradations uint64
}

// budget starts a message's wait of at most wait (MailboxMaxWait: the
// mailbox's MaxWait).
func (s *Sender) budget(wait time.Duration) budget {
	s.mu.Lock()
	defer s.mu.Unlock()
	if wait < 0 {
		wait = s.limits.MaxWait
	}
	return budget{deadline: s.clock.Now().Add(wait)}
}

// awaitLocked waits in line q until try, called for the first in line,
// takes what the message waits for. try returns false when it cannot yet,
// with the time at which that may change by time alone (or zero: only
// when something is released). The first in line is served at once; the
// rest wait for a change (notifyLocked). s.mu is held on entry and on
// return, and released while waiting.
//
// The wait ends with an error when the Sender closes (ErrClosed), when
// ctx ends, and at the budget's deadline (the limit's 451).
func (s *Sender) awaitLocked(ctx context.Context, b budget, q *[]*waiter, try func(now time.Time) (bool, time.Time)) error {
	if s.closed {
		return ErrClosed
	}
	start := s.clock.Now()
	if len(*q) == 0 {
		if ok, _ := try(start); ok {
			return nil
		}
	}
	w := new(waiter)
	*q = append(*q, w)
	s.waiting.Add(1)
	s.notifyLocked()
	var (
		timer   Timer
		expired chan struct{}
	)
	defer func() {
		if timer != nil && timer.Stop() {
			s.timers.Done()
		}
		*q = slices.DeleteFunc(*q, func(x *waiter) bool { return x == w })
		waited := s.clock.Now().Sub(start)
		s.stats.waits++
		s.stats.waitTime += waited
		if q == &s.paceQ {
			s.stats.paceWaits++
			s.stats.paceWaitTime += waited
		}
		s.notifyLocked()
		s.waiting.Done()
	}()
	for {
		if s.closed {
			return ErrClosed
		}
		now := s.clock.Now()
		if (*q)[0] == w {
			ok, at := try(now)
			if ok {
				return nil
			}
			if !at.IsZero() {
				s.wakeLocked(now, at)
			}
		}
		if !now.Before(b.deadline) {
			return s.limitErrLocked(now)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting to send as %s: %w", s.target.Account.Mailbox, err)
		}
		if timer == nil {
			expired = make(chan struct{})
			timer = s.afterLocked(b.deadline.Sub(now), func() { close(expired) })
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-expired:
		case <-ctx.Done():
		}
		s.mu.Lock()
	}
}

// limitErrLocked is the reply to a message whose wait ran out.
func (s *Sender) limitErrLocked(now time.Time) *LimitError {
	s.stats.limitReplies++
	if ok, free := s.dayOpenLocked(now); !ok {
		s.log.Warn("a message was turned away: the mailbox reached its daily recipient limit",
			"limit", s.limits.RecipientsPerDay, "frees_at", free)
		return errDailyLimit(s.target.Account.Mailbox, s.limits.RecipientsPerDay, free)
	}
	l := s.limits
	l.Connections = s.connLimitLocked(now)
	s.log.Info("a message waited its max wait for the mailbox's limits",
		"messages_per_minute", l.MessagesPerMinute, "connections", l.Connections)
	return errSendingLimit(s.target.Account.Mailbox, l)
}

// reservePace waits for the message's slot in the pace and takes it. A
// day's quota that frees only after the wait could end fails at once.
// With shared limits the slot is taken in the store too, and returned
// (empty otherwise) for the Submission to settle.
func (s *Sender) reservePace(ctx context.Context, b budget) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, free := s.dayOpenLocked(s.clock.Now()); !ok && (free.IsZero() || free.After(b.deadline)) {
		s.stats.limitReplies++
		s.log.Warn("a message was turned away: the mailbox reached its daily recipient limit",
			"limit", s.limits.RecipientsPerDay, "frees_at", free)
		return "", errDailyLimit(s.target.Account.Mailbox, s.limits.RecipientsPerDay, free)
	}
	var slot string
	err := s.awaitLocked(ctx, b, &s.paceQ, func(now time.Time) (bool, time.Time) {
		if ok, free := s.dayOpenLocked(now); !ok {
			return false, free
		}
		if now.Before(s.learned.paceUntil) {
			return false, s.learned.paceUntil
		}
		ok, free, sl := s.paceFreeLocked(ctx, now)
		if ok {
			slot = sl
			s.pace.take()
			s.notifyLocked()
		}
		return ok, free
	})
	return slot, err
}

// paceFreeLocked is window.free for the limit in force: the configured
// one alone, or with the store's count of every instance's messages, or
// the safe share while the store is down.
func (s *Sender) paceFreeLocked(ctx context.Context, now time.Time) (bool, time.Time, string) {
	limit := s.limits.MessagesPerMinute
	shared := s.sharedLocked(ctx)
	if s.shared != nil && !shared {
		if s.inGraceLocked(now) {
			return false, s.graceEndLocked(), ""
		}
		limit = s.safePace(limit)
	}
	local := limit
	if shared && s.inReturnLocked(now) {
		local = s.safePace(limit)
	}
	ok, free := s.pace.free(now, local)
	if !ok || !shared {
		return ok, free, ""
	}
	slot, ok, free, err := s.shared.TakePace(ctx, s.sharedKey, limit, now, s.pace.length())
	switch {
	case err != nil:
		s.degradeLocked()
		return false, s.graceEndLocked(), "" // see inGraceLocked
	case ok:
		return true, time.Time{}, slot
	}
	// Another instance's message in flight frees its slot without a
	// word to this one: ask again soon, or when one frees by time.
	if retry := now.Add(sharedRetry); free.IsZero() || free.After(retry) {
		free = retry
	}
	return false, free, ""
}

// dayOpenLocked reports whether the mailbox may take a message's
// recipients at all now, and if not, when that changes: the quota Exchange
// said is used up, or the recipients counted reaching the limit — with
// shared limits every instance's, or the safe share's.
func (s *Sender) dayOpenLocked(now time.Time) (bool, time.Time) {
	s.day.expire(now)
	if now.Before(s.learned.quotaUntil) {
		return false, s.learned.quotaUntil
	}
	if over := s.day.counted - s.limits.RecipientsPerDay; over >= 0 {
		return false, s.day.freeAt(over + 1)
	}
	if s.shared != nil {
		return s.sharedDayOpenLocked(now)
	}
	return true, time.Time{}
}

// acquire waits for a session: an idle one (login false), or a free slot
// for a new login (login true, ss nil).
func (s *Sender) acquire(ctx context.Context, b budget) (ss *session, login bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.awaitLocked(ctx, b, &s.connQ, func(now time.Time) (bool, time.Time) {
		var ok bool
		var at time.Time
		ss, login, ok, at = s.takeLocked(now)
		return ok, at
	})
	if err != nil || !b.shared || s.stats.degraded == b.degradations {
		return ss, login, err
	}
	// The message took its slot in the shared pace, and the store was
	// lost while it waited for a session: sent now, it could land in a
	// window the other instances fill on their safe shares. It goes on
	// only once this instance's own safe share has room for it (it is
	// already counted in the local window).
	err = s.awaitLocked(ctx, b, &s.paceQ, func(now time.Time) (bool, time.Time) {
		if s.inGraceLocked(now) {
			return false, s.graceEndLocked()
		}
		if !s.degraded {
			return true, time.Time{}
		}
		if n := s.pace.count(now); n <= s.safePace(s.limits.MessagesPerMinute) {
			return true, time.Time{}
		}
		return false, now.Add(sharedRetry)
	})
	if err != nil {
		if ss != nil {
			s.idle = append(s.idle, ss)
			ss.since = s.clock.Now()
			s.rearmIdleLocked(ss.since)
		} else if login {
			s.open--
			s.logging--
		}
		s.notifyLocked()
		return nil, false, err
	}
	return ss, login, nil
}

// takeLocked takes the most recently parked session, or a slot for a new
// login; failing both it returns when that may change by time alone.
func (s *Sender) takeLocked(now time.Time) (ss *session, login, ok bool, at time.Time) {
	s.expireIdleLocked(now)
	if n := len(s.idle); n > 0 {
		ss = s.idle[n-1]
		s.idle[n-1] = nil
		s.idle = s.idle[:n-1]
		s.rearmIdleLocked(now)
		s.notifyLocked()
		return ss, false, true, time.Time{}
	}
	if s.canLoginLocked(now) {
		if !s.takeSharedConnLocked() {
			return nil, false, false, now.Add(sharedRetry) // taken by other instances
		}
		s.open++
		s.logging++
		s.notifyLocked()
		return nil, true, true, time.Time{}
	}
	if s.open < s.connLimitLocked(now) {
		return nil, false, false, s.learned.loginAfter // paused logins
	}
	if now.Before(s.learned.connsUntil) {
		return nil, false, false, s.learned.connsUntil // the cool-down ends
	}
	return nil, false, false, time.Time{}
}

// canLoginLocked reports whether a new session may log in now.
func (s *Sender) canLoginLocked(now time.Time) bool {
	return s.open < s.connLimitLocked(now) && !now.Before(s.learned.loginAfter)
}

// connLimitLocked is the connection limit in force.
func (s *Sender) connLimitLocked(now time.Time) int {
	n := s.limits.Connections
	if s.shared != nil && (s.degraded || !s.shared.Healthy() || s.inReturnLocked(now)) {
		n = 1 // the safe share
	}
	if now.Before(s.learned.connsUntil) {
		n = min(n, s.learned.conns)
	}
	return max(n, 1)
}

// login logs a session in on a slot taken for it. On failure the slot is
// freed; limited reports a 432 at login, which is learned from (see
// learnLocked) and means the message should wait and try again.
func (s *Sender) login(ctx context.Context, cred upstream.Credentials) (ss *session, limited bool, err error) {
	c, err := upstream.SMTP(ctx, s.target, cred)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logging--
	if err != nil {
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.Reply != nil && classify(ue.Reply) != noLimit {
			// Exchange counts this session as not open; learn while
			// it is still counted, so "the others" are the ones before.
			limited = s.learnLocked(ue.Reply, stageLogin) == limitConnections
		}
		s.open--
		s.notifyLocked()
		return nil, limited, err
	}
	return &session{c: c, loginAt: s.clock.Now()}, false, nil
}

// put gives a healthy session (ready for MAIL) back: parked for reuse, or
// closed when the Sender is closed, the session is past maxSessionAge, or
// more are open than the limit now allows.
func (s *Sender) put(ss *session) {
	s.mu.Lock()
	now := s.clock.Now()
	if s.closed {
		s.open--
		s.notifyLocked()
		s.mu.Unlock()
		quit(ss.c)
		return
	}
	if now.Sub(ss.loginAt) >= s.maxAge || s.open > s.connLimitLocked(now) {
		s.open--
		s.notifyLocked()
		// QUIT without holding up the app's reply; Close joins it.
		s.bg.Go(func() { quit(ss.c) })
		s.mu.Unlock()
		return
	}
	ss.since = now
	s.idle = append(s.idle, ss)
	s.rearmIdleLocked(now)
	s.notifyLocked()
	s.mu.Unlock()
}

// drop closes a session that is no longer in step with the upstream and
// frees its slot.
func (s *Sender) drop(ss *session) {
	ss.c.Close()
	s.mu.Lock()
	s.open--
	s.notifyLocked()
	s.mu.Unlock()
}

// replace closes a session found dead when its transaction began and
// hands its slot on: to the next parked session (its own slot is freed),
// or to a new login on the same slot. With logins paused it frees the
// slot and returns neither; the caller waits in line.
func (s *Sender) replace(ss *session) (next *session, login bool) {
	ss.c.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.notifyLocked()
	now := s.clock.Now()
	s.expireIdleLocked(now)
	if n := len(s.idle); n > 0 && !s.closed {
		next = s.idle[n-1]
		s.idle[n-1] = nil
		s.idle = s.idle[:n-1]
		s.open--
		s.rearmIdleLocked(now)
		return next, false
	}
	if s.closed || now.Before(s.learned.loginAfter) || s.open > s.connLimitLocked(now) {
		s.open--
		return nil, false
	}
	s.logging++
	return nil, true
}

// expireIdleLocked closes the parked sessions idle for idleTimeout or
// logged in maxSessionAge ago, without QUIT (this runs on paths that must
// not wait on the network), and frees their slots.
func (s *Sender) expireIdleLocked(now time.Time) {
	n := len(s.idle)
	s.idle = slices.DeleteFunc(s.idle, func(ss *session) bool {
		if s.expiredLocked(ss, now) {
			ss.c.Close()
			return true
		}
		return false
	})
	if gone := n - len(s.idle); gone > 0 {
		s.open -= gone
		s.notifyLocked()
		s.rearmIdleLocked(now)
	}
}

func (s *Sender) expiredLocked(ss *session, now time.Time) bool {
	return !now.Before(s.expiryLocked(ss))
}

// expiryLocked is when a parked session stops being handed out.
func (s *Sender) expiryLocked(ss *session) time.Time {
	idle := ss.since.Add(s.idleTimeout)
	if aged := ss.loginAt.Add(s.maxAge); aged.Before(idle) {
		return aged
	}
	return idle
}

// rearmIdleLocked sets the idle timer for the first parked session to
// expire, or stops it when none is parked.
func (s *Sender) rearmIdleLocked(now time.Time) {
	if len(s.idle) == 0 {
		s.stopLocked(&s.idleTimer)
		return
	}
	next := s.expiryLocked(s.idle[0])
	for _, ss := range s.idle[1:] {
		if e := s.expiryLocked(ss); e.Before(next) {
			next = e
		}
	}
	if s.idleTimer.t != nil && !s.idleTimer.at.After(next) {
		return // it fires first and re-arms then
	}
	s.armLocked(&s.idleTimer, now, next, func() { s.expireIdleLocked(s.clock.Now()) })
}

// wakeLocked makes sure the waiters re-check at at, when something they
// wait for frees by time alone (a pace slot, the end of a cool-down).
func (s *Sender) wakeLocked(now, at time.Time) {
	if s.wakeTimer.t != nil && !s.wakeTimer.at.After(at) {
		return
	}
	s.armLocked(&s.wakeTimer, now, at, s.notifyLocked)
}

// timerSlot holds one re-armable timer of the Sender. gen tells a
// callback that was replaced or stopped while it waited for the lock.
type timerSlot struct {
	t   Timer
	at  time.Time
	gen uint64
}

// armLocked (re)sets slot to call f, with s.mu held, at at. Nothing is
// armed once the Sender is closed.
func (s *Sender) armLocked(slot *timerSlot, now, at time.Time, f func()) {
	s.stopLocked(slot)
	if s.closed {
		return
	}
	gen := slot.gen
	slot.at = at
	slot.t = s.afterLocked(at.Sub(now), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if slot.gen != gen {
			return
		}
		slot.t = nil
		f()
	})
}

// stopLocked stops slot's timer; a callback already waiting for the lock
// then does nothing.
func (s *Sender) stopLocked(slot *timerSlot) {
	slot.gen++
	if slot.t == nil {
		return
	}
	if slot.t.Stop() {
		s.timers.Done()
	}
	slot.t = nil
}

// afterLocked arms a timer whose callback Close joins.
func (s *Sender) afterLocked(d time.Duration, f func()) Timer {
	s.timers.Add(1)
	return s.clock.AfterFunc(d, func() {
		defer s.timers.Done()
		f()
	})
}
