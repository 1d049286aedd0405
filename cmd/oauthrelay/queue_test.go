package main

// Tests of `oauthrelay queue`: a spool is made in a temporary state_dir with
// the spool's own API (as serve's queue makes it), a configuration points
// there, and each subcommand runs in-process through run(), or as the built
// binary beside a claim held by the test process.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// unknownID has the shape of a message id and is in no spool.
const unknownID = "0000000000aaaaaaaaaaaaaaaa"

// longError is a last error longer than the table's column.
const longError = "451 4.7.0 Temporary server error. Please try again later. PRX4 [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]"

// queueBody is a message whose body a careless export would change: a
// "From " line (mbox would quote it), a lone dot, 8-bit bytes, a bare CR,
// and no final line end.
const queueBody = "Message-ID: <invoice-4711@contoso.com>\r\nFrom: invoices@contoso.com\r\n" +
	"Subject: Invoice 4711\r\n\r\nFrom the accounts department:\r\n.\r\n..twice\r\n" +
	"Gr\xc3\xbc\xc3\x9fe \xff\xfe\r\nbare\rCR\r\nno final line end"

// queueWorld is a configuration whose state_dir holds a spool with:
// three recipients in three states (active, for invoices), one from the
// null sender (active, for sales, due now) and one failed message.
type queueWorld struct {
	path, root             string
	sp                     *spool.Spool
	mixed, bounce, failed  *spool.Envelope
	laterThanMixed, before time.Time
}

func newQueueWorld(t testing.TB) *queueWorld {
	t.Helper()
	ms := startFake(t, fakems.Options{})
	state := filepath.Join(t.TempDir(), "state")
	sales := acct{name: "sales", provider: "app", mailbox: salesBox, username: salesUser,
		hash: hashOf(t, salesPass), allowedFrom: []string{salesBox}}
	w := &queueWorld{path: newConfig(t, ms, cfgSpec{stateDir: state, accounts: []acct{invoices(t), sales}}),
		root: filepath.Join(state, queueDirName)}
	sp, _, err := spool.Open(w.root, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	w.sp = sp
	w.before = time.Now()
	w.laterThanMixed = w.before.Add(time.Hour)
	w.mixed = w.create(t, spool.Envelope{Account: "invoices", Mailbox: mailbox, From: mailbox,
		Mail: spool.Mail{Size: int64(len(queueBody)), Body: "8BITMIME"}, NextAttempt: w.laterThanMixed,
		Recipients: []spool.Recipient{{Addr: "alice@example.net"}, {Addr: "bob@example.net", Notify: []string{"FAILURE", "DELAY"}},
			{Addr: "carol@example.net", ORcpt: "rfc822;carol@example.net"}}})
	w.mixed.Recipients[0].State, w.mixed.Recipients[0].Reply = spool.Delivered, "250 2.0.0 OK <AM0PR01MB1234@contoso.com> [Hostname=AM0PR01]"
	w.mixed.Recipients[1].Reply = longError
	w.mixed.Recipients[2].State, w.mixed.Recipients[2].Reply = spool.Failed, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
	w.mixed.Attempts, w.mixed.LastError = 2, longError
	w.update(t, w.mixed)
	w.bounce = w.create(t, spool.Envelope{Account: "sales", Mailbox: salesBox, From: "",
		Recipients: []spool.Recipient{{Addr: "dave@example.net"}}})
	w.failed = w.create(t, spool.Envelope{Account: "invoices", Mailbox: mailbox, From: mailbox,
		Recipients: []spool.Recipient{{Addr: "erin@example.net"}}})
	w.failed.Recipients[0].State, w.failed.Recipients[0].Reply = spool.Failed, "550 5.7.1 Service unavailable"
	w.failed.Attempts = 1
	w.update(t, w.failed)
	if err := sp.Fail(w.failed.ID, "every recipient refused"); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *queueWorld) create(t testing.TB, env spool.Envelope) *spool.Envelope {
	t.Helper()
	e, err := w.sp.Create(context.Background(), env, strings.NewReader(queueBody), 0)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (w *queueWorld) update(t testing.TB, e *spool.Envelope) {
	t.Helper()
	if err := w.sp.Update(e); err != nil {
		t.Fatal(err)
	}
}

// queue runs `oauthrelay queue -config <world> args...`.
func (w *queueWorld) queue(t testing.TB, args ...string) result {
	t.Helper()
	return runCmd(t, nil, append([]string{"queue", "-config", w.path}, args...)...)
}

// ok runs queue and fails the test unless it exits 0.
func (w *queueWorld) ok(t testing.TB, args ...string) result {
	t.Helper()
	r := w.queue(t, args...)
	if r.code != 0 {
		t.Fatalf("queue %v: want exit 0: %v", args, r)
	}
	return r
}

// tableRow returns the fields of the table line starting with id.
func tableRow(t testing.TB, out, id string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id+" ") {
			return l
		}
	}
	t.Fatalf("no row for %s in:\n%s", id, out)
	return ""
}

func TestQueueList(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	r := w.ok(t, "list")
	wantAll(t, r.stdout, "ID", "ACCOUNT", "FROM", "RCPTS P/D/F", "SIZE", "AGE", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR")
	mixed := tableRow(t, r.stdout, w.mixed.ID)
	wantAll(t, mixed, "invoices", mailbox, " 1/1/1 ", "B ", " 2 ", " in ", "451 4.7.0 Temporary", "...")
	if strings.Contains(mixed, longError) {
		t.Errorf("the last error is not shortened: %q", mixed)
	}
	wantAll(t, tableRow(t, r.stdout, w.bounce.ID), "sales", "<>", " 1/0/0 ", " due ")
	if strings.Contains(r.stdout, w.failed.ID) {
		t.Errorf("the active list shows the failed message:\n%s", r.stdout)
	}
	if !regexp.MustCompile(`(?m)^2 messages queued; oldest created \S+ ago \(`).MatchString(r.stdout) {
		t.Errorf("no summary line with depth and oldest:\n%s", r.stdout)
	}
	// Ordered by next attempt: the due one first.
	if strings.Index(r.stdout, w.bounce.ID) > strings.Index(r.stdout, w.mixed.ID) {
		t.Errorf("not ordered by next attempt:\n%s", r.stdout)
	}

	r = w.ok(t, "list", "-account", "sales")
	if !strings.Contains(r.stdout, w.bounce.ID) || strings.Contains(r.stdout, w.mixed.ID) {
		t.Errorf("-account sales:\n%s", r.stdout)
	}
	wantAll(t, r.stdout, "1 message queued for account sales")

	r = w.ok(t, "list", "-failed")
	wantAll(t, r.stdout, "FAILED", "REASON", "1 message failed; oldest failed ")
	wantAll(t, tableRow(t, r.stdout, w.failed.ID), " 0/0/1 ", " ago ", "every recipient refused")
	if strings.Contains(r.stdout, w.mixed.ID) {
		t.Errorf("the failed list shows an active message:\n%s", r.stdout)
	}

	r = w.ok(t, "list", "-account", "nobody")
	wantAll(t, r.stdout, "no messages queued for account nobody")
	wantAll(t, r.stderr, `no account "nobody"`)
}

// The JSON is a contract with scripts: every field name is always there.
func TestQueueListJSON(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	r := w.ok(t, "list", "-json")
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("list -json is not a JSON array: %v\n%s", err, r.stdout)
	}
	wantKeys := []string{"id", "state", "account", "mailbox", "from", "message_id", "size", "mail_options", "created",
		"attempts", "next_attempt", "in_flight", "last_error", "failed_at", "fail_reason", "notification",
		"recipients_pending", "recipients_delivered", "recipients_failed", "recipients"}
	slices.Sort(wantKeys)
	for _, m := range raw {
		var keys []string
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, wantKeys) {
			t.Errorf("fields %v, want %v", keys, wantKeys)
		}
	}
	var got []queueJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != w.bounce.ID || got[1].ID != w.mixed.ID {
		t.Fatalf("want [bounce, mixed], got %+v", got)
	}
	m := got[1]
	if m.State != "active" || m.Account != "invoices" || m.From != mailbox || m.MessageID != "<invoice-4711@contoso.com>" ||
		m.Size != int64(len(queueBody)) || m.Attempts != 2 || m.LastError != longError ||
		m.NextAttempt == nil || !m.NextAttempt.Equal(w.laterThanMixed) || m.FailedAt != nil || m.InFlight != nil ||
		m.RecipientsPending != 1 || m.RecipientsDelivered != 1 || m.RecipientsFailed != 1 || len(m.Recipients) != 3 ||
		m.MailOptions != "SIZE="+strconv.Itoa(len(queueBody))+" BODY=8BITMIME" {
		t.Errorf("mixed message: %+v", m)
	}
	if rc := m.Recipients[1]; rc.Addr != "bob@example.net" || rc.State != "pending" || rc.Reply != longError ||
		!slices.Equal(rc.Notify, []string{"FAILURE", "DELAY"}) {
		t.Errorf("recipient 2: %+v", rc)
	}
	if got[0].From != "" || got[0].Account != "sales" {
		t.Errorf("bounce message: %+v", got[0])
	}

	r = w.ok(t, "list", "-failed", "-json")
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != w.failed.ID || got[0].State != "failed" || got[0].FailedAt == nil ||
		got[0].NextAttempt != nil || got[0].FailReason != "every recipient refused" {
		t.Errorf("failed list: %+v", got)
	}
	r = w.ok(t, "list", "-json", "-account", "nobody")
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("an empty list is not []: %q", r.stdout)
	}
}

func TestQueueShow(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	r := w.ok(t, "show", w.mixed.ID)
	wantAll(t, r.stdout, "ID:", w.mixed.ID, "State:", "active", "Account:", "invoices", "Mailbox:", mailbox,
		"From:", "<"+mailbox+">", "Message-ID:", "<invoice-4711@contoso.com>", "Attempts:", "2",
		"Created:", "Next attempt:", "Last error:", longError, "MAIL options:", "BODY=8BITMIME",
		"Recipients:", "3 (1 pending, 1 delivered, 1 failed)")
	for _, rc := range w.mixed.Recipients {
		line := tableRow(t, strings.ReplaceAll(r.stdout, "  <", "<"), "<"+rc.Addr+">")
		wantAll(t, line, string(rc.State), rc.Reply)
	}
	wantAll(t, r.stdout, "NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;carol@example.net")

	r = w.ok(t, "show", w.failed.ID)
	wantAll(t, r.stdout, "State:", "failed", "every recipient refused", "<erin@example.net>", "550 5.7.1 Service unavailable")
	if strings.Contains(r.stdout, "Next attempt:") {
		t.Errorf("a failed message has no next attempt:\n%s", r.stdout)
	}

	r = w.ok(t, "show", "-json", w.bounce.ID)
	var j queueJSON
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("show -json: %v\n%s", err, r.stdout)
	}
	if j.ID != w.bounce.ID || len(j.Recipients) != 1 || j.Recipients[0].Addr != "dave@example.net" {
		t.Errorf("show -json: %+v", j)
	}
}

func TestQueueRetry(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	start := time.Now()
	r := w.ok(t, "retry", w.mixed.ID)
	wantAll(t, r.stdout, w.mixed.ID+"  due now", "within 30s", "poll interval")
	e, err := w.sp.Get(w.mixed.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e.NextAttempt.Before(start) || e.NextAttempt.After(time.Now()) {
		t.Errorf("NextAttempt %v, want the time of the retry (not %v)", e.NextAttempt, w.laterThanMixed)
	}
	if len(e.Recipients) != 3 || e.Recipients[0].State != spool.Delivered || e.Attempts != 2 {
		t.Errorf("retry changed more than the next attempt: %+v", e)
	}

	// retry all for one account touches only that account's messages.
	w.mixed.NextAttempt = w.laterThanMixed
	w.update(t, w.mixed)
	r = w.ok(t, "retry", "all", "-account", "sales")
	wantAll(t, r.stdout, w.bounce.ID, "1 message due now")
	if e, _ := w.sp.Get(w.mixed.ID); !e.NextAttempt.Equal(w.laterThanMixed) {
		t.Errorf("retry all -account sales changed an invoices message: %v", e.NextAttempt)
	}
	r = w.ok(t, "retry", "all")
	wantAll(t, r.stdout, w.bounce.ID, w.mixed.ID, "2 messages due now")
	if e, _ := w.sp.Get(w.mixed.ID); !e.NextAttempt.Before(w.laterThanMixed) {
		t.Errorf("retry all left %v", e.NextAttempt)
	}

	r = w.queue(t, "retry", w.failed.ID)
	if r.code != 1 || !strings.Contains(r.stderr, "only active messages can be retried") {
		t.Errorf("retry of a failed message: %v", r)
	}
}

func TestQueueDelete(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	r := w.ok(t, "delete", w.mixed.ID, w.failed.ID)
	wantAll(t, r.stdout, "deleted "+w.mixed.ID+" (active, account invoices", "3 recipients",
		"deleted "+w.failed.ID+" (failed, account invoices")
	for _, id := range []string{w.mixed.ID, w.failed.ID} {
		if _, err := w.sp.Get(id); !errors.Is(err, spool.ErrNotFound) {
			t.Errorf("%s after delete: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(w.root, "body", id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("body of %s after delete: %v", id, err)
		}
	}
	// One unknown among known ones: the known are deleted, exit 1 names the unknown.
	r = w.queue(t, "delete", unknownID, w.bounce.ID)
	if r.code != 1 || !strings.Contains(r.stderr, "no queued message "+unknownID) ||
		!strings.Contains(r.stdout, "deleted "+w.bounce.ID) {
		t.Errorf("delete unknown and known: %v", r)
	}
	if envs, err := w.sp.List(); err != nil || len(envs) != 0 {
		t.Errorf("left: %d, %v", len(envs), err)
	}
}

func TestQueueExport(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	r := w.ok(t, "export", w.mixed.ID)
	if !strings.HasSuffix(r.stdout, queueBody) {
		t.Fatalf("the export does not end with the message byte for byte:\n%q", r.stdout)
	}
	msg, err := mail.ReadMessage(strings.NewReader(r.stdout))
	if err != nil {
		t.Fatalf("the export does not parse as a message: %v", err)
	}
	h := msg.Header
	if h.Get("X-Oauthrelay-Queue-ID") != w.mixed.ID || h.Get("X-Oauthrelay-Account") != "invoices" ||
		h.Get("Return-Path") != "<"+mailbox+">" || h.Get("Message-ID") != "<invoice-4711@contoso.com>" ||
		len(h["X-Oauthrelay-Recipient"]) != 3 {
		t.Errorf("export header: %v", h)
	}
	body, err := io.ReadAll(msg.Body)
	if err != nil {
		t.Fatal(err)
	}
	if want := queueBody[strings.Index(queueBody, "\r\n\r\n")+4:]; string(body) != want {
		t.Errorf("body %q, want %q", body, want)
	}

	out := filepath.Join(t.TempDir(), "invoice.eml")
	r = w.ok(t, "export", "-o", out, w.failed.ID)
	wantAll(t, r.stderr, "exported "+w.failed.ID+" to "+out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := w.ok(t, "export", w.failed.ID).stdout; string(b) != want || !strings.Contains(want, "X-Oauthrelay-State: failed") {
		t.Errorf("-o wrote %q, stdout gives %q", b, want)
	}
	if fi, err := os.Stat(out); err != nil || runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, %v; want mode 0600", out, fi.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
	// A failed export leaves no file.
	bad := filepath.Join(t.TempDir(), "none.eml")
	if r := w.queue(t, "export", "-o", bad, unknownID); r.code != 1 {
		t.Errorf("export of an unknown id: %v", r)
	}
	if ents, _ := os.ReadDir(filepath.Dir(bad)); len(ents) != 0 {
		t.Errorf("a failed export left %v", ents)
	}
}

func TestQueueUnknownID(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	for _, id := range []string{unknownID, "not-an-id", "../../etc/passwd"} {
		for _, sub := range []string{"show", "retry", "delete", "export"} {
			r := w.queue(t, sub, id)
			if r.code != 1 || !strings.Contains(r.stderr, "no queued message "+id) || r.stdout != "" {
				t.Errorf("%s %s: want exit 1 and no queued message: %v", sub, id, r)
			}
		}
	}
}

func TestQueueNoQueue(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	state := filepath.Join(t.TempDir(), "state")
	path := newConfig(t, ms, cfgSpec{stateDir: state, accounts: []acct{invoices(t)}})
	q := func(args ...string) result {
		return runCmd(t, nil, append([]string{"queue", "-config", path}, args...)...)
	}
	const noQueue = "no queue (no account uses delivery: queue, or nothing was ever queued)"
	if r := q("list"); r.code != 0 || !strings.Contains(r.stdout, noQueue) {
		t.Errorf("list without a queue: want exit 0 and %q: %v", noQueue, r)
	}
	if r := q("list", "-json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" || !strings.Contains(r.stderr, noQueue) {
		t.Errorf("list -json without a queue: %v", r)
	}
	for _, args := range [][]string{{"show", unknownID}, {"retry", "all"}, {"delete", unknownID}, {"export", unknownID}} {
		if r := q(args...); r.code != 1 || !strings.Contains(r.stderr, noQueue) {
			t.Errorf("%v without a queue: want exit 1 and %q: %v", args, noQueue, r)
		}
	}
	if _, err := os.Stat(filepath.Join(state, queueDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("queue created the spool directory: %v", err)
	}
}

func TestQueueUsage(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	for _, args := range [][]string{
		{}, {"bogus"}, {"list", "extra"}, {"list", "-bogus"}, {"show"}, {"show", "a", "b"},
		{"retry"}, {"retry", "a", "b"}, {"retry", unknownID, "-account", "sales"}, {"delete"},
		{"export"}, {"export", "a", "b"}, {"export", "-o"},
	} {
		r := w.queue(t, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "usage: oauthrelay queue") || r.stdout != "" {
			t.Errorf("%v: want exit 2 and the queue usage: %v", args, r)
		}
	}
	for _, args := range [][]string{{"-h"}, {"help"}, {"list", "-h"}} {
		r := w.queue(t, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "Deleting a message serve is delivering right now is safe") {
			t.Errorf("%v: want exit 2 and the help: %v", args, r)
		}
	}
	// Flags after the subcommand's argument, and -config after the subcommand.
	if r := runCmd(t, nil, "queue", "list", "-config", w.path, "-account", "sales"); r.code != 0 || !strings.Contains(r.stdout, w.bounce.ID) {
		t.Errorf("queue list -config: %v", r)
	}
	if r := runCmd(t, nil, "queue", "-config", filepath.Join(t.TempDir(), "missing.yaml"), "list"); r.code != 1 ||
		!strings.Contains(r.stderr, "missing.yaml") {
		t.Errorf("a missing config: want exit 1 naming it: %v", r)
	}
}

// claimant holds a claim on a message through its own spool handle, as
// serve's worker does, and rewrites the envelope until stopped, an update
// fails or maxUpdates is reached.
type claimant struct {
	stop    chan struct{}
	started chan struct{}
	done    chan claimOutcome
	once    sync.Once
	out     claimOutcome
}

type claimOutcome struct {
	updates int
	err     error
}

const maxUpdates = 100000

func startClaimant(t testing.TB, root, id string) *claimant {
	t.Helper()
	sp, _, err := spool.Open(root, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	release, err := sp.Claim(id)
	if err != nil {
		sp.Close()
		t.Fatal(err)
	}
	c := &claimant{stop: make(chan struct{}), started: make(chan struct{}), done: make(chan claimOutcome, 1)}
	go func() {
		defer sp.Close()
		defer release()
		e, _, err := sp.BeginAttempt(id)
		close(c.started)
		n := 0
		for ; err == nil && n < maxUpdates; n++ {
			select {
			case <-c.stop:
				c.done <- claimOutcome{n, nil}
				return
			default:
			}
			e.Attempts++
			e.LastError = "451 4.4.1 attempt " + strconv.Itoa(e.Attempts)
			e.Recipients[0].Reply = e.LastError
			err = sp.Update(e)
		}
		c.done <- claimOutcome{n, err}
	}()
	t.Cleanup(func() { c.finish(t) })
	<-c.started
	return c
}

// finish stops the claimant (if it still runs) and returns what it did.
func (c *claimant) finish(t testing.TB) (int, error) {
	t.Helper()
	c.once.Do(func() {
		close(c.stop)
		select {
		case c.out = <-c.done:
		case <-time.After(waitTimeout):
			t.Errorf("the claimant did not stop within %v", waitTimeout)
		}
	})
	return c.out.updates, c.out.err
}

// queue list and show, while another spool handle holds the claim on a
// message and keeps rewriting its envelope: never an error, never a torn
// or missing envelope.
func TestQueueListWhileClaimed(t *testing.T) {
	t.Parallel()
	w := newQueueWorld(t)
	c := startClaimant(t, w.root, w.mixed.ID)
	const rounds = 20
	var attempts []int
	for range rounds {
		r := w.ok(t, "list", "-json")
		var got []queueJSON
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("list -json during updates: %v\n%s", err, r.stdout)
		}
		i := slices.IndexFunc(got, func(j queueJSON) bool { return j.ID == w.mixed.ID })
		if len(got) != 2 || i < 0 || got[i].InFlight == nil || len(got[i].Recipients) != 3 {
			t.Fatalf("list during updates: %+v", got)
		}
		attempts = append(attempts, got[i].Attempts)
		wantAll(t, tableRow(t, w.ok(t, "list").stdout, w.mixed.ID), "delivering")
		wantAll(t, w.ok(t, "show", w.mixed.ID).stdout, "being delivered since", "<alice@example.net>")
	}
	n, err := c.finish(t)
	if err != nil {
		t.Fatalf("the claimant's update failed after %d: %v", n, err)
	}
	if !slices.IsSorted(attempts) {
		t.Errorf("attempts went backwards: %v", attempts)
	}
	e, err := w.sp.Get(w.mixed.ID)
	if err != nil || e.Attempts != w.mixed.Attempts+1+n {
		t.Errorf("after %d updates: %+v, %v", n, e, err)
	}
	t.Logf("%d list/show rounds beside %d envelope updates", rounds, n)
}

// The built binary, a process of its own, beside a claim held by this
// one: list works, retry and delete take the spool's lock, and the
// claimant's next update finds the message gone and does not bring it
// back.
func TestQueueBinaryBesideClaim(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	w := newQueueWorld(t)
	c := startClaimant(t, w.root, w.mixed.ID)
	exe := func(args ...string) (int, string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, append([]string{"queue", "-config", w.path}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("run %v: %v", args, err)
		}
		return cmd.ProcessState.ExitCode(), out.String(), errb.String()
	}
	code, out, errs := exe("list", "-json")
	var got []queueJSON
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 2 {
		t.Fatalf("list -json: exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs = exe("retry", w.mixed.ID); code != 0 || !strings.Contains(out, "being delivered now") {
		t.Errorf("retry while claimed: exit %d\n%s\n%s", code, out, errs)
	}
	if code, out, errs = exe("delete", w.mixed.ID); code != 0 || !strings.Contains(out, "it was being delivered") {
		t.Errorf("delete while claimed: exit %d\n%s\n%s", code, out, errs)
	}
	n, err := c.finish(t)
	if !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("the claimant's update after delete: %v after %d updates; want ErrNotFound", err, n)
	}
	if _, err := w.sp.Get(w.mixed.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("the deleted message came back: %v", err)
	}
	if code, out, errs = exe("show", w.mixed.ID); code != 1 || !strings.Contains(errs, "no queued message "+w.mixed.ID) {
		t.Errorf("show after delete: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs = exe("list", "extra"); code != 2 || !strings.Contains(errs, "usage: oauthrelay queue") {
		t.Errorf("usage error from the binary: exit %d\n%s", code, errs)
	}
}
