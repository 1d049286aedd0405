// Package delivery is where an SMTP front end hands over what an app
// submits: per account, a Delivery opens one transaction per message (the
// envelope, then the body), in the shape of maddy's DeliveryTarget /
// Delivery. The front end keeps the protocol, the sender checks and the
// mapping of errors to replies; what happens to the message — relayed at
// once over an upstream session, later a spool or Microsoft Graph — is the
// delivery's business.
//
// Direct is the first implementation: every command is relayed at once over
// an authenticated upstream session, so the app sees the upstream's own
// reply to each, and a message is acknowledged only with the upstream's
// 250. Upstream sessions come from the mailbox's Sender, shared by every
// account that sends as it: the pool of its sessions, which keeps
// Exchange Online's limits (connections, messages a minute, recipients a
// message and a day) by making messages wait, within a max wait, instead
// of tripping them (see Sender).
//
// Errors a Delivery returns:
//   - *smtp.SMTPError: the upstream's reply, to be passed to the app as is,
//     or the relay's own for too many recipients (452 4.5.3) or a closed
//     Sender (ErrClosed);
//   - *LimitError: the relay's own refusal for a mailbox limit; it unwraps
//     to the *smtp.SMTPError (451 4.7.0 in plain words) the app gets;
//   - *upstream.Error: logging in upstream failed (see its Kind);
//   - *LostError: the upstream connection failed mid-transaction;
//   - *smtpclient.ReadError (from Data): reading the app's message failed;
//   - ctx's error, wrapped, when it ended while the message waited for the
//     mailbox's limits.
package delivery

import (
	"context"
	"fmt"
	"io"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// Delivery is one account's way to send.
type Delivery interface {
	// Ready reports whether the account can send now: the credentials
	// give a token and an upstream session is logged in. The app's AUTH
	// is answered with it, so the app learns the truth at AUTH time.
	Ready(ctx context.Context, cred upstream.Credentials) error
	// Begin opens a transaction for one message from the envelope sender
	// from. ctx bounds the whole transaction: cancelling it (the server
	// closing) interrupts any exchange in progress.
	Begin(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error)
	// Close ends the delivery's idle upstream sessions. Transactions in
	// progress finish; their sessions are then closed, not kept.
	Close()
}

// Tx is one message's transaction. Its methods are called one at a time.
// After Data (whatever its outcome) or Abort the Tx is finished.
type Tx interface {
	// Rcpt adds a recipient.
	Rcpt(to string, opts *smtp.RcptOptions) error
	// Data streams the message from r (dot-unstuffed, CRLF line ends)
	// and returns the upstream's acceptance.
	Data(r io.Reader) (*Accepted, error)
	// Abort ends the transaction without a message (RSET, QUIT, or an
	// app that went away).
	Abort()
}

// Accepted is the upstream's acceptance of a message.
type Accepted struct {
	// Reply is the text of the upstream's 250 (with its queue id), passed
	// to the app unchanged.
	Reply string
	// Bytes is the size of the message as the upstream received it.
	Bytes int64
}

// LostError is an upstream connection that failed during a transaction,
// at Stage ("MAIL", "RCPT" or "DATA"). The message was not delivered.
type LostError struct {
	Stage string
	Err   error
}

func (e *LostError) Error() string {
	return fmt.Sprintf("upstream connection lost at %s: %v", e.Stage, e.Err)
}

func (e *LostError) Unwrap() error { return e.Err }
