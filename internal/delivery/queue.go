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
	// defaultMaxAge is MaxAge when QueueOptions leave it zero: the
	// configuration's default (queue.max_age), Postfix's
	// maximal_queue_lifetime. Zero must not mean "give up at once".
	defaultMaxAge = 5 * 24 * time.Hour
	// defaultReportingMTA names the relay in notifications when the host
	// name cannot be read.
	defaultReportingMTA = "oauthrelay"
)

// QueueObserver is told what a Queue does, when the delivery's Observer
// also implements it (the metrics do). It is an add-on, found by type
// assertion, so observers that do not care need no methods for it.
type QueueObserver interface {
	// Queued reports a message written to the spool.
	Queued(a events.Account, bytes int64)
	// QueueAttempt reports the outcome of one delivery attempt: result is
	// "delivered", "deferred" or "failed"; reason, for the last two, is
	// why (one of the Reason constants), "" for delivered.
	QueueAttempt(a events.Account, result, reason string)
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
	// Route, when set, gives the delivery of a message by the mailbox it
	// was queued for (Envelope.Mailbox; see For): an account with many
	// mailboxes (a domain-wide one) sends each over its own mailbox's pool
	// and limits. Nil: Sender delivers every message.
	Route func(mailbox string) Delivery
	// Credentials are the account's own (a queued message outlives the
	// app session that submitted it).
	Credentials upstream.Credentials
	// MaxAge is how long a message is retried before it is given up;
	// zero is 5 days (config's default).
	MaxAge time.Duration
	// MaxSize is the largest message accepted (the SIZE advertised); 0
	// accepts any size.
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
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the worker has ended (or will never run)
	start  sync.Once
	once   sync.Once
}

// NewQueue returns a queue that accepts messages at once; its worker,
// which delivers them, runs from Start to Close. A relay built only to
// look (`oauthrelay check`) never starts it, so it delivers nothing behind
// the running relay's back.
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
	if o.MaxAge <= 0 {
		o.MaxAge = defaultMaxAge
	}
	if o.ReportingMTA == "" {
		o.ReportingMTA, _ = os.Hostname()
	}
	if o.ReportingMTA == "" {
		o.ReportingMTA = defaultReportingMTA
	}
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{
		o:      o,
		log:    o.Logger.With("account", o.Account.Name, "delivery", "queue"),
		kick:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	return q
}

// Start starts the worker; a second Start, or one after Close, does
// nothing.
func (q *Queue) Start() {
	q.start.Do(func() { go q.run(q.ctx) })
}

// Ready implements Delivery. A queue accepts mail whatever the upstream's
// state: that is its point (the token lost for hours: messages wait). The
// app's own credentials were checked by the local login.
func (q *Queue) Ready(context.Context, upstream.Credentials) error { return nil }

// Begin implements Delivery. A SIZE= over MaxSize is refused at once (RFC
// 1870 §6.1: 552 at MAIL), before the app sends the message.
func (q *Queue) Begin(ctx context.Context, _ upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	return q.begin(ctx, q.o.Account, from, opts)
}

func (q *Queue) begin(ctx context.Context, a events.Account, from string, opts *smtp.MailOptions) (Tx, error) {
	if opts != nil && q.o.MaxSize > 0 && opts.Size > q.o.MaxSize {
		return nil, errQueueTooBig
	}
	return &queueTx{q: q, ctx: ctx, acct: a, env: spool.Envelope{
		Account: a.Name,
		Mailbox: a.Mailbox,
		From:    from,
		Mail:    mailOf(opts),
	}}, nil
}

// For is the queue's Delivery for one mailbox of its account: messages are
// queued for that mailbox (Envelope.Mailbox), and Route delivers them over
// its pool. Closing it does nothing; the Queue is closed by its owner.
func (q *Queue) For(mailbox string) Delivery {
	a := q.o.Account
	a.Mailbox = mailbox
	return queueFor{q: q, a: a}
}

// queueFor is Queue.For's Delivery.
type queueFor struct {
	q *Queue
	a events.Account
}

func (f queueFor) Ready(ctx context.Context, cred upstream.Credentials) error {
	return f.q.Ready(ctx, cred)
}

func (f queueFor) Begin(ctx context.Context, _ upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	return f.q.begin(ctx, f.a, from, opts)
}

func (queueFor) Close() {}

// Close stops the worker and waits for it. A delivery in progress is
// interrupted and its message left due at once for the next worker (after
// a reload or a restart); if its final dot may have reached the upstream,
// that next attempt is counted as a possible duplicate (see finish).
func (q *Queue) Close() {
	q.once.Do(q.cancel)
	q.start.Do(func() { close(q.done) }) // never started: nothing to wait for
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
	q    *Queue
	ctx  context.Context
	acct events.Account // the account and the mailbox it is queued for
	env  spool.Envelope
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
		return nil, errQueueTooBig
	case errors.Is(err, spool.ErrNoSpace), errors.Is(err, spool.ErrUnavailable):
		t.q.log.Error("cannot write a message to the spool: it was refused with 452", "err", err)
		return nil, errSpoolFull
	default:
		return nil, err
	}
	t.q.log.Info("message queued", "id", e.ID, "from", e.From, "rcpts", len(e.Recipients), "bytes", e.Size,
		"message_id", e.MessageID)
	if qo, ok := t.q.o.Observer.(QueueObserver); ok {
		qo.Queued(t.acct, e.Size)
	}
	logMessage(t.q.o.Observer, t.acct, queueRecord(e, e.Created, OutcomeQueued, "250 2.0.0 OK queued as "+e.ID))
	t.q.wake()
	return &Accepted{Reply: "2.0.0 OK queued as " + e.ID, Bytes: e.Size}, nil
}

func (t *queueTx) Abort() {}

// errQueueTooBig: the message is larger than MaxSize (RFC 5321
// §4.5.3.1.10, RFC 3463 5.3.4: message too big for system).
var errQueueTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
	Message: "Message size exceeds fixed maximum message size"}

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
// the next one is due. An envelope that cannot be read is logged and left
// out; it does not hold up the others (List returns them either way).
func (q *Queue) deliverDue(ctx context.Context) time.Time {
	now := q.o.Now()
	next := now.Add(pollInterval)
	envs, err := q.o.Spool.List()
	if err != nil {
		q.log.Error("cannot read every message of the spool", "err", err)
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

// attempt delivers message id once if it is due; it returns when to try
// it again (ok false: it is finished, or not this worker's to try).
func (q *Queue) attempt(ctx context.Context, id string) (again time.Time, ok bool) {
	release, err := q.o.Spool.Claim(id)
	if err != nil {
		if !errors.Is(err, spool.ErrClaimed) && !errors.Is(err, spool.ErrNotFound) {
			q.log.Error("cannot claim a queued message", "id", id, "err", err)
		}
		return time.Time{}, false // another worker has it, or it is gone
	}
	defer release()
	// Another worker (a second process, or this account's Queue before a
	// reload) may have tried it since this one listed the spool: whether
	// it is due is decided on the envelope read under the claim.
	cur, err := q.o.Spool.Get(id)
	if err != nil || !cur.Failed.IsZero() {
		return time.Time{}, false
	}
	if cur.NextAttempt.After(q.o.Now()) {
		return cur.NextAttempt, true
	}
	env, interrupted, err := q.o.Spool.BeginAttempt(id)
	if err != nil {
		q.log.Error("cannot record the start of a delivery attempt", "id", id, "err", err)
		return time.Time{}, false
	}
	log := q.log.With("id", id, "attempt", env.Attempts)
	if interrupted {
		log.Warn("the previous attempt ended before its outcome was recorded: the message may be delivered twice",
			"message_id", env.MessageID)
		if qo, ok := q.o.Observer.(QueueObserver); ok {
			qo.QueueDuplicate(q.o.Account)
		}
	}
	out, reason := q.sendBody(ctx, env, log)
	return q.finish(ctx, env, out, reason, log)
}

// sendBody opens the message's body and makes one delivery attempt. A body
// gone from the spool can never be delivered: its recipients are given up.
// It returns what the attempt knows and, when some recipient was not
// delivered, why (a Reason).
func (q *Queue) sendBody(ctx context.Context, env *spool.Envelope, log *slog.Logger) (outcome, string) {
	if env.Pending() == 0 {
		return outcomeKnown, "" // a crash after its last recipient's outcome was recorded
	}
	body, err := q.o.Spool.OpenBody(env.ID)
	if errors.Is(err, spool.ErrNotFound) {
		log.Error("the queued message's content is missing from the spool", "err", err)
		giveUp(env, "the message's content was lost from the relay's queue")
		return outcomeKnown, ReasonUnreadable
	}
	if err != nil {
		log.Error("cannot read the queued message", "err", err)
		env.LastError = "the message could not be read from the relay's queue"
		return outcomeKnown, ReasonUnreadable
	}
	defer body.Close()
	return q.send(ctx, env, body, log)
}

// outcome says whether an attempt knows what the upstream did with the
// message.
type outcome int

const (
	outcomeKnown outcome = iota
	// outcomeUnknown: the connection was lost after the message was sent,
	// perhaps with its final dot: the upstream may have it, and the next
	// attempt may deliver it twice.
	outcomeUnknown
)

// send makes one delivery attempt of env's pending recipients and records
// each recipient's outcome in env; the reason it returns is that of the
// attempt's last refusal or failure ("" when there was none).
func (q *Queue) send(ctx context.Context, env *spool.Envelope, body io.Reader, log *slog.Logger) (outcome, string) {
	sender := q.o.Sender
	if q.o.Route != nil && env.Mailbox != "" {
		sender = q.o.Route(env.Mailbox)
	}
	tx, err := sender.Begin(forQueue(ctx), q.o.Credentials, env.From, mailOptions(env))
	if err != nil {
		env.LastError = describe(err)
		switch {
		case permanent(err):
			failPending(env, env.LastError)
		case isReply(err):
			// The reply is every pending recipient's last one.
			for i := range env.Recipients {
				if r := &env.Recipients[i]; r.State == spool.Pending {
					r.Reply = env.LastError
				}
			}
		}
		log.Info("delivery attempt failed at MAIL", "reason", env.LastError, "err", err)
		return outcomeKnown, reasonOf(err)
	}
	var (
		accepted []int
		reason   string
	)
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
		reason = reasonOf(err)
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			env.LastError = describe(err) // the session died: the rest wait
			log.Info("delivery attempt failed at RCPT", "reason", env.LastError, "err", err)
			break
		}
		r.Reply = describe(err)
		env.LastError = r.Reply
		if permanent(err) {
			r.State = spool.Failed
		}
	}
	if len(accepted) == 0 {
		tx.Abort()
		return outcomeKnown, reason
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
	out := outcomeKnown
	if err != nil {
		reason = reasonOf(err)
		env.LastError = describe(err)
		var se *smtp.SMTPError
		if !errors.As(err, &se) && !isReadError(err) {
			out = outcomeUnknown
		}
	}
	log.Info("delivery attempt", "delivered", count(env, spool.Delivered), "failed", count(env, spool.Failed),
		"pending", env.Pending(), "reply", orDefault(replyOf(acc), env.LastError), "err", err)
	return out, reason
}

// finish records the attempt's outcome: the message stays for a retry
// with backoff, or it is done — deleted when every recipient got it,
// moved to the failed area after a notification otherwise. A message
// still pending once MaxAge has passed since it was queued is given up
// after this attempt; retries are never scheduled past that moment, so
// the give-up is on time.
//
// An attempt interrupted by Close leaves the message due at once (the
// next worker, after a reload or a restart, takes it without backoff);
// one whose outcome is unknown keeps its InFlight mark, so the next
// attempt is counted as a possible duplicate.
func (q *Queue) finish(ctx context.Context, env *spool.Envelope, out outcome, reason string, log *slog.Logger) (time.Time, bool) {
	if out == outcomeKnown {
		env.InFlight = time.Time{}
	}
	obs := q.attemptObserver(env)
	now := q.o.Now()
	deadline := env.Created.Add(q.o.MaxAge)
	if env.Pending() > 0 && ctx.Err() != nil {
		env.NextAttempt = now
		if err := q.o.Spool.Update(env); err != nil {
			log.Error("cannot record the interrupted attempt", "err", err)
		}
		log.Info("delivery attempt interrupted: the queue is closing; the message stays due")
		return now, true
	}
	expired := env.Pending() > 0 && !now.Before(deadline)
	if expired {
		giveUp(env, expiredReason(q.o.MaxAge, env.LastError))
		reason = ReasonExpired
	}
	if env.Pending() > 0 {
		env.NextAttempt = minTime(now.Add(backoff(env.Attempts)), deadline)
		if err := q.o.Spool.Update(env); err != nil {
			log.Error("cannot record the attempt", "err", err)
		}
		log.Info("delivery deferred", "pending", env.Pending(), "next_attempt", env.NextAttempt, "reason", env.LastError)
		if obs != nil {
			obs.QueueAttempt(q.o.Account, "deferred", orDefault(reason, ReasonOther))
		}
		return env.NextAttempt, true
	}
	failed := failedRecipients(env)
	if len(failed) == 0 {
		if err := q.o.Spool.Delete(env.ID); err != nil {
			log.Error("cannot remove a delivered message from the spool: it may be delivered again", "err", err)
		}
		log.Info("message delivered", "message_id", env.MessageID)
		if obs != nil {
			obs.QueueAttempt(q.o.Account, "delivered", "")
		}
		return time.Time{}, false
	}
	if err := q.o.Spool.Update(env); err != nil {
		log.Error("cannot record the attempt", "err", err)
	}
	giveUpStatus := statusUndefined
	if expired {
		giveUpStatus = statusExpired
	}
	q.notify(ctx, env, failed, giveUpStatus, log)
	why := fmt.Sprintf("%d of %d recipients failed: %s", len(failed), len(env.Recipients), recipientReason(env, failed[0]))
	if err := q.o.Spool.Fail(env.ID, why); err != nil {
		log.Error("cannot move a failed message to the failed area", "err", err)
	}
	log.Warn("message failed", "reason", why, "message_id", env.MessageID)
	if obs != nil {
		obs.QueueAttempt(q.o.Account, "failed", failedReason(failed[0], reason))
	}
	return time.Time{}, false
}

// failPending marks every pending recipient failed with the upstream's
// permanent reply (to MAIL, or to the final dot).
func failPending(env *spool.Envelope, reply string) {
	for i := range env.Recipients {
		if r := &env.Recipients[i]; r.State == spool.Pending {
			r.State, r.Reply = spool.Failed, reply
		}
	}
}

// giveUp marks every pending recipient failed for reason, in plain words,
// which becomes the message's LastError; each keeps the upstream's last
// reply to it, for the DSN's Diagnostic-Code.
func giveUp(env *spool.Envelope, reason string) {
	env.LastError = reason
	for i := range env.Recipients {
		if r := &env.Recipients[i]; r.State == spool.Pending {
			r.State = spool.Failed
		}
	}
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

// permanent reports a refusal that retrying will not change: a 5xx reply,
// except Exchange's daily quota (554 5.2.0 SubmissionQuotaExceededException),
// which frees within a day: a queued message waits for it. A login refusal
// (535) is the account's problem, not the message's: it is retried until
// an administrator fixes it or the message ages out.
func permanent(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return false
	}
	var se *smtp.SMTPError
	return errors.As(err, &se) && permanentReply(se)
}

// isReply reports an error that is the upstream's reply (to MAIL, or to
// the login).
func isReply(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Reply != nil
	}
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

func permanentReply(se *smtp.SMTPError) bool {
	return se.Code >= 500 && classify(se) != limitQuota
}

// describe is an error in the words of the message log and the DSN: the
// upstream's own reply when there is one, plain words otherwise. The
// details (addresses, network errors) go to the log line beside it.
func describe(err error) string {
	var (
		ue *upstream.Error
		se *smtp.SMTPError
		le *LostError
	)
	switch {
	case errors.As(err, &ue) && ue.Reply != nil:
		return upstream.FormatReply(ue.Reply)
	case errors.As(err, &ue) && ue.Kind == upstream.NeedsSignIn:
		return "the account cannot get a token and must be signed in again by an administrator (" + ue.Reason + ")"
	case errors.As(err, &ue):
		return "the upstream server was not available (" + ue.Reason + ")"
	case errors.As(err, &se):
		return upstream.FormatReply(se)
	case isReadError(err):
		return "the message could not be read from the relay's queue"
	case errors.Is(err, context.Canceled):
		return "the attempt was interrupted: the relay was stopping"
	case errors.As(err, &le):
		return "the connection to the upstream server was lost during " + le.Stage
	case errors.Is(err, context.DeadlineExceeded):
		return "the attempt timed out"
	}
	return "the attempt failed (the relay's log has the details)"
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
