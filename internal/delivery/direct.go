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
	return &Direct{sender: sender, account: a, observer: obs, maxWait: o.MaxWait, shared: o.SharedSender}
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
	return &directTx{Submission: m, d: d}, nil
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
}

func (t *directTx) Data(r io.Reader) (*Accepted, error) {
	acc, err := t.Submission.Data(r)
	if err == nil {
		t.d.observer.Message(t.d.account, acc.Bytes)
	}
	return acc, err
}
