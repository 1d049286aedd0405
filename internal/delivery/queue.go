package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

const (
	// pollInterval is the longest the worker sleeps: it also picks up
	// messages that `oauthrelay queue retry` changed from another process.
	pollInterval = 30 * time.Second
	// minBackoff and maxBackoff bound the wait before a deferred message is
	// tried again: doubling from a minute to an hour (Postfix: 300 s to
	// 4000 s; Exchange's throttling lifts within minutes).
	minBackoff = time.Minute
	maxBackoff = time.Hour
)

// QueueObserver is told what a Queue does, when the delivery's Observer
// also implements it (the metrics do). It is an add-on, found by type
// assertion, so observers that do not care need no methods for it.
type QueueObserver interface {
	// Queued reports a message written to the spool.
	Queued(a events.Account, bytes int64)
	// QueueAttempt reports the outcome of one delivery attempt: result is
	// "delivered", "deferred" or "failed".
	QueueAttempt(a events.Account, result string)
	// QueueDuplicate reports an attempt of a message whose previous
	// attempt was interrupted (a crash): it may be delivered twice.
	QueueDuplicate(a events.Account)
}

// QueueOptions configure a Queue. Fields without a default are required.
type QueueOptions struct {
	// Account is the account the queue delivers for; its mailbox is the
	// sender of notifications.
	Account events.Account
	// Spool stores the messages; one spool serves every account.
	Spool *spool.Spool
	// Sender delivers a queued message: the account's Direct delivery over
	// the mailbox's pool, so queued mail keeps the same limits.
	Sender Delivery
	// Credentials are the account's own (a queued message outlives the
	// app session that submitted it).
	Credentials upstream.Credentials
	// MaxAge is how long a message is retried before it is given up.
	MaxAge time.Duration
	// MaxSize is the largest message accepted (the SIZE advertised).
	MaxSize int64
	// RecipientsPerMessage caps RCPT per message (452 4.5.3 past it).
	RecipientsPerMessage int
	// ReportingMTA names the relay in notifications; "" is the host name.
	ReportingMTA string
	// Logger receives the worker's log; nil discards.
	Logger *slog.Logger
	// Observer hears about messages; nil: events.Nop.
	Observer events.Observer
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Queue writes each message to the spool, durably, before the app gets
// 250, and a worker delivers it later through Sender, retrying temporary
// failures with backoff up to MaxAge. Recipients are tracked one by one: of
// five, the three the upstream accepted are not sent again. A permanent
// refusal, or the age limit, produces a delivery status notification (RFC
// 3464) to the envelope sender through the same account (none for the
// null sender, nor about a notification), and the message moves to the
// spool's failed area.
type Queue struct {
	o      QueueOptions
	log    *slog.Logger
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// NewQueue starts the queue's worker; Close stops it.
func NewQueue(o QueueOptions) *Queue {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = events.Nop{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ReportingMTA == "" {
		o.ReportingMTA, _ = os.Hostname()
	}
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{
		o:      o,
		log:    o.Logger.With("account", o.Account.Name, "delivery", "queue"),
		kick:   make(chan struct{}, 1),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go q.run(ctx)
	return q
}

// Ready implements Delivery. A queue accepts mail whatever the upstream's
// state: that is its point (the token lost for hours: messages wait). The
// app's own credentials were checked by the local login.
func (q *Queue) Ready(context.Context, upstream.Credentials) error { return nil }

// Begin implements Delivery.
func (q *Queue) Begin(ctx context.Context, _ upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	return &queueTx{q: q, ctx: ctx, env: spool.Envelope{
		Account: q.o.Account.Name,
		Mailbox: q.o.Account.Mailbox,
		From:    from,
		Mail:    mailOf(opts),
	}}, nil
}

// Close stops the worker and waits for it; a delivery in progress is
// interrupted and retried later (it may then be delivered twice).
func (q *Queue) Close() {
	q.once.Do(q.cancel)
	<-q.done
	q.o.Sender.Close()
}

// wake makes the worker look at the spool now.
func (q *Queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// queueTx collects one message's envelope and writes it to the spool.
type queueTx struct {
	q   *Queue
	ctx context.Context
	env spool.Envelope
}

func (t *queueTx) Rcpt(to string, opts *smtp.RcptOptions) error {
	if n := t.q.o.RecipientsPerMessage; n > 0 && len(t.env.Recipients) >= n {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: fmt.Sprintf("Too many recipients (at most %d per message)", n)}
	}
	t.env.Recipients = append(t.env.Recipients, rcptOf(to, opts))
	return nil
}

// Data writes the message to the spool; it returns only when the message
// is on disk and fsynced, and never 250 otherwise.
func (t *queueTx) Data(r io.Reader) (*Accepted, error) {
	if len(t.env.Recipients) == 0 {
		return nil, &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
	}
	e, err := t.q.o.Spool.Create(t.ctx, t.env, r, t.q.o.MaxSize)
	var re *spool.ReadError
	switch {
	case err == nil:
	case errors.As(err, &re):
		return nil, &smtpclient.ReadError{Err: re.Err}
	case errors.Is(err, spool.ErrTooBig):
		return nil, &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
			Message: "Message size exceeds fixed maximum message size"}
	case errors.Is(err, spool.ErrNoSpace), errors.Is(err, spool.ErrUnavailable):
		t.q.log.Error("cannot write a message to the spool: it was refused with 452", "err", err)
		return nil, errSpoolFull
	default:
		return nil, err
	}
	t.q.log.Info("message queued", "id", e.ID, "from", e.From, "rcpts", len(e.Recipients), "bytes", e.Size,
		"message_id", e.MessageID)
	if qo, ok := t.q.o.Observer.(QueueObserver); ok {
		qo.Queued(t.q.o.Account, e.Size)
	}
	t.q.wake()
	return &Accepted{Reply: "2.0.0 OK queued as " + e.ID, Bytes: e.Size}, nil
}

func (t *queueTx) Abort() {}

// errSpoolFull: the message could not be made durable (RFC 3463 4.3.1:
// mail system full).
var errSpoolFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
	Message: "Insufficient system storage: the message was not queued; try again later"}

// run is the worker: it delivers what is due, then sleeps until the next
// message is due, a new one arrives, or pollInterval passes.
func (q *Queue) run(ctx context.Context) {
	defer close(q.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.kick:
		case <-timer.C:
		}
		next := q.deliverDue(ctx)
		wait := min(max(next.Sub(q.o.Now()), 0), pollInterval)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// deliverDue attempts every due message of the account and returns when
// the next one is due.
func (q *Queue) deliverDue(ctx context.Context) time.Time {
	now := q.o.Now()
	next := now.Add(pollInterval)
	envs, err := q.o.Spool.List()
	if err != nil {
		q.log.Error("cannot list the spool", "err", err)
		return next
	}
	for _, e := range envs {
		if e.Account != q.o.Account.Name {
			continue
		}
		if e.NextAttempt.After(now) {
			next = minTime(next, e.NextAttempt)
			continue
		}
		if ctx.Err() != nil {
			return next
		}
		if at, ok := q.attempt(ctx, e.ID); ok {
			next = minTime(next, at)
		}
	}
	return next
}

// attempt delivers message id once; it returns when to try it again (ok
// false: it is finished, or not this worker's to try).
func (q *Queue) attempt(ctx context.Context, id string) (again time.Time, ok bool) {
	release, err := q.o.Spool.Claim(id)
	if err != nil {
		return time.Time{}, false // another process has it, or it is gone
	}
	defer release()
	env, interrupted, err := q.o.Spool.BeginAttempt(id)
	if err != nil {
		return time.Time{}, false
	}
	log := q.log.With("id", id, "attempt", env.Attempts)
	if interrupted {
		log.Warn("the previous attempt was interrupted before its outcome was recorded: the message may be delivered twice",
			"message_id", env.MessageID)
		if qo, ok := q.o.Observer.(QueueObserver); ok {
			qo.QueueDuplicate(q.o.Account)
		}
	}
	body, err := q.o.Spool.OpenBody(id)
	if err != nil {
		log.Error("cannot read the queued message", "err", err)
		return q.finish(ctx, env, log, "cannot read the queued message")
	}
	defer body.Close()
	if q.o.Now().Sub(env.Created) > q.o.MaxAge {
		giveUp(env, fmt.Sprintf("not delivered within %s: %s", q.o.MaxAge, orDefault(env.LastError, "no attempt succeeded")))
		return q.finish(ctx, env, log, "")
	}
	q.send(ctx, env, body, log)
	return q.finish(ctx, env, log, "")
}

// send makes one delivery attempt of env's pending recipients and records
// each recipient's outcome in env.
func (q *Queue) send(ctx context.Context, env *spool.Envelope, body io.Reader, log *slog.Logger) {
	tx, err := q.o.Sender.Begin(ctx, q.o.Credentials, env.From, mailOptions(env))
	if err != nil {
		env.LastError = describe(err)
		if permanent(err) {
			giveUp(env, env.LastError)
		}
		log.Info("delivery deferred", "reason", env.LastError)
		return
	}
	var accepted []int
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if r.State != spool.Pending {
			continue
		}
		err := tx.Rcpt(r.Addr, rcptOptions(r))
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		r.Reply = describe(err)
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			env.LastError = r.Reply // the session died: the rest wait
			break
		}
		if permanent(err) {
			r.State = spool.Failed
		}
	}
	if len(accepted) == 0 {
		tx.Abort()
		return
	}
	acc, err := tx.Data(body)
	for _, i := range accepted {
		r := &env.Recipients[i]
		switch {
		case err == nil:
			r.State, r.Reply = spool.Delivered, "250 "+acc.Reply
		case permanent(err):
			r.State, r.Reply = spool.Failed, describe(err)
		default:
			r.Reply = describe(err)
		}
	}
	if err != nil {
		env.LastError = describe(err)
	}
	log.Info("delivery attempt", "delivered", count(env, spool.Delivered), "failed", count(env, spool.Failed),
		"pending", env.Pending(), "reply", orDefault(replyOf(acc), env.LastError))
}

// finish records the attempt's outcome: the message stays for a retry
// with backoff, or it is done — deleted when every recipient got it,
// moved to the failed area after a notification otherwise.
func (q *Queue) finish(ctx context.Context, env *spool.Envelope, log *slog.Logger, failReason string) (time.Time, bool) {
	env.InFlight = time.Time{}
	obs, _ := q.o.Observer.(QueueObserver)
	if failReason != "" {
		giveUp(env, failReason)
	}
	if env.Pending() > 0 {
		env.NextAttempt = q.o.Now().Add(backoff(env.Attempts))
		if err := q.o.Spool.Update(env); err != nil {
			log.Error("cannot record the attempt", "err", err)
		}
		if obs != nil {
			obs.QueueAttempt(q.o.Account, "deferred")
		}
		return env.NextAttempt, true
	}
	failed := failedRecipients(env)
	if len(failed) == 0 {
		if err := q.o.Spool.Delete(env.ID); err != nil {
			log.Error("cannot remove a delivered message from the spool: it may be delivered again", "err", err)
		}
		if obs != nil {
			obs.QueueAttempt(q.o.Account, "delivered")
		}
		return time.Time{}, false
	}
	if err := q.o.Spool.Update(env); err != nil {
		log.Error("cannot record the attempt", "err", err)
	}
	q.notify(ctx, env, failed, log)
	reason := fmt.Sprintf("%d of %d recipients failed: %s", len(failed), len(env.Recipients), orDefault(failed[0].Reply, env.LastError))
	if err := q.o.Spool.Fail(env.ID, reason); err != nil {
		log.Error("cannot move a failed message to the failed area", "err", err)
	}
	log.Warn("message failed", "reason", reason, "message_id", env.MessageID)
	if obs != nil {
		obs.QueueAttempt(q.o.Account, "failed")
	}
	return time.Time{}, false
}

// notify queues a delivery status notification to env's sender about the
// failed recipients: none for the null sender, for a notification, or for
// recipients that asked for none (NOTIFY=NEVER, RFC 3461 §4.1).
func (q *Queue) notify(ctx context.Context, env *spool.Envelope, failed []spool.Recipient, log *slog.Logger) {
	var want []spool.Recipient
	for _, r := range failed {
		if !wantsNotify(r, "FAILURE") {
			continue
		}
		want = append(want, r)
	}
	if env.From == "" || env.Notification || len(want) == 0 {
		return
	}
	head := []byte{}
	if body, err := q.o.Spool.OpenBody(env.ID); err == nil {
		head = readHead(body)
		body.Close()
	}
	dsn := buildDSN(env, want, head, q.o.ReportingMTA, q.o.Now())
	n, err := q.o.Spool.Create(ctx, spool.Envelope{
		Account: env.Account, Mailbox: env.Mailbox, From: env.Mailbox,
		Recipients:   []spool.Recipient{{Addr: env.From, Notify: []string{"NEVER"}}},
		Notification: true,
	}, strings.NewReader(string(dsn)), 0)
	if err != nil {
		log.Error("cannot queue the delivery status notification", "to", env.From, "err", err)
		return
	}
	log.Info("delivery status notification queued", "to", env.From, "dsn_id", n.ID)
}

// giveUp marks every pending recipient failed with reason.
func giveUp(env *spool.Envelope, reason string) {
	env.LastError = reason
	for i := range env.Recipients {
		if r := &env.Recipients[i]; r.State == spool.Pending {
			r.State = spool.Failed
			r.Reply = orDefault(r.Reply, reason)
			if !strings.HasPrefix(r.Reply, "5") {
				r.Reply = reason
			}
		}
	}
}

func failedRecipients(env *spool.Envelope) []spool.Recipient {
	var out []spool.Recipient
	for _, r := range env.Recipients {
		if r.State == spool.Failed {
			out = append(out, r)
		}
	}
	return out
}

func wantsNotify(r spool.Recipient, what string) bool {
	if len(r.Notify) == 0 {
		return what == "FAILURE" // RFC 3461 §4.1: FAILURE (and DELAY) by default
	}
	for _, n := range r.Notify {
		if strings.EqualFold(n, what) {
			return true
		}
	}
	return false
}

func count(env *spool.Envelope, s spool.State) int {
	n := 0
	for _, r := range env.Recipients {
		if r.State == s {
			n++
		}
	}
	return n
}

// permanent reports a refusal that retrying will not change: a 5xx reply.
// A login refusal (535) is the account's problem, not the message's: it
// is retried until an administrator fixes it or the message ages out.
func permanent(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return false
	}
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code >= 500
}

// describe is an error in the words of the message log and the DSN.
func describe(err error) string {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		if ue.Reply != nil {
			return upstream.FormatReply(ue.Reply)
		}
		return ue.Kind.String() + ": " + ue.Reason
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return upstream.FormatReply(se)
	}
	return err.Error()
}

func replyOf(a *Accepted) string {
	if a == nil {
		return ""
	}
	return "250 " + a.Reply
}

// backoff is the wait before attempt n+1: a minute doubling to an hour.
func backoff(attempts int) time.Duration {
	d := minBackoff
	for i := 1; i < attempts && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// mailOf keeps the MAIL parameters a later delivery needs.
func mailOf(o *smtp.MailOptions) spool.Mail {
	if o == nil {
		return spool.Mail{}
	}
	return spool.Mail{Size: o.Size, Body: string(o.Body), SMTPUTF8: o.UTF8, Ret: string(o.Return), EnvID: o.EnvelopeID}
}

func mailOptions(env *spool.Envelope) *smtp.MailOptions {
	return &smtp.MailOptions{Body: smtp.BodyType(env.Mail.Body), Size: env.Size, UTF8: env.Mail.SMTPUTF8,
		Return: smtp.DSNReturn(env.Mail.Ret), EnvelopeID: env.Mail.EnvID}
}

func rcptOf(to string, o *smtp.RcptOptions) spool.Recipient {
	r := spool.Recipient{Addr: to}
	if o == nil {
		return r
	}
	for _, n := range o.Notify {
		r.Notify = append(r.Notify, string(n))
	}
	if o.OriginalRecipient != "" {
		r.ORcpt = strings.ToLower(string(o.OriginalRecipientType)) + ";" + o.OriginalRecipient
	}
	return r
}

func rcptOptions(r *spool.Recipient) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	for _, n := range r.Notify {
		o.Notify = append(o.Notify, smtp.DSNNotify(n))
	}
	if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok {
		o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressType(strings.ToUpper(typ)), addr
	}
	return o
}
