package delivery

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// Where an upstream reply came, for learnLocked.
const (
	stageLogin = "login"
	stageMail  = "MAIL"
	stageRcpt  = "RCPT"
	stageData  = "DATA"
)

// Begin opens a transaction for one message from the envelope sender
// from: it waits for the message's slot in the pace, then for a session
// (a parked one, or a new login with cred), and sends MAIL. The two waits
// together last at most wait (MailboxMaxWait: the mailbox's MaxWait; 0:
// none), after which Begin returns 451 4.7.0 with the limits in force.
// ctx bounds the whole transaction.
//
// A parked session that died (Exchange closes idle ones), or answers MAIL
// with 421 (RFC 5321 §3.8: a server closing a session says 421 first), is
// replaced by the next parked one or a new login on its slot. A login
// Exchange answers 432 (its connection limit: another client holds
// connections of the mailbox) lowers the limit for a while and the message
// waits again within its budget: the app never sees that 432. Any other
// upstream refusal is returned as it is.
func (s *Sender) Begin(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions, wait time.Duration) (*Submission, error) {
	b := s.budget(wait)
	slot, err := s.reservePace(ctx, b)
	if err != nil {
		return nil, err
	}
	if slot != "" {
		b.shared, b.degradations = true, s.degradations()
	}
	m := &Submission{s: s, ctx: ctx, paced: true, paceSlot: slot, cred: cred, from: from, opts: opts, budget: b}
	ss, err := s.mail(ctx, cred, from, opts, b)
	if err != nil {
		m.finish(false, false)
		return nil, err
	}
	m.ss = ss
	return m, nil
}

// mail gets a session for a transaction and sends MAIL on it: Begin's
// work after the pace, and a Submission's when it resumes on a fresh
// session. A session lost at MAIL is replaced: a parked one by the next
// parked one or a login, a fresh login once by another.
func (s *Sender) mail(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions, b budget) (*session, error) {
	ss, login, err := s.acquire(ctx, b)
	relogged := false
	for {
		if err != nil {
			return nil, err
		}
		if login {
			var limited bool
			ss, limited, err = s.login(ctx, cred)
			if limited {
				ss, login, err = s.acquire(ctx, b)
				continue
			}
			if err != nil {
				continue
			}
		}
		err = ss.c.Mail(ctx, from, opts)
		if err == nil {
			return ss, nil
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code != 421 {
			// The upstream answered: the session is still in step.
			s.learn(se, stageMail)
			if hint := upstream.ExplainMail(se, from, s.target.Account.Mailbox); hint != "" && se.Code >= 500 {
				s.log.Warn("the upstream refused the sender", "from", from, "mailbox", s.target.Account.Mailbox,
					"reply", upstream.FormatReply(se), "fix", hint)
			}
			s.put(ss)
			return nil, se
		}
		// The session is gone, or closing (421): never usable again.
		if login && (relogged || se != nil) {
			s.drop(ss)
			if se != nil {
				return nil, se
			}
			return nil, &LostError{Stage: stageMail, Err: err}
		}
		if login {
			// A fresh session lost at its first MAIL: one more login,
			// as for a parked one (nothing was sent).
			s.drop(ss)
			relogged = true
			ss, login, err = s.acquire(ctx, b)
			continue
		}
		// It died while parked: the next one, or a new one.
		ss, login = s.replace(ss)
		err = nil
		if ss == nil && !login {
			ss, login, err = s.acquire(ctx, b)
		}
	}
}

// Submission is one message's transaction on a session of the Sender: it
// holds the message's slot in the pace and its recipients' place in the
// day's count until it finishes. Its methods are called one at a time; it
// implements Tx.
//
// What counts: a message counts against the pace from Begin on, and is
// refunded only if it ends before its data reached the upstream (Abort,
// a failed MAIL, the app's message failing to arrive). Recipients count
// against the day only once their message is sent (the upstream's 250 to
// the final dot, or a connection lost after the final dot may have gone,
// when the relay cannot know): Exchange counts the recipients of the
// messages submitted. But while a transaction is open its accepted
// recipients are held (pending), so concurrent transactions cannot
// together pass the limit.
type Submission struct {
	s     *Sender
	ctx   context.Context
	ss    *session // nil once finished
	rcpts int      // accepted upstream, pending in the day's count
	paced bool     // holds its slot in the pace
	// held are the times its recipients' places in the shared day were
	// taken at (see SharedLimits.TakeRecipient); outage counts those
	// held on the safe share instead, while the safe share had come into
	// force outageGen times.
	held      []time.Time
	outage    int
	outageGen uint64
	// paceSlot is its slot in the shared pace (empty: none, see
	// SharedLimits).
	paceSlot string

	// What resume needs to replay the transaction on a fresh session.
	cred     upstream.Credentials
	from     string
	opts     *smtp.MailOptions
	budget   budget
	accepted []acceptedRcpt
	resumed  bool // resume is done once
}

// acceptedRcpt is a recipient the upstream accepted, kept to be replayed.
type acceptedRcpt struct {
	to   string
	opts *smtp.RcptOptions
}

// Rcpt adds a recipient. Past RecipientsPerMessage it is 452 4.5.3, and
// past the day's recipients 451 4.7.0, both without asking the upstream;
// otherwise the upstream's reply.
func (m *Submission) Rcpt(to string, opts *smtp.RcptOptions) error {
	if m.ss == nil {
		return &LostError{Stage: stageRcpt, Err: errFinished}
	}
	h, err := m.s.holdRcpt(m.ctx, m.rcpts)
	if err != nil {
		return err
	}
	err = m.ss.c.Rcpt(m.ctx, to, opts)
	var se *smtp.SMTPError
	if err != nil && !errors.As(err, &se) && !m.resumed {
		if !m.resume(err) {
			m.s.releaseRcpt(h)
			return &LostError{Stage: stageRcpt, Err: err}
		}
		err = m.ss.c.Rcpt(m.ctx, to, opts)
	}
	if err == nil {
		m.rcpts++
		m.accepted = append(m.accepted, acceptedRcpt{to, opts})
		switch {
		case h.shared:
			m.held = append(m.held, h.at)
		case h.outage:
			m.outage++
			m.outageGen = h.gen
		}
		return nil
	}
	m.s.releaseRcpt(h)
	if errors.As(err, &se) {
		m.s.learn(se, stageRcpt)
		if se.Code == 421 {
			m.end(false, false, false)
		}
		return se
	}
	m.end(false, false, false)
	return &LostError{Stage: stageRcpt, Err: err}
}

// resume replaces a session lost during the envelope (before DATA
// nothing was sent, so nothing can be delivered twice): once per
// transaction, it gets a fresh session within the message's budget and
// replays MAIL and the recipients accepted so far, so the app never sees
// the loss. The lost session's slot is freed first, so the fresh one may
// take it. It reports whether the transaction goes on; if not, the
// transaction is finished.
func (m *Submission) resume(lost error) bool {
	m.resumed = true
	m.s.drop(m.ss)
	m.ss = nil
	if m.ctx.Err() == nil {
		m.s.log.Info("the upstream session was lost during the envelope; resuming on a fresh one", "err", lost)
		ss, err := m.s.mail(m.ctx, m.cred, m.from, m.opts, m.budget)
		if err == nil && m.replay(ss) {
			m.ss = ss
			return true
		}
		if err != nil {
			m.s.log.Info("resuming the transaction failed", "err", err)
		}
	}
	m.finish(false, false)
	return false
}

// replay sends the recipients accepted so far on ss; a fresh session that
// refuses one the first accepted, or dies too, cannot carry the same
// transaction and is dropped.
func (m *Submission) replay(ss *session) bool {
	for _, r := range m.accepted {
		if err := ss.c.Rcpt(m.ctx, r.to, r.opts); err != nil {
			m.s.log.Info("resuming the transaction failed at a recipient accepted before", "err", err)
			m.s.drop(ss)
			return false
		}
	}
	return true
}

// Data streams the message and returns the upstream's acceptance.
func (m *Submission) Data(r io.Reader) (*Accepted, error) {
	if m.ss == nil {
		return nil, &LostError{Stage: stageData, Err: errFinished}
	}
	text, n, err := m.ss.c.Data(m.ctx, r)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		m.end(true, true, true)
		return &Accepted{Reply: text, Bytes: n}, nil
	case errors.As(err, &se) && !isReadError(err):
		// The upstream answered the final dot: the session is still in
		// step unless it said it is closing. Nothing was submitted, but
		// the message counts against the pace: what Exchange counts of
		// a refused message is not known, and counting it errs on the
		// side of the limit.
		m.s.learn(se, stageData)
		m.end(se.Code != 421, true, false)
		return nil, se
	case isReadError(err):
		// The app's message ended early: the final dot was never sent
		// (smtpclient guarantees it), so the upstream discards what it
		// got and counts nothing. The session is left inside DATA.
		m.end(false, false, false)
		return nil, err
	}
	// The upstream went away: the final dot may have reached it, so the
	// message and its recipients count. The session is left without a
	// reply and cannot be reused.
	m.end(false, true, true)
	return nil, &LostError{Stage: stageData, Err: err}
}

func isReadError(err error) bool {
	var re *smtpclient.ReadError
	return errors.As(err, &re)
}

// Abort resets the upstream transaction and keeps the session for reuse;
// the message's pace slot and recipients are refunded. A session whose
// RSET is not answered 250 is closed instead: a 421 says the server is
// closing it, and after any other reply what it still holds of the
// transaction is not known (RFC 5321 §4.1.1.5: RSET must succeed).
func (m *Submission) Abort() {
	if m.ss == nil {
		return
	}
	err := m.ss.c.Reset(m.ctx)
	m.end(err == nil, false, false)
}

// end finishes the transaction: the session goes back (keep) or is
// closed, and sent and counted say whether the message counts against the
// pace and its recipients against the day.
func (m *Submission) end(keep, sent, counted bool) {
	ss := m.ss
	m.ss = nil
	m.finish(sent, counted)
	if keep {
		m.s.put(ss)
	} else {
		m.s.drop(ss)
	}
}

// finish settles the message's pace slot and recipients.
func (m *Submission) finish(sent, counted bool) {
	s := m.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if m.paced {
		m.paced = false
		if sent {
			s.pace.done(now)
		} else {
			s.pace.refund()
		}
		if slot := m.paceSlot; slot != "" {
			m.paceSlot = ""
			window := s.pace.length()
			s.bg.Go(func() {
				if sent {
					s.shared.PaceSent(s.sharedKey, slot, now, window)
				} else {
					s.shared.RefundPace(s.sharedKey, slot)
				}
			})
		}
	}
	s.day.pending -= m.rcpts
	if counted {
		s.day.add(now, m.rcpts)
	} else if m.outage > 0 && s.degraded && m.outageGen == s.stats.degraded {
		s.dayOutage -= m.outage
	}
	if held := m.held; len(held) > 0 {
		s.bg.Go(func() {
			if counted {
				s.shared.RecipientsSent(s.sharedKey, held, now)
			} else {
				s.shared.ReleaseRecipients(s.sharedKey, held)
			}
		})
	}
	m.rcpts, m.held, m.outage = 0, nil, 0
	s.notifyLocked()
}

// rcptHold is where holdRcpt held a recipient's place besides the local
// count: in the shared day at at (shared), or on the safe share of the
// day, while it had come into force gen times (outage).
type rcptHold struct {
	at             time.Time
	shared, outage bool
	gen            uint64
}

// holdRcpt takes a place for one more recipient of a transaction that has
// accepted have: within the message's limit and the day's, counting the
// recipients of every open transaction — with shared limits every
// instance's (the store's take), or within the safe share while the store
// is down. In the window after a rejoin both count: the others may not
// have registered their recipients again yet.
func (s *Sender) holdRcpt(ctx context.Context, have int) (rcptHold, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if have >= s.limits.RecipientsPerMessage {
		return rcptHold{}, errTooManyRcpts(s.limits.RecipientsPerMessage)
	}
	now := s.clock.Now()
	ok, free := s.dayOpenLocked(now)
	if over := s.day.counted + s.day.pending + 1 - s.limits.RecipientsPerDay; ok && over > 0 {
		ok, free = false, s.day.freeAt(over)
	}
	var h rcptHold
	if ok && s.shared != nil {
		ok, free, h = s.holdSharedRcptLocked(ctx, now)
	}
	if !ok {
		s.stats.limitReplies++
		s.log.Warn("a recipient was turned away: the mailbox reached its daily recipient limit",
			"limit", s.limits.RecipientsPerDay, "frees_at", free, "shared", s.shared != nil)
		return rcptHold{}, errDailyLimit(s.target.Account.Mailbox, s.limits.RecipientsPerDay, free)
	}
	s.day.pending++
	return h, nil
}

// holdSharedRcptLocked is holdRcpt's part for shared limits.
func (s *Sender) holdSharedRcptLocked(ctx context.Context, now time.Time) (bool, time.Time, rcptHold) {
	var h rcptHold
	if s.sharedLocked(ctx) {
		ok, free, err := s.shared.TakeRecipient(ctx, s.sharedKey, s.limits.RecipientsPerDay, now)
		switch {
		case err != nil:
			s.degradeLocked()
		case !ok:
			return false, free, h
		default:
			h.shared, h.at = true, now
		}
	}
	if !s.degraded && (!s.inReturnLocked(now) || !s.dayKnown) {
		// Shared, and not in the window after a rejoin (or without a
		// share of the day to keep in it: nothing was sent on one).
		return true, time.Time{}, h
	}
	if ok, free := s.dayShareRoomLocked(now, 1); !ok {
		if h.shared {
			s.bg.Go(func() { s.shared.ReleaseRecipients(s.sharedKey, []time.Time{now}) })
		}
		return false, free, rcptHold{}
	}
	s.dayOutage++
	if !h.shared {
		h.outage, h.gen = true, s.stats.degraded
	}
	return true, time.Time{}, h
}

// releaseRcpt gives back a place holdRcpt took (h) for a recipient the
// upstream refused.
func (s *Sender) releaseRcpt(h rcptHold) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.day.pending--
	if h.shared {
		s.bg.Go(func() { s.shared.ReleaseRecipients(s.sharedKey, []time.Time{h.at}) })
	}
	if h.outage && s.degraded && h.gen == s.stats.degraded {
		s.dayOutage--
	}
	s.notifyLocked()
}

// learn is learnLocked for a reply outside the lock.
func (s *Sender) learn(se *smtp.SMTPError, stage string) {
	if classify(se) == noLimit {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.learnLocked(se, stage)
}

// learnLocked reads a reply of Exchange at stage for a limit it says was
// hit, and makes the messages after it wait instead (the reply itself
// reaches its own transaction's app as it is):
//   - a 432 at login, or one naming concurrent connections anywhere:
//     another client holds connections of the mailbox. The connection
//     limit is lowered by one, and to no more than the relay's other
//     sessions (the ones Exchange just counted; never below 1), for
//     connCoolDown, and no new login is tried for loginRetryDelay;
//   - another temporary 4.3.2 at MAIL, RCPT or DATA (Exchange's
//     throttling): the pace counts as full for throttleBackOff;
//   - SubmissionQuotaExceededException: the day's quota counts as used up
//     until the oldest recipient the relay counted ages out, or for
//     quotaFallback if it counted none.
//
// It returns what it read.
func (s *Sender) learnLocked(se *smtp.SMTPError, stage string) exchangeLimit {
	kind := classify(se)
	if kind == limitPace && stage == stageLogin {
		kind = limitConnections
	}
	now := s.clock.Now()
	var until time.Time
	switch kind {
	case noLimit:
		return kind
	case limitConnections:
		others := s.open - 1 // s.open still counts the session refused
		s.learned.conns = max(1, min(s.connLimitLocked(now)-1, others))
		s.learned.connsUntil = now.Add(connCoolDown)
		s.learned.loginAfter = now.Add(loginRetryDelay)
		until = s.learned.connsUntil
	case limitPace:
		s.learned.paceUntil = later(s.learned.paceUntil, now.Add(throttleBackOff))
		until = s.learned.paceUntil
	case limitQuota:
		free := s.day.oldest()
		if s.shared != nil && !s.degraded {
			// Every instance's recipients count for Exchange: the
			// oldest of them all frees first.
			if _, oldest, _, known := s.shared.Day(s.sharedKey); known && oldest.After(now) && (!free.After(now) || oldest.Before(free)) {
				free = oldest
			}
		}
		if !free.After(now) {
			free = now.Add(quotaFallback)
		}
		s.learned.quotaUntil = later(s.learned.quotaUntil, free)
		until = s.learned.quotaUntil
		if s.shared != nil {
			// The day is blocked for every instance (a store that is
			// down hears of it at rejoin).
			s.bg.Go(func() { s.shared.BlockDay(s.sharedKey, until, now) })
		}
	}
	s.stats.exchangeLimits++
	s.log.Warn("Exchange says the mailbox is at a limit; later messages wait",
		"stage", stage, "reply", upstream.FormatReply(se), "connections", s.connLimitLocked(now), "until", until)
	s.notifyLocked()
	return kind
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

var errFinished = errors.New("transaction already finished")
