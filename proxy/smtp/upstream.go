package smtp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// upstream is one connection to the provider's SMTP server, logged in with
// XOAUTH2 as one account's mailbox.
type upstream struct {
	c    *smtpclient.Client
	acct *proxy.Account
	// broken is set after a network error: the connection is not reused.
	broken bool
}

// dialUpstream connects to a's provider SMTP server and says EHLO (after
// STARTTLS when configured). Setup is bounded by ctx.
func dialUpstream(ctx context.Context, relay *proxy.Relay, a *proxy.Account) (*smtpclient.Client, error) {
	up := a.ProviderRef.SMTP
	conn, err := relay.Dial(ctx, a, up)
	if err != nil {
		return nil, err
	}
	c, err := smtpclient.New(ctx, conn, localName)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("upstream %s: %w", up.Addr, err)
	}
	if up.TLS == "starttls" {
		host, _, _ := net.SplitHostPort(up.Addr)
		if err := c.StartTLS(ctx, a.UpstreamTLS(host), localName); err != nil {
			c.Close()
			return nil, fmt.Errorf("upstream %s: %w", up.Addr, err)
		}
	}
	return c, nil
}

// probeUpstreamSize returns the SIZE a's provider advertises.
func probeUpstreamSize(ctx context.Context, relay *proxy.Relay, a *proxy.Account) (int64, error) {
	c, err := dialUpstream(ctx, relay, a)
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
		if _, ok := isReply(err); ok {
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
func authenticate(ctx context.Context, c *smtpclient.Client, user, token string) error {
	err := c.Auth(ctx, sasl.NewXOAuth2Client(user, token))
	if se, ok := isReply(err); ok && (se.Code == 500 || se.Code == 501) {
		err = c.Auth(ctx, &sasl.XOAuth2Client{User: user, Token: token, NoInitialResponse: true})
	}
	if err != nil {
		if se, ok := isReply(err); ok {
			return se
		}
		return fmt.Errorf("XOAUTH2 login upstream: %w", err)
	}
	return nil
}

// close ends the upstream session politely when it is healthy.
func (u *upstream) close() {
	if u.broken {
		u.c.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), quitTimeout)
	defer cancel()
	u.c.Quit(ctx)
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
	if err := up.c.Mail(ctx, sender, nil); err != nil {
		return err
	}
	return up.c.Reset(ctx)
}
