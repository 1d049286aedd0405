package delivery

import (
	"context"
	"errors"
	"io"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// Direct relays each command at once over an upstream session from its
// Sender: the app sees the upstream's reply to MAIL, to each RCPT and to
// the final dot, and 250 comes only with the upstream's own 250.
type Direct struct {
	sender   *Sender
	account  events.Account
	observer events.Observer
}

// NewDirect returns the direct delivery of account a over sender.
func NewDirect(a events.Account, sender *Sender, obs events.Observer) *Direct {
	if obs == nil {
		obs = events.Nop{}
	}
	return &Direct{sender: sender, account: a, observer: obs}
}

// Ready implements Delivery: the token must come (for a password
// passthrough account that checks the app's password) and a session must
// be logged in; one is dialled and kept for the next message when none
// waits. A token failure is an *upstream.Error either way.
func (d *Direct) Ready(ctx context.Context, cred upstream.Credentials) error {
	if d.sender.hasIdle() {
		if _, err := cred.Token(ctx); err != nil {
			return upstream.TokenError(d.sender.target, events.SMTP, err)
		}
		return nil
	}
	// upstream.SMTP asks for the token first and classifies its failure.
	c, err := upstream.SMTP(ctx, d.sender.target, cred)
	if err != nil {
		return err
	}
	d.sender.put(c)
	return nil
}

// Begin implements Delivery. A kept session that died while idle
// (Exchange closes idle sessions) is replaced by a new one: one that fails
// at MAIL, or answers it 421 (RFC 5321 §3.8: a server closing an idle
// session says 421 first, and the relay reads it as the reply to MAIL).
func (d *Direct) Begin(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	for {
		c, reused, err := d.sender.get(ctx, cred)
		if err != nil {
			return nil, err
		}
		err = c.Mail(ctx, from, opts)
		if err == nil {
			return &directTx{d: d, ctx: ctx, c: c}, nil
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code != 421 {
			// The upstream answered: the session is still in step.
			d.sender.put(c)
			return nil, se
		}
		// The session is gone, or closing (421): never usable again.
		c.Close()
		if reused {
			continue // it died while parked: the next one, or a new one
		}
		if se != nil {
			return nil, se
		}
		return nil, &LostError{Stage: "MAIL", Err: err}
	}
}

// Close implements Delivery.
func (d *Direct) Close() { d.sender.Close() }

// directTx is a transaction open on one upstream session.
type directTx struct {
	d   *Direct
	ctx context.Context
	c   *smtpclient.Client // nil once finished
}

func (t *directTx) Rcpt(to string, opts *smtp.RcptOptions) error {
	if t.c == nil {
		return &LostError{Stage: "RCPT", Err: errFinished}
	}
	err := t.c.Rcpt(t.ctx, to, opts)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		if se.Code == 421 {
			t.drop()
		}
		return se
	}
	t.drop()
	return &LostError{Stage: "RCPT", Err: err}
}

func (t *directTx) Data(r io.Reader) (*Accepted, error) {
	if t.c == nil {
		return nil, &LostError{Stage: "DATA", Err: errFinished}
	}
	text, n, err := t.c.Data(t.ctx, r)
	var se *smtp.SMTPError
	switch {
	case err == nil:
		t.release()
		t.d.observer.Message(t.d.account, n)
		return &Accepted{Reply: text, Bytes: n}, nil
	case errors.As(err, &se) && !isReadError(err):
		// The upstream answered the final dot: the session is still in
		// step unless it said it is closing.
		if se.Code == 421 {
			t.drop()
		} else {
			t.release()
		}
		return nil, se
	}
	// The app's message ended early or the upstream went away: the
	// session was left without the final dot, so the upstream discards
	// what it got. It cannot be reused.
	t.drop()
	if isReadError(err) {
		return nil, err
	}
	return nil, &LostError{Stage: "DATA", Err: err}
}

func isReadError(err error) bool {
	var re *smtpclient.ReadError
	return errors.As(err, &re)
}

// Abort resets the upstream transaction and keeps the session for reuse.
// A session whose RSET is not answered 250 is closed instead: a 421 says
// the server is closing it, and after any other reply what it still holds
// of the transaction is not known (RFC 5321 §4.1.1.5: RSET must succeed).
func (t *directTx) Abort() {
	if t.c == nil {
		return
	}
	if err := t.c.Reset(t.ctx); err != nil {
		t.drop()
		return
	}
	t.release()
}

// release gives the session back for reuse.
func (t *directTx) release() {
	t.d.sender.put(t.c)
	t.c = nil
}

// drop closes a session that is no longer in step with the upstream.
func (t *directTx) drop() {
	t.c.Close()
	t.c = nil
}

var errFinished = errors.New("transaction already finished")
