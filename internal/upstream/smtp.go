package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
)

// reasonCannotConnect is the Reason of a login whose dial failed.
const reasonCannotConnect = "cannot connect"

// SMTP dials t, says EHLO (after STARTTLS when configured), gets a token
// from cred and logs in with XOAUTH2. On success the client is ready for
// MAIL. A refusal is an *Error with Kind Refused and the upstream's reply;
// a token the upstream refused is invalidated so the next login fetches a
// new one.
func SMTP(ctx context.Context, t Target, cred Credentials) (*smtpclient.Client, error) {
	tok, err := cred.Token(ctx)
	if err != nil {
		return nil, TokenError(t, events.SMTP, err)
	}
	start := time.Now()
	c, err := smtpLogin(ctx, t, tok)
	if cutOff(ctx, err) {
		// A connection cut on the way in (reset before the greeting, during
		// STARTTLS or its handshake) is mostly a middlebox or one of
		// Exchange's front ends going away: the next connection gets
		// through, and the app need not see a 454 for it.
		t.observe(events.SMTP, err, start)
		start = time.Now()
		c, err = smtpLogin(ctx, t, tok)
	}
	t.observe(events.SMTP, err, start)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Kind == Refused && e.Reply.Code == 535 {
			cred.Invalidate()
		}
		return nil, err
	}
	return c, nil
}

func smtpLogin(ctx context.Context, t Target, token string) (*smtpclient.Client, error) {
	c, err := SMTPHello(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := xoauth2(ctx, c, t.Account.Mailbox, token); err != nil {
		c.Close()
		return nil, smtpError(t, err, "XOAUTH2 login")
	}
	return c, nil
}

// SMTPHello dials t and says EHLO, after STARTTLS when configured, without
// logging in: enough to read the server's extensions (SIZE). Failures are
// *Error with Kind Unavailable (or Refused for a reply such as a 554
// greeting).
func SMTPHello(ctx context.Context, t Target) (*smtpclient.Client, error) {
	conn, err := t.Dial(ctx)
	if err != nil {
		return nil, &Error{Kind: Unavailable, Proto: events.SMTP, Addr: t.Server.Addr, Reason: reasonCannotConnect, Err: err}
	}
	c, err := smtpclient.New(ctx, conn, localName)
	if err != nil {
		conn.Close()
		return nil, smtpError(t, err, "greeting")
	}
	if t.Server.TLS == config.TLSStartTLS {
		if err := c.StartTLS(ctx, t.ClientTLS(), localName); err != nil {
			c.Close()
			return nil, smtpError(t, err, "STARTTLS")
		}
	}
	return c, nil
}

// xoauth2 logs in with the token on the AUTH line, as Exchange expects. A
// server that refuses the 2–3 KB line as a syntax error (Dovecot
// submission: 500 5.5.2 Line too long) gets the token after a 334
// continuation instead.
func xoauth2(ctx context.Context, c *smtpclient.Client, user, token string) error {
	err := c.Auth(ctx, sasl.NewXOAuth2Client(user, token))
	var se *smtp.SMTPError
	if errors.As(err, &se) && (se.Code == 500 || se.Code == 501) {
		err = c.Auth(ctx, &sasl.XOAuth2Client{User: user, Token: token, NoInitialResponse: true})
	}
	return err
}

// smtpError classifies an SMTP failure at step: an upstream reply is
// Refused, whatever its code (a 4xx reply such as 432 4.3.2 tells the app
// itself to retry, and reaches it unchanged); anything else Unavailable.
func smtpError(t Target, err error, step string) *Error {
	e := &Error{Kind: Unavailable, Proto: events.SMTP, Addr: t.Server.Addr, Reason: step + " failed", Err: err}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e.Kind, e.Reply, e.Err = Refused, se, nil
		e.Reason = fmt.Sprintf("%s: upstream replied %s", step, FormatReply(se))
		if hint := ExplainSMTP(se.Code, se.EnhancedCode, se.Message); hint != "" {
			e.Reason += "; " + hint
		}
	}
	return e
}

// FormatReply writes an SMTP reply with its enhanced code, which is what
// Microsoft's documentation is organised by (go-smtp's Error() leaves it
// out).
func FormatReply(se *smtp.SMTPError) string {
	if se.EnhancedCode == smtp.NoEnhancedCode || se.EnhancedCode == (smtp.EnhancedCode{}) {
		return fmt.Sprintf("%d %s", se.Code, se.Message)
	}
	return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
}

// SMTPSize returns the SIZE t advertises (EHLO only, no login).
func SMTPSize(ctx context.Context, t Target) (int64, error) {
	c, err := SMTPHello(ctx, t)
	if err != nil {
		return 0, err
	}
	defer c.Quit(ctx)
	size, ok := c.MaxMessageSize()
	if !ok {
		return 0, errors.New("upstream advertises no SIZE")
	}
	return size, nil
}

// ProbeSMTP logs in as the relay does and, when sender is not empty, opens
// and resets a transaction with MAIL FROM sender, which shows whether the
// mailbox may send as sender (550 5.7.60 otherwise). It is what `oauthrelay
// check` runs. A refused MAIL is an *Error with Kind Refused.
func ProbeSMTP(ctx context.Context, t Target, cred Credentials, sender string) error {
	c, err := SMTP(ctx, t, cred)
	if err != nil {
		return err
	}
	defer c.Quit(ctx)
	if sender == "" {
		return nil
	}
	if err := c.Mail(ctx, sender, nil); err != nil {
		return smtpError(t, err, "MAIL FROM "+sender)
	}
	if err := c.Reset(ctx); err != nil {
		return smtpError(t, err, "RSET")
	}
	return nil
}

// cutOff reports a login that failed because its connection was cut after
// it was made (a reset as the dial completes counts: something accepted
// it): no reply, no other dial failure (the server is not there), no
// timeout (a second wait would double the app's), no certificate the
// relay refuses (that does not change), and ctx still alive.
func cutOff(ctx context.Context, err error) bool {
	var (
		e  *Error
		ne net.Error
		ce *tls.CertificateVerificationError
	)
	switch {
	case err == nil, ctx.Err() != nil, !errors.As(err, &e):
		return false
	case e.Kind != Unavailable || e.Reply != nil:
		return false
	case e.Reason == reasonCannotConnect && !errors.Is(err, syscall.ECONNRESET):
		return false
	case errors.As(err, &ne) && ne.Timeout(), errors.As(err, &ce):
		return false
	}
	return true
}
