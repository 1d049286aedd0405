package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// errCheckFailed makes check exit 1 after printing its own report.
var errCheckFailed = errors.New("check failed")

// checkTimeout bounds each step of a check.
const checkTimeout = 60 * time.Second

// runCheck validates the configuration, then for each account (or the one
// named) gets a token and logs in upstream over SMTP, IMAP and POP3 (each
// the provider has), and prints a
// table plus, for every failure, what it means and how to fix it.
func runCheck(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	path, rest, err := configFlag("check", args, stderr)
	if err != nil {
		return err
	}
	if len(rest) > 2 {
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
	withGraph := false
	for _, a := range relay.Accounts() {
		if len(rest) >= 1 && a.Name != rest[0] {
			continue
		}
		if len(rest) == 2 {
			v, ok := a.ForMailbox(rest[1])
			if !ok {
				return fmt.Errorf("%s: account %s has no mailbox %q (see its mailbox and mailboxes keys)", path, a.Name, rest[1])
			}
			a = v
		}
		res := checkAccount(ctx, a, cfg.Listen.POP3.Addr != config.AddrOff)
		if a.GraphSource != nil {
			res.graph, withGraph = checkGraph(ctx, relay, a), true
		}
		results = append(results, res)
	}
	if len(results) == 0 {
		return fmt.Errorf("%s: no account %q", path, rest[0])
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	graphCol := func(r checkResult) string { return "" }
	if withGraph {
		graphCol = func(r checkResult) string { return "\t" + graphShort(r.graph) }
	}
	fmt.Fprintln(tw, "ACCOUNT\tGRANT\tTOKEN\tSMTP\tIMAP\tPOP3"+map[bool]string{true: "\tGRAPH"}[withGraph])
	failed := false
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s%s\n", r.account, r.grant, r.token.short(), r.smtp.short(), r.imap.short(), r.pop3.short(), graphCol(r))
	}
	tw.Flush()
	for _, r := range results {
		for _, s := range append([]namedStep{{"token", r.token}, {"SMTP", r.smtp}, {"IMAP", r.imap}, {"POP3", r.pop3}}, r.graph...) {
			if s.err == nil {
				continue
			}
			failed = true
			fmt.Fprintf(stdout, "\n%s %s: %v\n", r.account, s.what, s.err)
			if s.explain != "" {
				fmt.Fprintf(stdout, "  %s\n", s.explain)
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
	account, grant          string
	token, smtp, imap, pop3 step
	graph                   []namedStep // upstream graph or auto only
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

// checkAccount checks one account; POP3 only when pop3 is set (the POP3
// listener is on: a relay that serves no POP3 does not need the tenant's
// POP3, which many tenants switch off).
func checkAccount(ctx context.Context, a *proxy.Account, pop3 bool) checkResult {
	r := checkResult{account: a.Name, grant: a.ProviderRef.Grant}
	if a.Base() != a {
		r.account += " " + a.Mailbox
	}
	if a.PasswordPassthrough {
		r.token.skipped = "password passthrough: needs the app's password"
		return r
	}
	tctx, cancel := context.WithTimeout(ctx, checkTimeout)
	_, err := a.Source.Token(tctx)
	cancel()
	r.token = tokenStep(err)
	if err != nil {
		return r
	}
	if a.DomainWide() {
		r.smtp.skipped = "domain-wide: name a mailbox, check " + a.Name + " MAILBOX"
		r.imap.skipped = r.smtp.skipped
		r.pop3.skipped = r.smtp.skipped
		return r
	}
	switch {
	case a.Upstream == config.UpstreamGraph:
		r.smtp.skipped = "sends through Graph"
	case a.ProviderRef.SMTP.Addr != "":
		r.smtp = checkSMTP(ctx, a)
		autoSMTP(a, &r.smtp)
	}
	if a.ProviderRef.IMAP.Addr != "" {
		r.imap = checkIMAP(ctx, a)
	}
	switch {
	case a.ProviderRef.POP3.Addr == "":
	case !pop3:
		r.pop3.skipped = "listen.pop3 is off"
	default:
		r.pop3 = checkPOP3(ctx, a)
	}
	return r
}

// tokenStep is the outcome of a token request: for the provider's error,
// its AADSTS code and reason, and the fix.
func tokenStep(err error) step {
	s := step{ran: true, err: err}
	var oe *oauth.Error
	if !errors.As(err, &oe) {
		return s
	}
	msg := oe.Reason
	if oe.AADSTS != 0 {
		msg = fmt.Sprintf("AADSTS%d: %s", oe.AADSTS, msg)
	}
	s.err, s.explain = errors.New(msg), oe.Fix
	return s
}

// checkSMTP logs in as the relay does and tries MAIL FROM with the first
// concrete allowed sender (Send As permission).
func checkSMTP(ctx context.Context, a *proxy.Account) step {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	sender := ""
	if a.Base() != a && a.AllowsSender(a.Mailbox) {
		sender = a.Mailbox // a mailbox of a domain-wide account sends as itself
	}
	for _, f := range a.AllowedFrom {
		if sender == "" && !strings.Contains(f, "*") && f != "<>" {
			sender = f
		}
	}
	t := a.SMTPTarget(sender)
	err := upstream.ProbeSMTP(ctx, t, a.Source, sender)
	st := upstreamStep(err, a.ProviderRef.SMTP.Addr)
	var e *upstream.Error
	if errors.As(err, &e) && e.Reply != nil && sender != "" {
		if x := upstream.ExplainMail(e.Reply, sender, t.Account.Mailbox); x != "" {
			st.explain = x // with the sender's and the mailbox's addresses
		}
	}
	return st
}

// checkIMAP logs in as the relay does and opens INBOX read-only: Exchange
// may accept the login and only then say "User is authenticated but not
// connected".
func checkIMAP(ctx context.Context, a *proxy.Account) step {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	s, err := upstream.IMAP(ctx, a.Target(events.IMAP), a.Source)
	if err == nil {
		if err = s.Examine(ctx, "INBOX"); err != nil {
			s.Close()
		} else {
			err = s.Logout(ctx)
		}
	}
	return upstreamStep(err, a.ProviderRef.IMAP.Addr)
}

// checkPOP3 logs in as the relay does and runs STAT, which shows the
// maildrop can be read, then QUIT.
func checkPOP3(ctx context.Context, a *proxy.Account) step {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	s, err := upstream.POP3(ctx, a.Target(events.POP3), a.Source)
	if err == nil {
		if _, _, err = s.Stat(ctx); err != nil {
			s.Close()
		} else {
			err = s.Quit(ctx)
		}
	}
	return upstreamStep(err, a.ProviderRef.POP3.Addr)
}

// upstreamStep turns the outcome of an upstream login into check's line and
// explanation: an SMTP refusal is the upstream's reply with its enhanced
// code (what Microsoft's documentation is organised by) and what it means;
// an IMAP refusal its reason, which says what the upstream replied and what
// it means; a token failure its AADSTS reason and fix.
func upstreamStep(err error, addr string) step {
	s := step{ran: true}
	if err == nil {
		return s
	}
	var e *upstream.Error
	var oe *oauth.Error
	switch {
	case !errors.As(err, &e):
		s.err = err
	case e.Kind == upstream.Refused && e.Reply != nil:
		s.err = errors.New(upstream.FormatReply(e.Reply))
		s.explain = upstream.ExplainSMTP(e.Reply.Code, e.Reply.EnhancedCode, e.Reply.Message)
	case e.Kind == upstream.Refused:
		s.err = errors.New(e.Reason)
	case errors.As(e.Err, &oe):
		return tokenStep(oe)
	default:
		s.err = errors.New(e.Reason)
		if e.Err != nil {
			s.err = fmt.Errorf("%s: %w", e.Reason, e.Err)
		}
		s.explain = "the upstream " + strings.ToUpper(string(e.Proto)) + " server " + addr +
			" could not be reached, the TLS handshake failed, or it is unavailable for now"
	}
	return s
}
