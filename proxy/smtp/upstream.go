package smtp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// upstream is one connection to the provider's SMTP server, logged in with
// XOAUTH2 as one account's mailbox.
type upstream struct {
	c    *smtp.Client
	acct *proxy.Account
	// broken is set after a network error: the connection is not reused.
	broken bool
}

// dialUpstream connects to a's provider SMTP server and says EHLO (after
// STARTTLS when configured). Setup is bounded by ctx.
func dialUpstream(ctx context.Context, relay *proxy.Relay, a *proxy.Account) (*smtp.Client, error) {
	up := a.ProviderRef.SMTP
	conn, err := relay.Dial(ctx, a, up)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var c *smtp.Client
	if up.TLS == "starttls" {
		host, _, _ := net.SplitHostPort(up.Addr)
		c, err = smtp.NewClientStartTLS(conn, a.UpstreamTLS(host))
		if err != nil {
			return nil, fmt.Errorf("STARTTLS with upstream %s: %w", up.Addr, err)
		}
	} else {
		c = smtp.NewClient(conn)
		if err := c.Hello("localhost"); err != nil {
			c.Close()
			return nil, fmt.Errorf("EHLO to upstream %s: %w", up.Addr, err)
		}
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

// probeUpstreamSize returns the SIZE a's provider advertises.
func probeUpstreamSize(ctx context.Context, relay *proxy.Relay, a *proxy.Account) (int64, error) {
	c, err := dialUpstream(ctx, relay, a)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	defer c.Quit()
	size, ok := c.MaxMessageSize()
	if !ok || size <= 0 {
		return 0, errors.New("upstream advertises no SIZE")
	}
	return int64(size), nil
}

// connect dials a's upstream and logs in with token. A refusal is the
// upstream's *smtp.SMTPError, to be passed to the app unchanged.
func connect(ctx context.Context, relay *proxy.Relay, a *proxy.Account, token string) (*upstream, error) {
	start := time.Now()
	c, err := dialUpstream(ctx, relay, a)
	if err != nil {
		relay.Observer().Upstream("smtp", a, "unavailable", time.Since(start))
		return nil, err
	}
	if err := authenticate(ctx, c, a.Mailbox, token); err != nil {
		c.Close()
		result := "unavailable"
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			result = "rejected"
		}
		relay.Observer().Upstream("smtp", a, result, time.Since(start))
		return nil, err
	}
	relay.Observer().Upstream("smtp", a, "ok", time.Since(start))
	return &upstream{c: c, acct: a}, nil
}

// authenticate logs in with XOAUTH2, the token on the AUTH line as Exchange
// expects. A server that refuses the 2–3 KB line as a syntax error (Dovecot
// submission: 500 5.5.2 Line too long) gets the token after a 334
// continuation instead.
func authenticate(ctx context.Context, c *smtp.Client, user, token string) error {
	if dl, ok := ctx.Deadline(); ok {
		c.CommandTimeout = time.Until(dl)
		defer func() { c.CommandTimeout = 5 * time.Minute }()
	}
	err := c.Auth(sasl.NewXOAuth2Client(user, token))
	var se *smtp.SMTPError
	if errors.As(err, &se) && (se.Code == 500 || se.Code == 501) {
		err = c.Auth(&sasl.XOAuth2Client{User: user, Token: token, NoInitialResponse: true})
	}
	if err != nil {
		if errors.As(err, &se) {
			return se
		}
		return fmt.Errorf("XOAUTH2 login upstream: %w", err)
	}
	return nil
}

// close ends the upstream session politely when it is healthy.
func (u *upstream) close() {
	if !u.broken {
		u.c.CommandTimeout = 10 * time.Second
		u.c.Quit()
	}
	u.c.Close()
}

// isReply reports whether err is an SMTP reply (the upstream spoke) rather
// than a network failure.
func isReply(err error) (*smtp.SMTPError, bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, true
	}
	return nil, false
}

// Probe logs in to a's upstream with token and, when sender is not empty,
// opens and resets a transaction with MAIL FROM sender, which shows whether
// the mailbox may send as sender (550 5.7.60 otherwise). It is what
// `oauthrelay check` runs. A refusal is the upstream's *smtp.SMTPError.
func Probe(ctx context.Context, relay *proxy.Relay, a *proxy.Account, token, sender string) error {
	up, err := connect(ctx, relay, a, token)
	if err != nil {
		return err
	}
	defer up.close()
	if sender == "" {
		return nil
	}
	if err := up.c.Mail(sender, nil); err != nil {
		return err
	}
	return up.c.Reset()
}
