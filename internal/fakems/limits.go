package fakems

import (
	"time"

	"github.com/emersion/go-smtp"
)

// Exchange Online's SMTP AUTH limits per mailbox, as the fake keeps them
// with Options.SMTPLimits (Microsoft's "Exchange Online limits", sending
// limits; the replies are those seen in the field, see replies.go).
const (
	// maxConnsPerMailbox is how many authenticated SMTP sessions a
	// mailbox may hold at once; the 4th AUTH gets replyConcurrent.
	maxConnsPerMailbox = 3
	// maxMessagesPerMinute is how many messages a mailbox may submit in
	// any paceWindow; the next DATA gets replyRateLimited.
	maxMessagesPerMinute = 30
	paceWindow           = time.Minute
	// defaultRecipientsPerDay is the recipients a mailbox may send to in
	// any dayWindow; the message past it gets replyQuotaExceeded.
	defaultRecipientsPerDay = 10000
	dayWindow               = 24 * time.Hour
	// defaultRecipientsPerMessage is the RCPTs one message may have (a
	// tenant may set 1 to 1,000); the next gets replyTooManyRcpts. Kept
	// with or without SMTPLimits.
	defaultRecipientsPerMessage = 500
)

// Clock is the time the fake keeps Exchange's limits by. A clock that runs
// faster than real time (delivery.ScaledClock satisfies this) lets a test
// or a benchmark see a minute's limit pass in a second; the relay under
// test must then keep its limits on a clock of the same speed.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// LimitCounts are the limit replies the fake gave, by limit: what a relay
// that keeps Exchange's limits should never provoke.
type LimitCounts struct {
	Connections int // 432 4.3.2 Concurrent connections limit exceeded (at AUTH)
	Messages    int // 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded (at DATA)
	Quota       int // 554 5.2.0 ...SubmissionQuotaExceededException (at DATA)
	Recipients  int // 452 4.5.3 Too many recipients (at RCPT)
}

// Total is the number of limit replies of every kind.
func (c LimitCounts) Total() int { return c.Connections + c.Messages + c.Quota + c.Recipients }

// LimitReplies returns how many limit replies the fake has given since it
// started, over every mailbox.
func (s *Server) LimitReplies() LimitCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limitCounts
}

// stamp is one accepted message in a mailbox's logs: when, and to how many
// recipients.
type stamp struct {
	at    time.Time
	rcpts int
}

// limitLog is a mailbox's accepted messages, oldest first, within a
// window: the sliding windows Exchange counts by.
type limitLog struct {
	window  time.Duration
	entries []stamp
	rcpts   int // sum of entries' rcpts
}

// prune forgets the entries that left the window by now.
func (l *limitLog) prune(now time.Time) {
	i := 0
	for i < len(l.entries) && now.Sub(l.entries[i].at) >= l.window {
		l.rcpts -= l.entries[i].rcpts
		i++
	}
	l.entries = l.entries[i:]
}

func (l *limitLog) add(at time.Time, rcpts int) {
	l.entries = append(l.entries, stamp{at: at, rcpts: rcpts})
	l.rcpts += rcpts
}

// admitLocked decides, under s.mu, whether m may submit one more message
// to rcpts recipients now, and if so counts it: nil, or Exchange's reply.
// Without SMTPLimits every message is admitted.
func (s *Server) admitLocked(m *mailbox, rcpts int) *smtp.SMTPError {
	if !s.opts.SMTPLimits || m == nil {
		return nil
	}
	now := s.clock.Now()
	m.sent.window, m.day.window = paceWindow, dayWindow
	m.sent.prune(now)
	m.day.prune(now)
	switch {
	case len(m.sent.entries) >= maxMessagesPerMinute:
		s.limitCounts.Messages++
		return replyRateLimited
	case m.day.rcpts+rcpts > s.recipientsPerDay():
		s.limitCounts.Quota++
		return replyQuotaExceeded
	}
	m.sent.add(now, rcpts)
	m.day.add(now, rcpts)
	return nil
}

// loginLocked takes one of m's concurrent-connection slots, under s.mu:
// false (and counted) when all are held. Without SMTPLimits it always
// succeeds and holds none.
func (s *Server) loginLocked(m *mailbox) (counted, ok bool) {
	if !s.opts.SMTPLimits {
		return false, true
	}
	if m.smtpConns >= maxConnsPerMailbox {
		s.limitCounts.Connections++
		return false, false
	}
	m.smtpConns++
	s.peakSMTPConns = max(s.peakSMTPConns, m.smtpConns)
	return true, true
}

// PeakSMTPConns returns the most authenticated SMTP sessions one mailbox
// held at once since the fake started (with SMTPLimits; the fake refuses
// a 4th, so it is at most 3): relays that share a mailbox's connections
// must together stay within them.
func (s *Server) PeakSMTPConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakSMTPConns
}

// SMTPLogins returns how many SMTP sessions logged in (AUTH XOAUTH2
// accepted) since the fake started: what a relay that keeps its upstream
// sessions saves.
func (s *Server) SMTPLogins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.smtpLogins
}

// tooManyRcpts reports, and counts, a RCPT past the per-message limit
// when n recipients are already accepted.
func (s *Server) tooManyRcpts(n int) bool {
	if n < s.recipientsPerMessage() {
		return false
	}
	s.mu.Lock()
	s.limitCounts.Recipients++
	s.mu.Unlock()
	return true
}

func (s *Server) recipientsPerDay() int {
	if s.opts.RecipientsPerDay > 0 {
		return s.opts.RecipientsPerDay
	}
	return defaultRecipientsPerDay
}

func (s *Server) recipientsPerMessage() int {
	if s.opts.RecipientsPerMessage > 0 {
		return s.opts.RecipientsPerMessage
	}
	return defaultRecipientsPerMessage
}
