package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

const (
	// queueDirName is the spool's directory under state_dir, where
	// `serve` keeps the messages of delivery: queue (proxy/delivery.go).
	queueDirName = "queue"
	// queuePollInterval is how long the worker of a running `serve`
	// sleeps at most before it looks at the spool again
	// (internal/delivery's pollInterval): the delay before a retry made
	// here is acted upon.
	queuePollInterval = 30 * time.Second
	// lastErrorWidth is how much of a reply the list's table shows; `show`
	// prints it whole.
	lastErrorWidth = 48
)

// errNoQueue: the state directory has no spool. It is only an answer for
// list (exit 0); for the others there is nothing to act on (exit 1).
var errNoQueue = errors.New("no queue (no account uses delivery: queue, or nothing was ever queued)")

// queueHelp is printed for `queue -h` and `queue help`.
const queueHelp = `usage: oauthrelay queue -config FILE SUBCOMMAND [ARGS]

Inspect and steer the messages of delivery: queue in <state_dir>/queue. It is
safe while serve runs: every change goes through the spool's locks, as the
queue's own worker does. Run it as the user serve runs as.

  list [-failed] [-account NAME] [-json]
        the active queue (or the failed area with -failed): id, account,
        sender, recipients pending/delivered/failed, size, age, attempts,
        next attempt (or when it failed), last error; then a summary line.
        -json prints an array of objects for scripts instead.
  show [-json] ID
        one message in full: every recipient with its state and last reply,
        Message-ID, attempts, times.
  retry ID|all [-account NAME]
        make active messages due now. The running serve picks them up within
        30s (its poll interval), at once if a new message for the account
        wakes its worker. A message being delivered right now keeps the
        outcome of that attempt.
  delete ID [ID...]
        remove messages, active or failed, without asking; prints what it
        deleted. Deleting a message serve is delivering right now is safe:
        that attempt may still reach its recipients, but its outcome is not
        recorded (not found) and the message is never brought back.
  export [-o FILE] ID
        the message as an .eml file (the envelope as X-Oauthrelay-* header
        fields, then the message byte for byte) on standard output, or in
        FILE (created 0600).

Exit status: 0 done, 1 failed (an unknown ID: "no queued message ID"), 2 usage.
`

// queueOpts are the flags of every subcommand; each registers those it
// takes.
type queueOpts struct {
	config  string
	failed  bool
	account string
	json    bool
	out     string
}

// queueSub is one subcommand of queue.
type queueSub struct {
	name, usage string
	// minArgs and maxArgs bound the positional arguments (maxArgs < 0:
	// any number).
	minArgs, maxArgs int
	flags            func(fs *flag.FlagSet, o *queueOpts)
	run              func(q *queueRun, o *queueOpts, args []string) error
}

func queueSubs() []queueSub {
	account := func(fs *flag.FlagSet, o *queueOpts) {
		fs.StringVar(&o.account, "account", "", "only the messages of this account")
	}
	asJSON := func(fs *flag.FlagSet, o *queueOpts) { fs.BoolVar(&o.json, "json", false, "print JSON") }
	return []queueSub{
		{"list", "list [-failed] [-account NAME] [-json]", 0, 0, func(fs *flag.FlagSet, o *queueOpts) {
			fs.BoolVar(&o.failed, "failed", false, "the failed area instead of the active queue")
			account(fs, o)
			asJSON(fs, o)
		}, (*queueRun).list},
		{"show", "show [-json] ID", 1, 1, asJSON, (*queueRun).show},
		{"retry", "retry ID|all [-account NAME]", 1, 1, account, (*queueRun).retry},
		{"delete", "delete ID [ID...]", 1, -1, func(*flag.FlagSet, *queueOpts) {}, (*queueRun).delete},
		{"export", "export [-o FILE] ID", 1, 1, func(fs *flag.FlagSet, o *queueOpts) {
			fs.StringVar(&o.out, "o", "", "write to this file (0600) instead of standard output")
		}, (*queueRun).export},
	}
}

// runQueue is `oauthrelay queue`: it parses the subcommand, then opens the
// spool of the configuration's state_dir (without creating it) and runs it.
func runQueue(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	path, rest, err := configFlag("queue", args, stderr)
	if errors.Is(err, flag.ErrHelp) || (err == nil && len(rest) > 0 && rest[0] == "help") {
		fmt.Fprint(stderr, queueHelp)
		return flag.ErrHelp
	}
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usageError{errors.New("queue: no subcommand (list, show, retry, delete, export; queue -h explains them)")}
	}
	sub, ok := findQueueSub(rest[0])
	if !ok {
		return usageError{fmt.Errorf("queue: unknown subcommand %q (list, show, retry, delete, export)", rest[0])}
	}
	o := &queueOpts{config: path}
	pos, err := sub.parse(o, rest[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, queueHelp)
		return err
	}
	if err != nil {
		return err
	}
	q := &queueRun{ctx: ctx, stdout: stdout, stderr: stderr, now: time.Now()}
	if err := q.load(o.config); err != nil {
		if errors.Is(err, errNoQueue) && sub.name == "list" {
			q.noQueue(o)
			return nil
		}
		return err
	}
	defer q.sp.Close()
	return sub.run(q, o, pos)
}

func findQueueSub(name string) (queueSub, bool) {
	for _, s := range queueSubs() {
		if s.name == name {
			return s, true
		}
	}
	return queueSub{}, false
}

// parse reads the subcommand's flags, which may come before, between or
// after its arguments (`retry all -account x`), and checks the number of
// arguments.
func (s queueSub) parse(o *queueOpts, args []string) ([]string, error) {
	fs := flag.NewFlagSet("queue "+s.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints the error and the usage line once
	fs.StringVar(&o.config, "config", o.config, "configuration file")
	s.flags(fs, o)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, s.usageErr(err)
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	switch {
	case len(pos) < s.minArgs:
		return nil, s.usageErr(errors.New("missing argument"))
	case s.maxArgs >= 0 && len(pos) > s.maxArgs:
		return nil, s.usageErr(fmt.Errorf("unexpected argument %q", pos[s.maxArgs]))
	case s.name == "retry" && o.account != "" && pos[0] != "all":
		return nil, s.usageErr(errors.New("-account goes with retry all"))
	}
	return pos, nil
}

func (s queueSub) usageErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usageError{fmt.Errorf("queue %s: %w (usage: queue -config FILE %s)", s.name, err, s.usage)}
}

// queueRun is one run of a subcommand on the open spool.
type queueRun struct {
	ctx            context.Context
	stdout, stderr io.Writer
	now            time.Time
	cfgPath        string
	cfg            *config.Config
	sp             *spool.Spool
}

// load reads the configuration and opens its spool. A missing spool
// directory is errNoQueue and is not created: only serve makes one. Open
// runs the spool's recovery, under its lock like every change, so it is
// safe beside serve; what it quarantined is reported.
func (q *queueRun) load(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	q.cfgPath, q.cfg = path, cfg
	root := filepath.Join(cfg.StateDir, queueDirName)
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s does not exist", errNoQueue, root)
	} else if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	sp, rec, err := spool.Open(root, spool.Options{})
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	for _, m := range rec.Quarantined {
		fmt.Fprintf(q.stderr, "oauthrelay: queued message %s is corrupt (%s): moved to %s\n", m.ID, m.Reason, m.Dir)
	}
	if rec.NotPrivate != nil {
		fmt.Fprintf(q.stderr, "oauthrelay: warning: %v\n", rec.NotPrivate)
	}
	q.sp = sp
	return nil
}

// noQueue answers list when there is no spool: an empty queue.
func (q *queueRun) noQueue(o *queueOpts) {
	if o.json {
		fmt.Fprintln(q.stdout, "[]")
		fmt.Fprintln(q.stderr, "oauthrelay:", errNoQueue)
		return
	}
	fmt.Fprintln(q.stdout, errNoQueue)
}

// noMessageError is an ID the spool does not have (in the state asked for).
type noMessageError struct {
	id  string
	err error
}

func (e *noMessageError) Error() string { return "no queued message " + e.id }
func (e *noMessageError) Unwrap() error { return e.err }

// spoolErr names an unknown ID plainly and wraps the rest.
func spoolErr(id string, err error) error {
	if errors.Is(err, spool.ErrNotFound) {
		return &noMessageError{id: id, err: err}
	}
	return fmt.Errorf("queue: message %s: %w", id, err)
}

func (q *queueRun) list(o *queueOpts, _ []string) error {
	if o.account != "" && q.cfg.Account(o.account) == nil {
		fmt.Fprintf(q.stderr, "oauthrelay: note: %s has no account %q; showing its queued messages anyway\n", q.cfgPath, o.account)
	}
	read := q.sp.List
	if o.failed {
		read = q.sp.ListFailed
	}
	all, rerr := read()
	var envs []*spool.Envelope
	for _, e := range all {
		if o.account == "" || e.Account == o.account {
			envs = append(envs, e)
		}
	}
	if o.json {
		if err := q.writeJSON(envelopesJSON(envs)); err != nil {
			return err
		}
	} else {
		if q.cfg.Cluster.Enabled() && !o.failed {
			if err := printClusterQueues(q.ctx, q.cfg.Cluster, q.stdout, q.now); err != nil {
				fmt.Fprintln(q.stderr, "oauthrelay:", err)
			}
		}
		q.table(envs, o.failed)
		fmt.Fprintln(q.stdout, q.summary(envs, o))
	}
	if rerr != nil {
		return fmt.Errorf("queue: some envelopes could not be read: %w", rerr)
	}
	return nil
}

// table prints one line per message.
func (q *queueRun) table(envs []*spool.Envelope, failed bool) {
	if len(envs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(q.stdout, 0, 0, 2, ' ', 0)
	last := "NEXT ATTEMPT\tLAST ERROR"
	if failed {
		last = "FAILED\tREASON"
	}
	fmt.Fprintln(tw, "ID\tACCOUNT\tFROM\tRCPTS P/D/F\tSIZE\tAGE\tATTEMPTS\t"+last)
	for _, e := range envs {
		p, d, f := rcptCounts(e)
		when, why := q.next(e), e.LastError
		if failed {
			when, why = q.ago(e.Failed), e.FailReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d/%d\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Account, sender(e.From),
			p, d, f, humanSize(e.Size), humanDuration(q.now.Sub(e.Created)), e.Attempts, when, shorten(why, lastErrorWidth))
	}
	tw.Flush()
}

// summary is the line under the table: depth and oldest.
func (q *queueRun) summary(envs []*spool.Envelope, o *queueOpts) string {
	what := "queued"
	if o.failed {
		what = "failed"
	}
	if o.account != "" {
		what += " for account " + o.account
	}
	if len(envs) == 0 {
		return "no messages " + what
	}
	// The failed area is kept for queue.keep_failed from the failure, so
	// its age is what matters there.
	when, verb := func(e *spool.Envelope) time.Time { return e.Created }, "created"
	if o.failed {
		when, verb = func(e *spool.Envelope) time.Time { return e.Failed }, "failed"
	}
	oldest, inFlight := when(envs[0]), 0
	for _, e := range envs {
		if when(e).Before(oldest) {
			oldest = when(e)
		}
		if !e.InFlight.IsZero() {
			inFlight++
		}
	}
	s := fmt.Sprintf("%s %s", plural(len(envs), "message"), what)
	if inFlight > 0 {
		s += fmt.Sprintf(" (%d being delivered)", inFlight)
	}
	return s + fmt.Sprintf("; oldest %s %s (%s)", verb, q.ago(oldest), stamp(oldest))
}

// next says when a message is tried next.
func (q *queueRun) next(e *spool.Envelope) string {
	switch {
	case !e.InFlight.IsZero():
		return "delivering"
	case !e.NextAttempt.After(q.now):
		return "due"
	}
	return "in " + humanDuration(e.NextAttempt.Sub(q.now))
}

func (q *queueRun) ago(t time.Time) string { return humanDuration(q.now.Sub(t)) + " ago" }

func (q *queueRun) show(o *queueOpts, args []string) error {
	e, err := q.sp.Get(args[0])
	if err != nil {
		return spoolErr(args[0], err)
	}
	if o.json {
		return q.writeJSON(envelopeJSON(e))
	}
	w := q.stdout
	field := func(name, value string) { fmt.Fprintf(w, "%-14s%s\n", name+":", value) }
	field("ID", e.ID)
	switch {
	case !e.Failed.IsZero():
		field("State", fmt.Sprintf("failed %s (%s): %s", q.ago(e.Failed), stamp(e.Failed), e.FailReason))
	case !e.InFlight.IsZero():
		field("State", fmt.Sprintf("active, being delivered since %s (%s)", q.ago(e.InFlight), stamp(e.InFlight)))
	default:
		field("State", "active")
	}
	field("Account", e.Account)
	field("Mailbox", e.Mailbox)
	field("From", "<"+e.From+">")
	field("Message-ID", orNone(e.MessageID))
	field("Size", fmt.Sprintf("%s (%d bytes)", humanSize(e.Size), e.Size))
	if opts := e.Mail.String(); opts != "" {
		field("MAIL options", opts)
	}
	field("Created", fmt.Sprintf("%s (%s)", stamp(e.Created), q.ago(e.Created)))
	field("Attempts", strconv.Itoa(e.Attempts))
	if e.Failed.IsZero() {
		field("Next attempt", fmt.Sprintf("%s (%s)", stamp(e.NextAttempt), q.next(e)))
	}
	field("Last error", orNone(e.LastError))
	if e.Notification {
		field("Notification", "yes: a delivery status notification written by the relay")
	}
	p, d, f := rcptCounts(e)
	fmt.Fprintf(w, "Recipients:   %d (%d pending, %d delivered, %d failed)\n", len(e.Recipients), p, d, f)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range e.Recipients {
		fmt.Fprintf(tw, "  <%s>\t%s\t%s%s\n", r.Addr, r.State, orNone(r.Reply), dsnParams(r))
	}
	return tw.Flush()
}

func (q *queueRun) retry(o *queueOpts, args []string) error {
	if args[0] != "all" {
		e, err := q.sp.Get(args[0])
		if err != nil {
			return spoolErr(args[0], err)
		}
		if !e.Failed.IsZero() {
			return fmt.Errorf("message %s failed %s (%s): only active messages can be retried; export it to send it again",
				e.ID, q.ago(e.Failed), e.FailReason)
		}
		if err := q.retryOne(e); err != nil {
			return spoolErr(e.ID, err)
		}
		q.retryNote(1)
		return nil
	}
	envs, rerr := q.sp.List()
	n := 0
	for _, e := range envs {
		if err := q.ctx.Err(); err != nil {
			return err
		}
		if o.account != "" && e.Account != o.account {
			continue
		}
		err := q.retryOne(e)
		if errors.Is(err, spool.ErrNotFound) {
			continue // delivered, failed or deleted since the list
		}
		if err != nil {
			return spoolErr(e.ID, err)
		}
		n++
	}
	q.retryNote(n)
	if rerr != nil {
		return fmt.Errorf("queue: some envelopes could not be read: %w", rerr)
	}
	return nil
}

// retryOne makes active message e due now and says so.
func (q *queueRun) retryOne(e *spool.Envelope) error {
	if err := q.sp.Retry(e.ID); err != nil {
		return err
	}
	note := ""
	if !e.InFlight.IsZero() {
		note = " (being delivered now: that attempt's outcome decides)"
	}
	fmt.Fprintf(q.stdout, "%s  due now%s\n", e.ID, note)
	return nil
}

func (q *queueRun) retryNote(n int) {
	if n == 0 {
		fmt.Fprintln(q.stdout, "no active messages to retry")
		return
	}
	fmt.Fprintf(q.stdout, "%s due now; a running serve picks them up within %s (its poll interval), "+
		"at once if a new message for the account wakes its worker\n", plural(n, "message"), queuePollInterval)
}

func (q *queueRun) delete(_ *queueOpts, ids []string) error {
	var errs []error
	for _, id := range ids {
		e, err := q.sp.Get(id)
		if err == nil {
			err = q.sp.Delete(id)
		}
		if err != nil {
			errs = append(errs, spoolErr(id, err))
			continue
		}
		state := "active"
		if !e.Failed.IsZero() {
			state = "failed"
		}
		note := ""
		if !e.InFlight.IsZero() {
			note = "; it was being delivered: that attempt may still reach its recipients, the message is not brought back"
		}
		fmt.Fprintf(q.stdout, "deleted %s (%s, account %s, from %s, %s, %s)%s\n", id, state, e.Account,
			sender(e.From), plural(len(e.Recipients), "recipient"), humanSize(e.Size), note)
	}
	return errors.Join(errs...)
}

func (q *queueRun) export(o *queueOpts, args []string) error {
	id := args[0]
	if o.out == "" {
		return spoolErrOrNil(id, q.sp.Export(id, q.stdout))
	}
	if err := exportFile(q.sp, id, o.out); err != nil {
		return err
	}
	fmt.Fprintf(q.stderr, "oauthrelay: exported %s to %s\n", id, o.out)
	return nil
}

func spoolErrOrNil(id string, err error) error {
	if err == nil {
		return nil
	}
	return spoolErr(id, err)
}

// exportFile writes the export to a temp file beside path (0600 on Unix),
// then renames it into place, so a failed export leaves no partial file.
func exportFile(sp *spool.Spool, id, path string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := sp.Export(id, f); err != nil {
		return spoolErr(id, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

func (q *queueRun) writeJSON(v any) error {
	enc := json.NewEncoder(q.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("queue: write JSON: %w", err)
	}
	return nil
}

// queueJSON is a message as `queue list -json` and `show -json` print it:
// the command's contract with scripts, separate from the spool's storage
// format. Every field is always present; a time that does not apply is
// null.
type queueJSON struct {
	ID                  string          `json:"id"`
	State               string          `json:"state"` // "active" or "failed"
	Account             string          `json:"account"`
	Mailbox             string          `json:"mailbox"`
	From                string          `json:"from"`
	MessageID           string          `json:"message_id"`
	Size                int64           `json:"size"`
	MailOptions         string          `json:"mail_options"`
	Created             time.Time       `json:"created"`
	Attempts            int             `json:"attempts"`
	NextAttempt         *time.Time      `json:"next_attempt"`
	InFlight            *time.Time      `json:"in_flight"`
	LastError           string          `json:"last_error"`
	FailedAt            *time.Time      `json:"failed_at"`
	FailReason          string          `json:"fail_reason"`
	Notification        bool            `json:"notification"`
	RecipientsPending   int             `json:"recipients_pending"`
	RecipientsDelivered int             `json:"recipients_delivered"`
	RecipientsFailed    int             `json:"recipients_failed"`
	Recipients          []recipientJSON `json:"recipients"`
}

type recipientJSON struct {
	Addr   string   `json:"addr"`
	State  string   `json:"state"`
	Reply  string   `json:"reply"`
	Notify []string `json:"notify"`
	ORcpt  string   `json:"orcpt"`
}

func envelopesJSON(envs []*spool.Envelope) []queueJSON {
	out := make([]queueJSON, 0, len(envs))
	for _, e := range envs {
		out = append(out, envelopeJSON(e))
	}
	return out
}

func envelopeJSON(e *spool.Envelope) queueJSON {
	p, d, f := rcptCounts(e)
	j := queueJSON{ID: e.ID, State: "active", Account: e.Account, Mailbox: e.Mailbox, From: e.From,
		MessageID: e.MessageID, Size: e.Size, MailOptions: e.Mail.String(), Created: e.Created,
		Attempts: e.Attempts, InFlight: timeOrNil(e.InFlight), LastError: e.LastError,
		FailedAt: timeOrNil(e.Failed), FailReason: e.FailReason, Notification: e.Notification,
		RecipientsPending: p, RecipientsDelivered: d, RecipientsFailed: f,
		Recipients: make([]recipientJSON, 0, len(e.Recipients))}
	if e.Failed.IsZero() {
		j.NextAttempt = timeOrNil(e.NextAttempt)
	} else {
		j.State = "failed"
	}
	for _, r := range e.Recipients {
		notify := append([]string{}, r.Notify...)
		j.Recipients = append(j.Recipients, recipientJSON{Addr: r.Addr, State: string(r.State), Reply: r.Reply,
			Notify: notify, ORcpt: r.ORcpt})
	}
	return j
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// rcptCounts counts the recipients pending, delivered and failed.
func rcptCounts(e *spool.Envelope) (pending, delivered, failed int) {
	for _, r := range e.Recipients {
		switch r.State {
		case spool.Pending:
			pending++
		case spool.Delivered:
			delivered++
		case spool.Failed:
			failed++
		}
	}
	return pending, delivered, failed
}

// dsnParams renders a recipient's RFC 3461 parameters, if any.
func dsnParams(r spool.Recipient) string {
	var p []string
	if len(r.Notify) > 0 {
		p = append(p, "NOTIFY="+strings.Join(r.Notify, ","))
	}
	if r.ORcpt != "" {
		p = append(p, "ORCPT="+r.ORcpt)
	}
	if len(p) == 0 {
		return ""
	}
	return "  [" + strings.Join(p, " ") + "]"
}

// sender is the reverse-path for a table, "<>" for the null sender.
func sender(from string) string {
	if from == "" {
		return "<>"
	}
	return from
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stamp(t time.Time) string { return t.Local().Format(time.RFC3339) }

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// humanSize is a byte count for a table: B, KiB, MiB.
func humanSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// humanDuration is an age for a table, to the second under an hour and
// coarser above: 45s, 4m30s, 3h05m, 5d03h.
func humanDuration(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// shorten makes s one line of at most width characters, marking a cut
// with "...".
func shorten(s string, width int) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }), " ")
	if s == "" {
		return "-"
	}
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	return string([]rune(s)[:width-3]) + "..."
}
