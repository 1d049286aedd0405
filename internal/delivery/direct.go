package delivery

import (
	"context"
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// Direct relays each command at once over an upstream session of its
// mailbox's Sender: the app sees the upstream's reply to MAIL, to each RCPT
// and to the final dot, and 250 comes only with the upstream's own 250. A
// message that must wait for the mailbox's limits waits at MAIL, for at
// most the account's max wait.
type Direct struct {
	sender   *Sender
	account  events.Account
	observer events.Observer
	maxWait  time.Duration
	shared   bool
	// logs is the observer's message log, nil when it keeps none.
	logs MessageLogger
}

// DirectOptions are an account's settings of its direct delivery.
type DirectOptions struct {
	// MaxWait bounds how long one of the account's messages waits for a
	// connection and its slot in the pace (the account's own
	// EffectiveLimits.MaxWait: an app with a short timeout wants a short
	// wait); 0 never waits, MailboxMaxWait takes the Sender's.
	MaxWait time.Duration
	// SharedSender says the Sender belongs to someone else (the relay
	// keeps one per mailbox for all its accounts): Close leaves it open.
	SharedSender bool
}

// NewDirect returns the direct delivery of account a over sender. Without
// options messages wait at most the Sender's MaxWait, and Close closes the
// Sender (one Sender for this account alone); only the first options are
// used.
func NewDirect(a events.Account, sender *Sender, obs events.Observer, opts ...DirectOptions) *Direct {
	if obs == nil {
		obs = events.Nop{}
	}
	o := DirectOptions{MaxWait: MailboxMaxWait}
	if len(opts) > 0 {
		o = opts[0]
	}
	logs, _ := obs.(MessageLogger)
	return &Direct{sender: sender, account: a, observer: obs, maxWait: o.MaxWait, shared: o.SharedSender, logs: logs}
}

// Ready implements Delivery (see Sender.Ready): the token must come (for a
// password passthrough account that checks the app's password) and the
// mailbox's logins must work. A token failure is an *upstream.Error.
func (d *Direct) Ready(ctx context.Context, cred upstream.Credentials) error {
	return d.sender.Ready(ctx, cred)
}

// Begin implements Delivery (see Sender.Begin).
func (d *Direct) Begin(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	m, err := d.sender.Begin(ctx, cred, from, opts, d.maxWait)
	if err != nil {
		return nil, err
	}
	t := &directTx{Submission: m, d: d}
	if d.logs != nil && !isQueueAttempt(ctx) {
		t.log = &messageEntry{from: from}
	}
	return t, nil
}

// Close implements Delivery: it closes the Sender unless it is shared.
func (d *Direct) Close() {
	if !d.shared {
		d.sender.Close()
	}
}

// directTx is a Submission that reports the messages it sends.
type directTx struct {
	*Submission
	d *Direct
	// log collects the message log's record; nil when none is kept.
	log *messageEntry
}

// messageEntry is what a transaction keeps for its MessageRecord.
type messageEntry struct {
	from  string
	rcpts []string // accepted by the upstream
}

func (t *directTx) Rcpt(to string, opts *smtp.RcptOptions) error {
	err := t.Submission.Rcpt(to, opts)
	if err == nil && t.log != nil {
		t.log.rcpts = append(t.log.rcpts, to)
	}
	return err
}

func (t *directTx) Data(r io.Reader) (*Accepted, error) {
	var head *headerSniffer
	if t.log != nil {
		head = &headerSniffer{r: r}
		r = head
	}
	acc, err := t.Submission.Data(r)
	if err == nil {
		t.d.observer.Message(t.d.account, acc.Bytes)
	}
	if t.log != nil {
		logMessage(t.d.observer, t.d.account, directRecord(t.log.from, t.log.rcpts, head, acc, err))
	}
	return acc, err
}
