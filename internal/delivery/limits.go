package delivery

import (
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
)

// The windows and cool-downs of a mailbox's limits. Exchange Online counts
// messages per minute and recipients per rolling 24 hours per mailbox
// (Microsoft's "Exchange Online limits", sending limits); the rest is what
// the relay does when Exchange says a limit was hit anyway.
const (
	// paceWindow is the window of MessagesPerMinute.
	paceWindow = time.Minute
	// dayWindow is the window of RecipientsPerDay.
	dayWindow = 24 * time.Hour
	// dayBucket groups the recipients counted within a minute into one
	// entry of the day's log, so a mailbox allowed 10,000 messages a
	// minute keeps at most 1,440 entries. An entry ages out with its
	// newest recipient: the count frees up to a minute late, never early.
	dayBucket = time.Minute

	// maxSessionAge is how long after its login an upstream session is
	// still handed out. Access tokens live 60–90 minutes, and Exchange may
	// end a session whose token expired; a session older than this is
	// closed and a new one logs in with a fresh token.
	maxSessionAge = 50 * time.Minute

	// connCoolDown is how long the connection limit stays lowered after
	// Exchange answered a login with 432 4.3.2 Concurrent connections limit
	// exceeded: another client, outside the relay, holds connections of the
	// mailbox, and it will not let go of them at once.
	connCoolDown = 5 * time.Minute
	// loginRetryDelay is how long after such a 432 no new session logs in:
	// a message that needs one waits (within its max wait) for a session of
	// the relay to come back, or for this delay, rather than asking again
	// at once.
	loginRetryDelay = 10 * time.Second
	// throttleBackOff is how long the pace counts as full after Exchange
	// throttled a message at MAIL or DATA (432 4.3.2 STOREDRV.ClientSubmit;
	// sender thread limit exceeded): its own window is a minute.
	throttleBackOff = paceWindow
	// quotaFallback is how long the daily quota counts as used up after
	// Exchange's 554 5.2.0 SubmissionQuotaExceededException when the relay
	// counted no recipient itself that could age out sooner or later (the
	// mailbox sent through other clients too).
	quotaFallback = time.Hour
)

// MailboxMaxWait, passed as a Begin's wait, is the mailbox's own MaxWait
// (its Limits at the time).
const MailboxMaxWait time.Duration = -1

// ErrClosed is Begin's error on a Sender that was closed: the mailbox no
// longer sends through this relay (the configuration changed, or the relay
// is stopping). It is temporary: the app retries.
var ErrClosed = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
	Message: "Sending for this mailbox has stopped; try again later"}

// LimitError is the relay's own refusal of a message, or a recipient, for
// a limit of the mailbox (a wait past max_wait, the daily recipients):
// Reply, a 451 4.7.0 in plain words, is what the app gets. It unwraps to
// Reply, so front ends see an *smtp.SMTPError; the type tells the queue's
// metrics the relay's own limit from an upstream's 451.
type LimitError struct {
	Reply *smtp.SMTPError
	// Daily: the mailbox's recipients of the last 24 hours are used up
	// (otherwise: its connections or its pace).
	Daily bool
}

func (e *LimitError) Error() string { return e.Reply.Error() }

func (e *LimitError) Unwrap() error { return e.Reply }

// errSendingLimit is the reply to a message that waited its max wait for a
// connection or its slot in the pace: the app retries later, and never sees
// Exchange's 432.
func errSendingLimit(mailbox string, l config.Limits) *LimitError {
	return &LimitError{Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("%s is at its sending limit (%d messages a minute, %d %s); try again later",
			mailbox, l.MessagesPerMinute, l.Connections, plural(l.Connections, "connection", "connections"))}}
}

// errDailyLimit is the reply once the mailbox's recipients of the last 24
// hours reach its limit; free says when enough of them age out (zero: not
// known). Temporary: the app retries later.
func errDailyLimit(mailbox string, limit int, free time.Time) *LimitError {
	when := "try again later"
	if !free.IsZero() {
		when = "it frees at " + free.UTC().Format("2006-01-02 15:04 MST") + "; try again then"
	}
	return &LimitError{Daily: true, Reply: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("%s reached its daily recipient limit (%d recipients in 24 hours); %s", mailbox, limit, when)}}
}

// errTooManyRcpts answers a RCPT past RecipientsPerMessage, as RFC 5321
// §4.5.3.1.10 says: 452, and the client sends the rest in another message.
func errTooManyRcpts(limit int) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: fmt.Sprintf("Too many recipients (at most %d a message)", limit)}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// exchangeLimit is what a reply of Exchange says about a mailbox limit.
type exchangeLimit int

const (
	noLimit exchangeLimit = iota
	// limitConnections: 432 4.3.2 Concurrent connections limit exceeded.
	limitConnections
	// limitPace: another 4.3.2 refusal (Exchange's throttling:
	// STOREDRV.ClientSubmit; sender thread limit exceeded).
	limitPace
	// limitQuota: 554 5.2.0 ...SubmissionQuotaExceededException, the
	// 10,000 recipients a day.
	limitQuota
)

// classify reads an Exchange reply. Microsoft's pages name both "432 4.3.2
// Concurrent connections limit exceeded" and "4.3.2 STOREDRV.ClientSubmit;
// sender thread limit exceeded" for a fourth connection, and the latter is
// seen in the field (and sent by the fake) for the 31st message of a
// minute: so any temporary 4.3.2 refusal except a 421 (a server closing the
// session, RFC 5321 §3.8) is a limit; the caller decides by where it came
// (login: connections, MAIL or DATA: pace) unless the text names the
// connections. SubmissionQuotaExceededException is matched whole:
// MapiExceptionQuotaExceeded is a full mailbox, which no wait cures.
func classify(se *smtp.SMTPError) exchangeLimit {
	if se == nil {
		return noLimit
	}
	switch {
	case strings.Contains(se.Message, "SubmissionQuotaExceededException"):
		return limitQuota
	case se.Code/100 != 4 || se.Code == 421 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 2}):
		return noLimit
	case strings.Contains(strings.ToLower(se.Message), "concurrent connection"):
		return limitConnections
	}
	return limitPace
}

// sane returns l with values the Sender can work with: config validates
// them, and this keeps a zero from a caller outside it from stopping
// every message.
func sane(l config.Limits) config.Limits {
	l.Connections = max(l.Connections, 1)
	l.MessagesPerMinute = max(l.MessagesPerMinute, 1)
	l.RecipientsPerDay = max(l.RecipientsPerDay, 1)
	l.RecipientsPerMessage = max(l.RecipientsPerMessage, 1)
	l.MaxWait = max(l.MaxWait, 0)
	return l
}
