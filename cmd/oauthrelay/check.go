package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// errCheckFailed makes check exit 1 after printing its own report.
var errCheckFailed = errors.New("check failed")

// checkTimeout bounds each step of a check.
const checkTimeout = 60 * time.Second

// checkHelp is `check -h`: what is checked, the output and the exit codes
// (README.md says the same).
const checkHelp = `usage: oauthrelay check -config FILE [-json] [ACCOUNT [MAILBOX]]

Validates the configuration, then proves each step of every account's setup
(or of ACCOUNT, or of one MAILBOX of a domain-wide account), in the order an
administrator sets them up, one line per step:

  token               the grant works (an AADSTS code is explained)
  consent             the token's roles (app-only) or scopes (delegated) hold the
                      permissions the account uses (SMTP, IMAP, POP3)
  mailbox permission  app-only: the app may open the mailbox
  SMTP AUTH           SMTP AUTH is enabled for the mailbox (535 5.7.139 otherwise)
  send as ADDRESS     the mailbox may send as each other allowed_from address
  IMAP, POP3          the logins the relay makes (IMAP opens INBOX, POP3 runs
                      STAT), when the provider has them (POP3: and listen.pop3)
  Graph token, Graph Mail.Send, Graph Mail.ReadWrite, Graph Sent Items
                      upstream graph|auto: the Graph token and each permission used

A failing step prints the fix in plain words and the PowerShell to run, with
the real names filled in; a step that cannot run because an earlier one
failed says "skipped: <why>". -json prints one JSON document instead.

Exit status: 0 every step passed (warnings allowed), 1 a step failed,
2 a usage or configuration error.
`

// Step statuses (the JSON's status values).
const (
	stepOK   = "ok"
	stepFail = "fail"
	stepSkip = "skip"
	stepWarn = "warn"
)

// checkStep is one proven (or failed, or skipped) step of an account.
type checkStep struct {
	// Name is the step: token, consent, mailbox permission, SMTP AUTH,
	// send as ADDRESS, IMAP, POP3, Graph Mail.Send, Graph Mail.ReadWrite,
	// Graph Sent Items.
	Name   string `json:"name"`
	Status string `json:"status"`
	// Detail is what was seen: the reply, the reason, why it was skipped.
	Detail string `json:"detail"`
	// Fix says in plain words what to do ("" when the step passed).
	Fix string `json:"fix"`
	// PowerShell is the script that does it, with the real names.
	PowerShell string `json:"powershell"`
}

// checkedAccount is an account's steps.
type checkedAccount struct {
	Name     string      `json:"name"`
	Mailbox  string      `json:"mailbox"`
	Provider string      `json:"provider"`
	Grant    string      `json:"grant"`
	Upstream string      `json:"upstream"`
	Status   string      `json:"status"` // ok, warn or fail: the worst of its steps
	Steps    []checkStep `json:"steps"`
	// label names it in the text report: with the mailbox for one mailbox
	// of the account (check ACCOUNT MAILBOX).
	label string
}

// checkReport is check -json's document.
type checkReport struct {
	Config string `json:"config"`
	// Status: ok, warn, fail (a step failed) or error (usage or
	// configuration: Error says what, and there are no accounts).
	Status   string           `json:"status"`
	Error    string           `json:"error,omitempty"`
	Accounts []checkedAccount `json:"accounts"`
	// counted is the configuration's "N providers, M accounts".
	counted string
}

// configError is a configuration that cannot be checked: exit 2, as a
// usage error, without the usage line.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// runCheck validates the configuration, then proves each account's steps
// (or those of the account, or its mailbox, named) and prints them.
func runCheck(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	var asJSON bool
	path, rest, err := configFlag("check", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print one JSON document")
	})
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, checkHelp)
		return nil
	}
	if err != nil {
		return err
	}
	if len(rest) > 2 {
		return errUsage
	}
	accounts, counted, err := checkAccounts(ctx, path, rest, stderr)
	if err != nil {
		if asJSON {
			writeJSONReport(stdout, checkReport{Config: path, Status: "error", Error: err.Error(), Accounts: []checkedAccount{}})
		}
		return err
	}
	rep := checkReport{Config: path, Status: stepOK, Accounts: accounts, counted: counted}
	for _, a := range accounts {
		rep.Status = worse(rep.Status, a.Status)
	}
	if asJSON {
		writeJSONReport(stdout, rep)
	} else {
		writeCheckText(stdout, path, rep)
	}
	if rep.Status == stepFail {
		return errCheckFailed
	}
	return nil
}

// checkAccounts loads the configuration and checks the accounts chosen by
// rest ([ACCOUNT [MAILBOX]]), and says how many providers and accounts the
// configuration has. Its errors are usage or configuration errors.
func checkAccounts(ctx context.Context, path string, rest []string, stderr io.Writer) ([]checkedAccount, string, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, "", configError{err}
	}
	counted := fmt.Sprintf("%d providers, %d accounts", len(cfg.Providers), len(cfg.Accounts))
	log := newLogger(config.Log{Level: "error"}, stderr)
	// With cluster: the token is the one the instances share: a check
	// that redeemed this host's copy alone would race them.
	cl, err := commandCluster(cfg, log)
	if err != nil {
		return nil, "", configError{err}
	}
	var shared []delivery.SharedLimits
	if cl != nil {
		defer cl.Close()
		shared = append(shared, cl)
	}
	relay, _, err := newRelay(cfg, log, nil, nil, shared...)
	if err != nil {
		return nil, "", configError{err}
	}
	var out []checkedAccount
	for _, a := range relay.Accounts() {
		if len(rest) >= 1 && a.Name != rest[0] {
			continue
		}
		if len(rest) == 2 {
			v, ok := a.ForMailbox(rest[1])
			if !ok {
				return nil, "", usageError{fmt.Errorf("%s: account %s has no mailbox %q (see its mailbox and mailboxes keys)", path, a.Name, rest[1])}
			}
			a = v
		}
		out = append(out, checkAccount(ctx, relay, a, cfg.Listen.POP3.Addr != config.AddrOff))
	}
	if len(out) == 0 {
		return nil, "", usageError{fmt.Errorf("%s: no account %q", path, rest[0])}
	}
	return out, counted, nil
}

// checkAccount proves the steps of one account (or one mailbox of it);
// POP3 only when pop3 is set (the POP3 listener is on: a relay that serves
// no POP3 does not need the tenant's POP3, which many tenants switch off).
func checkAccount(ctx context.Context, relay *proxy.Relay, a *proxy.Account, pop3 bool) checkedAccount {
	c := &accountCheck{ctx: ctx, relay: relay, a: a, pop3: pop3}
	c.run()
	ca := checkedAccount{Name: a.Name, Mailbox: a.Mailbox, Provider: a.Provider, Grant: a.ProviderRef.Grant,
		Upstream: a.Upstream, Status: stepOK, Steps: c.steps(), label: a.Name}
	if a.Base() != a {
		ca.label += " " + a.Mailbox
	}
	if ca.Upstream == "" {
		ca.Upstream = config.UpstreamSMTP
	}
	for _, s := range ca.Steps {
		ca.Status = worse(ca.Status, s.Status)
	}
	return ca
}

// worse is the worse of two statuses for a summary: fail over warn over ok
// (a skip is not a result of its own: the step that caused it failed).
func worse(a, b string) string {
	rank := map[string]int{stepOK: 0, stepSkip: 0, stepWarn: 1, stepFail: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func writeJSONReport(w io.Writer, rep checkReport) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // <mailbox> stays readable
	enc.Encode(rep)          // a report of strings cannot fail to encode
}

// statusWord is a status as the text report shows it: failures stand out.
func statusWord(s string) string {
	switch s {
	case stepFail:
		return "FAIL"
	case stepWarn:
		return "WARN"
	}
	return s
}

// writeCheckText prints one line per step and account (ACCOUNT STEP STATUS
// DETAIL, aligned), each failing or warning step followed by its fix and
// PowerShell, indented.
func writeCheckText(w io.Writer, path string, rep checkReport) {
	fmt.Fprintf(w, "%s: configuration OK (%s)\n\n", path, rep.counted)
	wa, ws := len("ACCOUNT"), len("STEP")
	for _, a := range rep.Accounts {
		wa = max(wa, len(a.label))
		for _, s := range a.Steps {
			ws = max(ws, len(s.Name))
		}
	}
	line := func(acc, step, status, detail string) {
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("%-*s  %-*s  %-6s  %s", wa, acc, ws, step, status, detail), " "))
	}
	line("ACCOUNT", "STEP", "STATUS", "DETAIL")
	for _, a := range rep.Accounts {
		for _, s := range a.Steps {
			detail := s.Detail
			if s.Status == stepSkip {
				detail = "skipped: " + detail
			}
			line(a.label, s.Name, statusWord(s.Status), detail)
			if s.Status != stepFail && s.Status != stepWarn {
				continue
			}
			indent := strings.Repeat(" ", wa+2)
			if s.Fix != "" {
				fmt.Fprintf(w, "%sfix: %s\n", indent, s.Fix)
			}
			if s.PowerShell != "" {
				fmt.Fprintf(w, "%sPowerShell:\n", indent)
				for _, l := range strings.Split(strings.TrimRight(s.PowerShell, "\n"), "\n") {
					fmt.Fprintf(w, "%s    %s\n", indent, l)
				}
			}
		}
	}
	switch rep.Status {
	case stepFail:
		fmt.Fprintln(w, "\nA step failed: run its fix, then check again.")
	case stepWarn:
		fmt.Fprintln(w, "\nAll checks passed, with warnings.")
	default:
		fmt.Fprintln(w, "\nAll checks passed.")
	}
}
