package delivery

import (
	"context"
	"errors"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// Why an attempt of a queued message was deferred or failed, in a small
// fixed set: the metrics label them by it (a label must stay bounded, so
// the upstream's text, which has queue ids in it, cannot be one), and an
// administrator reads from it whether to wait (limit, quota,
// unavailable), to act (login_refused, needs_sign_in) or to tell the
// sender (refused).
const (
	// ReasonLimit: a sending limit of the mailbox: the relay's own 451
	// 4.7.0 after max_wait, or Exchange's throttling (432 4.3.2).
	ReasonLimit = "limit"
	// ReasonQuota: the mailbox's daily recipients are used up: the relay's
	// own count, or Exchange's 554 5.2.0 SubmissionQuotaExceededException.
	ReasonQuota = "quota"
	// ReasonTemporary: another temporary (4xx) reply of the upstream.
	ReasonTemporary = "temporary"
	// ReasonRefused: a permanent (5xx) reply of the upstream, to the
	// sender, a recipient or the message.
	ReasonRefused = "refused"
	// ReasonLoginRefused: the upstream refused the account's login (535).
	ReasonLoginRefused = "login_refused"
	// ReasonUnavailable: the upstream server or the token endpoint could
	// not be reached.
	ReasonUnavailable = "unavailable"
	// ReasonNeedsSignIn: the account has no token until an administrator
	// signs it in again.
	ReasonNeedsSignIn = "needs_sign_in"
	// ReasonConnectionLost: the upstream connection failed during the
	// transaction.
	ReasonConnectionLost = "connection_lost"
	// ReasonTimeout: the attempt ran out of time.
	ReasonTimeout = "timeout"
	// ReasonUnreadable: the message could not be read from the spool.
	ReasonUnreadable = "unreadable"
	// ReasonInterrupted: the relay was stopping, or the mailbox's sending
	// was reconfigured, during the attempt.
	ReasonInterrupted = "interrupted"
	// ReasonExpired: the message reached queue.max_age undelivered.
	ReasonExpired = "expired"
	// ReasonOther: anything else (the log has the details).
	ReasonOther = "other"
)

// reasonOf names why err ended (part of) an attempt, one of the Reason
// constants.
func reasonOf(err error) string {
	var (
		le   *LimitError
		ue   *upstream.Error
		se   *smtp.SMTPError
		lost *LostError
	)
	switch {
	case errors.As(err, &le) && le.Daily:
		return ReasonQuota
	case errors.As(err, &le):
		return ReasonLimit
	case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled):
		return ReasonInterrupted
	case errors.As(err, &ue):
		return upstreamReason(ue)
	case isReadError(err):
		return ReasonUnreadable
	case errors.As(err, &se):
		return replyReason(se)
	case errors.As(err, &lost):
		return ReasonConnectionLost
	case errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	}
	return ReasonOther
}

// upstreamReason names a failed login.
func upstreamReason(ue *upstream.Error) string {
	switch {
	case ue.Reply != nil && classify(ue.Reply) != noLimit:
		return replyReason(ue.Reply) // Exchange's 432 at login
	case ue.Kind == upstream.NeedsSignIn:
		return ReasonNeedsSignIn
	case ue.Kind == upstream.Refused:
		return ReasonLoginRefused
	}
	return ReasonUnavailable
}

// replyReason names an upstream's refusal.
func replyReason(se *smtp.SMTPError) string {
	switch classify(se) {
	case limitQuota:
		return ReasonQuota
	case limitConnections, limitPace:
		return ReasonLimit
	}
	if se.Code >= 500 {
		return ReasonRefused
	}
	return ReasonTemporary
}

// failedReason names why a message failed, from its first failed
// recipient: expired when the attempt gave up on the message's age
// (attempt is the attempt's reason), else the upstream's reply to that
// recipient (a recipient refused in an earlier attempt, the rest delivered
// in this one, fails the message now), else the attempt's reason.
func failedReason(first spool.Recipient, attempt string) string {
	if attempt == ReasonExpired {
		return attempt
	}
	if se, ok := parseReply(first.Reply); ok {
		return replyReason(se)
	}
	return orDefault(attempt, ReasonOther)
}
