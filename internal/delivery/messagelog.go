package delivery

import (
	"bytes"
	"context"
	"errors"
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// The outcomes of a MessageRecord.
const (
	// OutcomeDelivered: the upstream answered 250 to the final dot.
	OutcomeDelivered = "delivered"
	// OutcomeQueued: the message is in the spool and the app got 250.
	OutcomeQueued = "queued"
	// OutcomeDeferred: a queued message's attempt failed for now; it is
	// tried again later.
	OutcomeDeferred = "deferred"
	// OutcomeFailed: the message will not be delivered (a queued message
	// given up), or in direct delivery it did not reach the upstream whole
	// (the connection was lost, the app's message did not arrive).
	OutcomeFailed = "failed"
	// OutcomeRefused: in direct delivery, the upstream (or the relay, for
	// a limit) refused the message with a reply the app got.
	OutcomeRefused = "refused"
)

// MessageLogger is told how each message ended, when the delivery's
// Observer also implements it (the admin's message log does). Like
// QueueObserver it is an add-on found by type assertion: observers that do
// not care need no method for it, and a Direct without one does not read
// the message's header.
//
// Direct calls it once per transaction that reached Data (delivered,
// refused or failed); Queue when a message is spooled (queued) and after
// each attempt (delivered, deferred or failed). A Direct working for a
// Queue leaves the record to the Queue.
type MessageLogger interface {
	MessageDone(a events.Account, r MessageRecord)
}

// MessageRecord is one message's line in a message log. It holds what an
// administrator needs to answer "did invoice 4711 go out?" and nothing
// else: the envelope, the Message-ID, the size and the reply — never the
// body or a credential.
type MessageRecord struct {
	// Time is when the outcome happened.
	Time time.Time
	// From is the envelope sender ("" for the null sender).
	From string
	// MessageID is the header's Message-ID (with its brackets), "" when
	// the message has none or its header was not read.
	MessageID string
	// Recipients are the envelope recipients: in direct delivery those the
	// upstream accepted, in queue mode all of the message's.
	Recipients []string
	// Rcpts is len(Recipients).
	Rcpts int
	// Bytes is the message's size.
	Bytes int64
	// Outcome is one of the Outcome constants.
	Outcome string
	// Reply is the upstream's reply (with Exchange's queue id on a 250),
	// the relay's own reply, or what went wrong in plain words.
	Reply string
	// QueueID is the message's id in the spool (queue mode), "" otherwise.
	QueueID string
}

// logMessage tells obs about r when it is a MessageLogger.
func logMessage(obs events.Observer, a events.Account, r MessageRecord) {
	if ml, ok := obs.(MessageLogger); ok {
		r.Rcpts = len(r.Recipients)
		ml.MessageDone(a, r)
	}
}

// directRecord is what Direct logs of a transaction that ended with Data.
func directRecord(from string, rcpts []string, head *headerSniffer, acc *Accepted, err error) MessageRecord {
	r := MessageRecord{Time: time.Now(), From: from, Recipients: rcpts, MessageID: head.messageID(), Bytes: head.n}
	var se *smtp.SMTPError
	switch {
	case err == nil:
		r.Outcome, r.Reply, r.Bytes = OutcomeDelivered, "250 "+acc.Reply, acc.Bytes
	case !isReadError(err) && errors.As(err, &se):
		r.Outcome, r.Reply = OutcomeRefused, upstream.FormatReply(se)
	default:
		r.Outcome, r.Reply = OutcomeFailed, directFailure(err)
	}
	return r
}

// directFailure says in plain words why a direct message did not reach
// the upstream whole; the details are in the front end's log line.
func directFailure(err error) string {
	var le *LostError
	switch {
	case isReadError(err):
		return "the app's message did not arrive whole; nothing was delivered"
	case errors.As(err, &le):
		return "the connection to the upstream server was lost during " + le.Stage
	case errors.Is(err, context.Canceled):
		return "the transaction was interrupted: the relay was stopping"
	}
	return "the message was not delivered (the relay's log has the details)"
}

// queueRecord is what Queue logs of message env.
func queueRecord(env *spool.Envelope, now time.Time, outcome, reply string) MessageRecord {
	r := MessageRecord{Time: now, From: env.From, MessageID: env.MessageID, Bytes: env.Size,
		Outcome: outcome, Reply: reply, QueueID: env.ID}
	for _, rc := range env.Recipients {
		r.Recipients = append(r.Recipients, rc.Addr)
	}
	return r
}

// attemptReply is the reply that best tells an attempt's outcome: the 250
// of a delivered recipient, the refusal of a failed one, else the
// message's last error.
func attemptReply(env *spool.Envelope, result string) string {
	want := spool.Failed
	if result == OutcomeDelivered {
		want = spool.Delivered
	}
	if result != OutcomeDeferred {
		for i := len(env.Recipients) - 1; i >= 0; i-- {
			if r := env.Recipients[i]; r.State == want && r.Reply != "" {
				return r.Reply
			}
		}
	}
	return env.LastError
}

// attemptObserver is the QueueObserver finish reports an attempt of env
// to: the Observer's own (nil if it has none), and the message log when
// the Observer keeps one.
func (q *Queue) attemptObserver(env *spool.Envelope) QueueObserver {
	qo, _ := q.o.Observer.(QueueObserver)
	if _, ok := q.o.Observer.(MessageLogger); !ok {
		return qo
	}
	return attemptLog{qo: qo, q: q, env: env}
}

// attemptLog passes QueueAttempt on and logs the attempt's message.
type attemptLog struct {
	qo  QueueObserver // may be nil
	q   *Queue
	env *spool.Envelope
}

func (l attemptLog) Queued(a events.Account, bytes int64) {
	if l.qo != nil {
		l.qo.Queued(a, bytes)
	}
}

func (l attemptLog) QueueAttempt(a events.Account, result, reason string) {
	if l.qo != nil {
		l.qo.QueueAttempt(a, result, reason)
	}
	logMessage(l.q.o.Observer, a, queueRecord(l.env, l.q.o.Now(), result, attemptReply(l.env, result)))
}

func (l attemptLog) QueueDuplicate(a events.Account) {
	if l.qo != nil {
		l.qo.QueueDuplicate(a)
	}
}

// queueAttemptKey marks the context of a Queue's delivery attempt.
type queueAttemptKey struct{}

// forQueue marks ctx as a Queue's attempt: the Direct that carries it
// leaves the message log to the Queue, which knows the spool id and the
// outcome for the message as a whole.
func forQueue(ctx context.Context) context.Context {
	return context.WithValue(ctx, queueAttemptKey{}, true)
}

func isQueueAttempt(ctx context.Context) bool {
	v, _ := ctx.Value(queueAttemptKey{}).(bool)
	return v
}

// headerScanLimit bounds how much of a message Direct keeps to find its
// Message-ID: the bound the spool and the front end's header check use.
const headerScanLimit = 64 << 10

// headerSniffer passes a message through and keeps its header section (at
// most headerScanLimit bytes), counting the bytes read.
type headerSniffer struct {
	r    io.Reader
	head []byte
	done bool // the header's end or the limit was seen
	n    int64
}

func (h *headerSniffer) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.n += int64(n)
	if !h.done && n > 0 {
		from := max(len(h.head)-3, 0)
		h.head = append(h.head, p[:min(n, headerScanLimit-len(h.head))]...)
		end := bytes.Index(h.head[from:], []byte("\n\r\n"))
		if end < 0 {
			end = bytes.Index(h.head[from:], []byte("\n\n"))
		}
		if end >= 0 {
			h.head = h.head[:from+end+1]
			h.done = true
		} else if len(h.head) >= headerScanLimit {
			h.done = true
		}
	}
	return n, err
}

// messageID is the Message-ID field of the header read so far ("" if
// none, or nil h).
func (h *headerSniffer) messageID() string {
	if h == nil {
		return ""
	}
	return spool.MessageID(h.head)
}
