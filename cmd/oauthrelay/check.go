package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/proxy"
	smtpproxy "github.com/oauthrelay/oauthrelay/proxy/smtp"
)

// errCheckFailed makes check exit 1 after printing its own report.
var errCheckFailed = errors.New("check failed")

// checkTimeout bounds each step of a check.
const checkTimeout = 60 * time.Second

// runCheck validates the configuration, then for each account (or the one
// named) gets a token and logs in upstream over SMTP and IMAP, and prints a
// table plus, for every failure, what it means and how to fix it.
func runCheck(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	path, rest, err := configFlag("check", args, stderr)
	if err != nil {
		return err
	}
	if len(rest) > 1 {
		return errUsage
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: configuration OK (%d providers, %d accounts)\n\n", path, len(cfg.Providers), len(cfg.Accounts))
	relay, _, err := newRelay(cfg, newLogger(config.Log{Level: "error"}, stderr), nil, nil)
	if err != nil {
		return err
	}
	var results []checkResult
	for _, a := range relay.Accounts() {
		if len(rest) == 1 && a.Name != rest[0] {
			continue
		}
		results = append(results, checkAccount(ctx, relay, a))
	}
	if len(results) == 0 {
		return fmt.Errorf("%s: no account %q", path, rest[0])
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCOUNT\tGRANT\tTOKEN\tSMTP\tIMAP")
	failed := false
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.account, r.grant, r.token.short(), r.smtp.short(), r.imap.short())
	}
	tw.Flush()
	for _, r := range results {
		for _, s := range []struct {
			what string
			st   step
		}{{"token", r.token}, {"SMTP", r.smtp}, {"IMAP", r.imap}} {
			if s.st.err == nil {
				continue
			}
			failed = true
			fmt.Fprintf(stdout, "\n%s %s: %v\n", r.account, s.what, s.st.err)
			if s.st.explain != "" {
				fmt.Fprintf(stdout, "  %s\n", s.st.explain)
			}
		}
	}
	if failed {
		return errCheckFailed
	}
	fmt.Fprintln(stdout, "\nAll checks passed.")
	return nil
}

type checkResult struct {
	account, grant    string
	token, smtp, imap step
}

// step is one check: ok, skipped (with why) or failed (with an
// explanation for the administrator).
type step struct {
	ran     bool
	skipped string
	err     error
	explain string
}

func (s step) short() string {
	switch {
	case s.skipped != "":
		return "skipped (" + s.skipped + ")"
	case !s.ran:
		return "-"
	case s.err != nil:
		return "FAILED"
	}
	return "ok"
}

func checkAccount(ctx context.Context, relay *proxy.Relay, a *proxy.Account) checkResult {
	r := checkResult{account: a.Name, grant: a.ProviderRef.Grant}
	if a.PasswordPassthrough {
		r.token.skipped = "password passthrough: needs the app's password"
		return r
	}
	tctx, cancel := context.WithTimeout(ctx, checkTimeout)
	tok, err := a.Source.Token(tctx)
	cancel()
	r.token.ran = true
	if err != nil {
		r.token.err, r.token.explain = tokenExplanation(err)
		return r
	}
	if a.ProviderRef.SMTP.Addr != "" {
		r.smtp = checkSMTP(ctx, relay, a, tok)
	}
	if a.ProviderRef.IMAP.Addr != "" {
		r.imap = checkIMAP(ctx, relay, a, tok)
	}
	return r
}

func tokenExplanation(err error) (error, string) {
	var oe *oauth.Error
	if !errors.As(err, &oe) {
		return err, ""
	}
	msg := oe.Reason
	if oe.AADSTS != 0 {
		msg = fmt.Sprintf("AADSTS%d: %s", oe.AADSTS, msg)
	}
	return errors.New(msg), oe.Fix
}

// checkSMTP logs in with XOAUTH2 and tries MAIL FROM with the first
// concrete allowed sender (Send As permission).
func checkSMTP(ctx context.Context, relay *proxy.Relay, a *proxy.Account, tok string) step {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	sender := ""
	for _, f := range a.AllowedFrom {
		if !strings.Contains(f, "*") && f != "<>" {
			sender = f
			break
		}
	}
	err := smtpproxy.Probe(ctx, relay, a, tok, sender)
	s := step{ran: true, err: err}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		// The enhanced code is what Microsoft's documentation is
		// organised by (go-smtp's Error() leaves it out).
		s.err = fmt.Errorf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		if se.EnhancedCode == smtp.NoEnhancedCode {
			s.err = fmt.Errorf("%d %s", se.Code, se.Message)
		}
		s.explain = proxy.ExplainSMTP(se.Code, se.EnhancedCode, se.Message)
	} else if err != nil {
		s.explain = "the upstream SMTP server " + a.ProviderRef.SMTP.Addr + " could not be reached or the TLS handshake failed"
	}
	return s
}

// checkIMAP logs in with XOAUTH2 and opens INBOX read-only: Exchange may
// accept the login and only then say "User is authenticated but not
// connected".
func checkIMAP(ctx context.Context, relay *proxy.Relay, a *proxy.Account, tok string) step {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	err := imapLogin(ctx, relay, a, tok)
	s := step{ran: true, err: err}
	var ie *imap.Error
	if errors.As(err, &ie) {
		s.explain = proxy.ExplainIMAP(ie.Text)
	} else if err != nil {
		s.explain = "the upstream IMAP server " + a.ProviderRef.IMAP.Addr + " could not be reached or the TLS handshake failed"
	}
	return s
}

func imapLogin(ctx context.Context, relay *proxy.Relay, a *proxy.Account, tok string) error {
	up := a.ProviderRef.IMAP
	conn, err := relay.Dial(ctx, a, up)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var c *imapclient.Client
	if up.TLS == "starttls" {
		host, _, _ := net.SplitHostPort(up.Addr)
		c, err = imapclient.NewStartTLS(conn, &imapclient.Options{TLSConfig: a.UpstreamTLS(host)})
		if err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
	} else {
		c = imapclient.New(conn, nil)
	}
	defer c.Close()
	if err := c.WaitGreeting(); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if err := c.Authenticate(sasl.NewXOAuth2Client(a.Mailbox, tok)); err != nil {
		return err
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return err
	}
	return c.Logout().Wait()
}
