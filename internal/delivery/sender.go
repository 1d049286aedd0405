package delivery

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

const (
	// idleTimeout is how long an authenticated upstream session is kept
	// for reuse. Legacy apps connect once per message: a burst reuses one
	// session instead of paying TCP, TLS and XOAUTH2 for each message,
	// while a quiet relay holds no connection to Exchange for long.
	idleTimeout = time.Minute
	// quitTimeout bounds the polite QUIT when a session is closed.
	quitTimeout = 10 * time.Second
)

// Sender is the upstream side of one mailbox, shared by every account and
// app session that sends as it: the pool of its authenticated upstream
// SMTP sessions and the keeper of its limits (config.Limits), so that the
// relay keeps Exchange's limits rather than trips them.
//
//   - Connections: at most Limits.Connections sessions are open at once,
//     idle or in use or logging in. Idle ones are reused (most recently
//     parked first) with RSET between messages, closed after idleTimeout,
//     and not handed out once maxSessionAge after their login.
//   - Pace: at most Limits.MessagesPerMinute messages in any paceWindow
//     (see window). A message takes its slot before MAIL goes upstream.
//   - Recipients: at most Limits.RecipientsPerMessage per message, and
//     Limits.RecipientsPerDay in any rolling dayWindow (see dayLog).
//
// A message that finds no session and no free slot, or no room in the
// pace, waits in line (first come, first served) for at most its max wait,
// then gets errSendingLimit. When Exchange says a limit was hit anyway, the
// reply reaches that message's app as it is, and later messages wait: see
// learn.
//
// All methods are safe for concurrent use. Close ends it.
type Sender struct {
	target upstream.Target
	clock  Clock
	log    *slog.Logger
	// idleTimeout and maxAge are the constants as NewSender sets them;
	// tests shorten them.
	idleTimeout, maxAge time.Duration

	mu     sync.Mutex
	limits config.Limits
	closed bool
	// changed is closed and replaced at every change a waiter or an
	// observer may wait for (see notifyLocked).
	changed chan struct{}

	idle    []*session // parked, oldest first
	open    int        // sessions counted against Connections: idle, in use, logging in
	logging int        // of open, the logins in progress

	connQ, paceQ []*waiter // the messages waiting in line, first first
	pace         window
	day          dayLog
	learned      learned
	stats        counters

	// shared counts the limits with other instances (nil: this relay
	// alone), under sharedKey; slots are the shared connection slots held
	// (one per open session while shared); degraded is the safe share in
	// force since degradedAt (see SharedLimits).
	shared     SharedLimits
	sharedKey  string
	slots      []string
	degraded   bool
	degradedAt time.Time
	rejoinedAt time.Time // the last rejoin (see inReturnLocked)
	gen        uint64    // the store's Generation at the last rejoin
	// dayShare is how many recipients this instance may hold while the
	// store is down, dayOutage how many it has held since the loss (and
	// in the return window after it), dayKnown whether the store's count
	// was known at the loss (see degradeDayLocked).
	dayShare, dayOutage int
	dayKnown            bool
	// stopWatch ends watchShared, watch joins it.
	stopWatch chan struct{}
	watch     sync.WaitGroup

	idleTimer, wakeTimer timerSlot
	// timers counts timer callbacks armed or running, waiting the Begins
	// in a wait, bg the QUITs of sessions closed while in use: Close joins
	// all three.
	timers, waiting, bg sync.WaitGroup
}

// learned is what Exchange's replies taught: limits lower than the
// configured ones, for a while.
type learned struct {
	conns      int       // the connection limit in force until connsUntil
	connsUntil time.Time //
	loginAfter time.Time // no new login before (after a 432 at login)
	paceUntil  time.Time // the pace counts as full until (after throttling)
	quotaUntil time.Time // the day's quota counts as used up until
}

type counters struct {
	waits          uint64
	waitTime       time.Duration
	paceWaits      uint64
	paceWaitTime   time.Duration
	limitReplies   uint64
	exchangeLimits uint64
	degraded       uint64 // times the safe share came into force
}

// session is one authenticated upstream session.
type session struct {
	c       *smtpclient.Client
	loginAt time.Time
	since   time.Time // parked at (when idle)
}

// waiter is a message's place in a line; only its identity matters.
type waiter struct{ _ byte }

// SenderOptions are a Sender's settings.
type SenderOptions struct {
	// Limits are the mailbox's limits (config.Config.MailboxLimits); the
	// zero value is config.DefaultLimits(). Values below their minimum
	// are raised to it (1; 0 for MaxWait).
	Limits config.Limits
	// Clock is the time the limits are kept by; nil is the system clock.
	Clock Clock
	// Logger hears about limits Exchange enforced and messages turned
	// away; nil discards.
	Logger *slog.Logger
	// Shared, when set, counts the connections, the pace and the daily
	// recipients with other relay instances (see SharedLimits).
	Shared SharedLimits
}

// NewSender returns the Sender of t's mailbox. Without options it keeps
// config.DefaultLimits() on the system clock; only the first options are
// used. t.Account names the mailbox in replies and logs.
func NewSender(t upstream.Target, opts ...SenderOptions) *Sender {
	var o SenderOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Limits == (config.Limits{}) {
		o.Limits = config.DefaultLimits()
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sender{
		target:      t,
		clock:       o.Clock,
		log:         o.Logger.With("mailbox", t.Account.Mailbox),
		idleTimeout: idleTimeout,
		maxAge:      maxSessionAge,
		limits:      sane(o.Limits),
		changed:     make(chan struct{}),
		shared:      o.Shared,
		sharedKey:   t.Account.Mailbox,
	}
	if s.shared != nil {
		s.shared.Day(s.sharedKey) // the store keeps it current from now on
		s.stopWatch = make(chan struct{})
		s.watch.Go(func() { s.watchShared(s.stopWatch) })
	}
	return s
}

// SetLimits puts l in force (a reload): the next Begin and the messages
// waiting now are held to it; transactions already past their wait go on.
// Idle sessions over a lowered connection limit are closed.
func (s *Sender) SetLimits(l config.Limits) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits = sane(l)
	now := s.clock.Now()
	for s.open > s.connLimitLocked(now) && len(s.idle) > 0 {
		s.idle[0].c.Close()
		s.idle = s.idle[1:]
		s.open--
	}
	s.rearmIdleLocked(now)
	s.notifyLocked()
}

// Ready reports whether the account of cred can send now. A session of
// the mailbox that is logged in (idle or in use) shows the upstream takes
// the mailbox's logins, so then only cred's token is asked for (a password
// passthrough account's password is checked that way). With none, one is
// logged in with cred and parked for the next message — if a connection
// is free now: Ready never waits, and never opens one over the limit. A
// login that Exchange answers 432 (its connection limit) is learned from
// and not the app's failure: its token came.
func (s *Sender) Ready(ctx context.Context, cred upstream.Credentials) error {
	s.mu.Lock()
	now := s.clock.Now()
	s.expireIdleLocked(now)
	login := !s.closed && s.open == s.logging && s.canLoginLocked(now) && s.takeSharedConnLocked()
	if login {
		s.open++
		s.logging++
		s.notifyLocked()
	}
	s.mu.Unlock()
	if !login {
		if _, err := cred.Token(ctx); err != nil {
			return upstream.TokenError(s.target, events.SMTP, err)
		}
		return nil
	}
	ss, limited, err := s.login(ctx, cred)
	if limited {
		return nil
	}
	if err != nil {
		return err
	}
	s.put(ss)
	return nil
}

// Close wakes the messages waiting (their Begin returns ErrClosed), stops
// the timers and closes the idle sessions; sessions in use are closed when
// they come back. It returns once everything it started has ended.
func (s *Sender) Close() {
	s.mu.Lock()
	idle := s.idle
	first := !s.closed
	s.idle, s.closed = nil, true
	s.open -= len(idle)
	s.stopLocked(&s.idleTimer)
	s.stopLocked(&s.wakeTimer)
	s.notifyLocked()
	s.mu.Unlock()
	if s.stopWatch != nil && first {
		close(s.stopWatch)
	}
	s.watch.Wait()
	s.waiting.Wait()
	s.timers.Wait()
	s.bg.Wait()
	var wg sync.WaitGroup
	for _, ss := range idle {
		wg.Go(func() { quit(ss.c) })
	}
	wg.Wait()
}

// Stats is a snapshot of a Sender, for metrics and the status page.
type Stats struct {
	// At is the time of the snapshot on the Sender's clock.
	At time.Time
	// Open is the sessions counted against the connection limit: Idle
	// ones and InUse ones (in a transaction or logging in).
	Open, Idle, InUse int
	// WaitingSession and WaitingPace are the messages waiting now for a
	// session and for their slot in the pace.
	WaitingSession, WaitingPace int
	// Waits is how many times a message had to wait, and WaitTime how
	// long they waited in all (on the Sender's clock); PaceWaits and
	// PaceWaitTime are the part of them spent waiting for a slot in the
	// pace (the rest waited for a session).
	Waits, PaceWaits       uint64
	WaitTime, PaceWaitTime time.Duration
	// LimitReplies counts the 451 4.7.0 replies the relay gave because
	// a limit was reached (max wait passed, daily recipients);
	// ExchangeLimitReplies the replies in which Exchange said a limit
	// was hit (432 4.3.2, 554 5.2.0 quota).
	LimitReplies, ExchangeLimitReplies uint64
	// MessagesInWindow is the messages counting against the pace now
	// (sent in the last minute, or in flight).
	MessagesInWindow int
	// RecipientsToday is the recipients of messages sent in the last
	// 24 hours (by this instance); PendingRecipients those of open
	// transactions.
	RecipientsToday, PendingRecipients int
	// SharedRecipientsToday is, with shared limits, every instance's
	// recipients of the last 24 hours (open transactions' too) as the
	// store last counted them; SharedDayKnown is false before it has;
	// SafeShareRecipients is how many this instance may still hold on
	// its safe share (SafeShare only).
	SharedRecipientsToday, SafeShareRecipients int
	SharedDayKnown                             bool
	// Limits are the configured limits; Effective the ones in force
	// (Connections lowered after Exchange's 432).
	Limits, Effective config.Limits
	// Shared: the limits are counted with other instances in a store;
	// SafeShare: the store is unreachable and this instance keeps its
	// safe share (1 connection, its fraction of the pace) on its own;
	// SafeShares counts the times it had to.
	Shared, SafeShare bool
	SafeShares        uint64
	// ConnectionsLoweredUntil, LoginsPausedUntil, PaceBlockedUntil and
	// QuotaBlockedUntil are the ends of what Exchange's replies imposed;
	// zero when not in force.
	ConnectionsLoweredUntil, LoginsPausedUntil, PaceBlockedUntil, QuotaBlockedUntil time.Time
}

// BackingOff reports whether anything Exchange's replies imposed is in
// force.
func (st Stats) BackingOff() bool {
	return !st.ConnectionsLoweredUntil.IsZero() || !st.LoginsPausedUntil.IsZero() ||
		!st.PaceBlockedUntil.IsZero() || !st.QuotaBlockedUntil.IsZero()
}

// Stats returns a snapshot.
func (s *Sender) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	s.day.expire(now)
	st := Stats{
		At:                   now,
		Open:                 s.open,
		Idle:                 len(s.idle),
		InUse:                s.open - len(s.idle),
		WaitingSession:       len(s.connQ),
		WaitingPace:          len(s.paceQ),
		Waits:                s.stats.waits,
		WaitTime:             s.stats.waitTime,
		PaceWaits:            s.stats.paceWaits,
		PaceWaitTime:         s.stats.paceWaitTime,
		LimitReplies:         s.stats.limitReplies,
		ExchangeLimitReplies: s.stats.exchangeLimits,
		MessagesInWindow:     s.pace.count(now),
		RecipientsToday:      s.day.counted,
		PendingRecipients:    s.day.pending,
		Limits:               s.limits,
		Effective:            s.limits,
	}
	st.Effective.Connections = s.connLimitLocked(now)
	future := func(t time.Time) time.Time {
		if now.Before(t) {
			return t
		}
		return time.Time{}
	}
	if s.shared != nil {
		st.Shared = true
		st.SafeShare = s.degraded || !s.shared.Healthy()
		st.SafeShares = s.stats.degraded
		if st.SafeShare {
			st.Effective.MessagesPerMinute = s.safePace(s.limits.MessagesPerMinute)
			if s.degraded {
				st.SafeShareRecipients = s.dayShareLeftLocked(now)
			}
		}
		var blocked time.Time
		st.SharedRecipientsToday, _, blocked, st.SharedDayKnown = s.shared.Day(s.sharedKey)
		st.QuotaBlockedUntil = future(blocked)
	}
	if st.Effective.Connections < s.limits.Connections {
		st.ConnectionsLoweredUntil = s.learned.connsUntil
	}
	st.LoginsPausedUntil = future(s.learned.loginAfter)
	st.PaceBlockedUntil = future(s.learned.paceUntil)
	st.QuotaBlockedUntil = later(st.QuotaBlockedUntil, future(s.learned.quotaUntil))
	return st
}

// notifyLocked wakes everything waiting on changed.
func (s *Sender) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
	if s.shared != nil {
		s.trimSlotsLocked()
	}
}

// quit ends a healthy session politely.
func quit(c *smtpclient.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), quitTimeout)
	defer cancel()
	c.Quit(ctx)
}
