package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// A message handed to the queue is answered "2.0.0 OK queued as <id>" only
// once it is in the spool, byte for byte (its delivery is held back here by
// the token), and is then delivered to the fake exactly as submitted and
// removed from the spool.
func TestQueueSpoolsThenDelivers(t *testing.T) {
	fake, tgt, cred := fakeUpstream(t)
	gate := newGatedCreds(cred)
	w := newQueueWorld(t, queueOptions{target: tgt, cred: gate})

	id := queued(t, w.queue, testMailbox, []string{recipient}, nil, testMessage)
	env := getEnvelope(t, w.spool, id)
	if env.From != testMailbox || len(env.Recipients) != 1 || env.Recipients[0].Addr != recipient ||
		env.Recipients[0].State != spool.Pending || env.Account != testAccount.Name || env.Mailbox != testMailbox {
		t.Errorf("spooled envelope %+v", env)
	}
	if env.Size != int64(len(testMessage)) || env.MessageID != "<inv-2024-03@contoso.com>" {
		t.Errorf("spooled size %d, Message-ID %q", env.Size, env.MessageID)
	}
	if got := body(t, w.spool, id); got != testMessage {
		t.Errorf("spooled body %q, want %q", got, testMessage)
	}
	if n := len(fake.Messages()); n != 0 {
		t.Fatalf("the fake has %d messages before the worker could log in", n)
	}
	if c := w.obs.get(); c.Queued != 1 {
		t.Errorf("Queued reported %d times, want 1", c.Queued)
	}

	close(gate.open)
	msgs, err := fake.WaitMessages(testCtx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	w.obs.wait(t, "the delivery recorded", func(c queueCounts) bool { return c.Delivered == 1 })
	wantGone(t, w.spool, id)
	m := msgs[0]
	if string(m.Data) != testMessage || m.From != testMailbox || !slices.Equal(m.To, []string{recipient}) {
		t.Errorf("the fake got %q from %q to %v, want testMessage from %q to %s", m.Data, m.From, m.To, testMailbox, recipient)
	}
	if m.Params.Size != int64(len(testMessage)) {
		t.Errorf("MAIL SIZE=%d, want the spooled size %d", m.Params.Size, len(testMessage))
	}
	if n := len(fake.Messages()); n != 1 {
		t.Errorf("the fake has %d messages, want 1", n)
	}
	if got := w.obs.sizes(); !slices.Equal(got, []int64{int64(len(testMessage))}) {
		t.Errorf("the direct delivery reported messages %v", got)
	}
}

// Recipients are tracked one by one. Of five, the upstream accepts two,
// defers two (450) and refuses one (550) on the first attempt; the second
// attempt sends only to the two deferred; then the message is done, in the
// failed area, and one DSN goes back to the envelope sender through the
// same upstream session, naming only the refused recipient with its reply,
// and quoting the original's header.
func TestQueuePerRecipient(t *testing.T) {
	const (
		ok1, later1, ok2, unknown, later2 = "ok1@example.net", "later1@example.net", "ok2@example.net",
			"unknown@example.net", "later2@example.net"
		refusal = "550 5.1.1 User unknown"
	)
	bodies := make(chan []byte, 3)
	data := func(c net.Conn, br *bufio.Reader, final string) bool {
		b, ok := sendData(t, c, br, final)
		if ok {
			bodies <- b
		}
		return ok
	}
	tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
		_ = loginDSN(t, c, br) &&
			// The first attempt: all five.
			exchange(t, c, br, "MAIL FROM:<"+appSender+">", "250 2.1.0 Sender OK") &&
			exchange(t, c, br, "RCPT TO:<"+ok1+">", "250 2.1.5 Recipient OK") &&
			exchange(t, c, br, "RCPT TO:<"+later1+">", "450 4.2.1 Mailbox temporarily unavailable") &&
			exchange(t, c, br, "RCPT TO:<"+ok2+">", "250 2.1.5 Recipient OK") &&
			exchange(t, c, br, "RCPT TO:<"+unknown+">", refusal) &&
			exchange(t, c, br, "RCPT TO:<"+later2+">", "450 4.2.1 Mailbox temporarily unavailable") &&
			data(c, br, "250 2.0.0 OK <first@scripted> [Hostname=scripted]") &&
			// The second: the two deferred only.
			exchange(t, c, br, "MAIL FROM:<"+appSender+">", "250 2.1.0 Sender OK") &&
			exchange(t, c, br, "RCPT TO:<"+later1+">", "250 2.1.5 Recipient OK") &&
			exchange(t, c, br, "RCPT TO:<"+later2+">", "250 2.1.5 Recipient OK") &&
			data(c, br, "250 2.0.0 OK <second@scripted> [Hostname=scripted]") &&
			// The DSN, from the mailbox, never notified itself.
			exchange(t, c, br, "MAIL FROM:<"+testMailbox+">", "250 2.1.0 Sender OK") &&
			exchange(t, c, br, "RCPT TO:<"+appSender+"> NOTIFY=NEVER", "250 2.1.5 Recipient OK") &&
			data(c, br, "250 2.0.0 OK <dsn@scripted> [Hostname=scripted]")
		quit221(t, c, br)
	})
	w := newQueueWorld(t, queueOptions{target: tgt})
	id := queued(t, w.queue, appSender, []string{ok1, later1, ok2, unknown, later2}, nil, testMessage)

	w.obs.wait(t, "the first attempt", func(c queueCounts) bool { return c.Deferred == 1 })
	env := getEnvelope(t, w.spool, id)
	if env.Attempts != 1 || !env.NextAttempt.Equal(w.clock.Now().Add(time.Minute)) || !env.InFlight.IsZero() {
		t.Errorf("after the first attempt: attempts %d, next %v (now %v), in flight %v", env.Attempts, env.NextAttempt, w.clock.Now(), env.InFlight)
	}
	wantStates := map[string]spool.State{ok1: spool.Delivered, later1: spool.Pending, ok2: spool.Delivered,
		unknown: spool.Failed, later2: spool.Pending}
	wantReplies := map[string]string{ok1: "250 2.0.0 OK <first@scripted>", later1: "450 4.2.1 ", ok2: "250 2.0.0 OK <first@scripted>",
		unknown: refusal, later2: "450 4.2.1 "}
	for _, r := range env.Recipients {
		if r.State != wantStates[r.Addr] || !strings.HasPrefix(r.Reply, wantReplies[r.Addr]) {
			t.Errorf("recipient %s: %s %q, want %s %q...", r.Addr, r.State, r.Reply, wantStates[r.Addr], wantReplies[r.Addr])
		}
	}

	w.clock.advance(time.Minute)
	w.queue.wake()
	c := w.obs.wait(t, "the message failed and its DSN delivered", func(c queueCounts) bool { return c.Failed == 1 && c.Delivered == 1 })
	// The first attempt's last refusal was a 450; the second delivered the
	// rest, and the message failed for the 550 of the first.
	if want := []string{"deferred temporary", "failed refused", "delivered"}; !slices.Equal(c.Reasons, want) {
		t.Errorf("attempts reported %q, want %q", c.Reasons, want)
	}
	if n := len(active(t, w.spool)); n != 0 {
		t.Errorf("%d messages still active", n)
	}
	failed := failedEnvelopes(t, w.spool)
	if len(failed) != 1 || failed[0].ID != id || !strings.Contains(failed[0].FailReason, refusal) {
		t.Fatalf("failed area %+v, want message %s with reason naming %q", failed, id, refusal)
	}
	for _, r := range failed[0].Recipients {
		if want := map[bool]spool.State{true: spool.Failed, false: spool.Delivered}[r.Addr == unknown]; r.State != want {
			t.Errorf("recipient %s ended %s, want %s", r.Addr, r.State, want)
		}
	}

	first, second, report := <-bodies, <-bodies, <-bodies
	if string(first) != testMessage || string(second) != testMessage {
		t.Errorf("attempts sent %q and %q, want the queued message both times", first, second)
	}
	d := parseDSN(t, report)
	if got := d.header.Get("To"); got != "<"+appSender+">" {
		t.Errorf("DSN To: %q", got)
	}
	if got := d.header.Get("From"); !strings.Contains(got, testMailbox) {
		t.Errorf("DSN From: %q, want the mailbox", got)
	}
	if d.header.Get("Auto-Submitted") != "auto-replied" || d.header.Get("Message-ID") == "" || d.header.Get("Date") == "" {
		t.Errorf("DSN header %v", d.header)
	}
	if len(d.recipients) != 1 {
		t.Fatalf("DSN names %d recipients, want 1: %v", len(d.recipients), d.recipients)
	}
	r := d.recipients[0]
	if r.Get("Final-Recipient") != "rfc822; "+unknown || r.Get("Action") != "failed" || r.Get("Status") != "5.1.1" ||
		r.Get("Diagnostic-Code") != "smtp; "+refusal {
		t.Errorf("DSN recipient fields %v", r)
	}
	if d.perMessage.Get("Reporting-MTA") != "dns; relay.test" || d.perMessage.Get("Arrival-Date") == "" {
		t.Errorf("DSN per-message fields %v", d.perMessage)
	}
	for _, other := range []string{ok1, ok2, later1, later2} {
		if strings.Contains(d.text, other) || strings.Contains(string(report), other) {
			t.Errorf("the DSN names %s, which was delivered", other)
		}
	}
	if !strings.Contains(d.text, unknown) || !strings.Contains(d.text, refusal) {
		t.Errorf("DSN text %q does not name %s and its reply", d.text, unknown)
	}
	wantHeaders := strings.SplitN(testMessage, "\r\n\r\n", 2)[0] + "\r\n"
	if d.headers != wantHeaders {
		t.Errorf("DSN quotes %q, want the original's header %q", d.headers, wantHeaders)
	}
}

// No DSN goes to the null sender, to a recipient that asked for none on
// failure (NOTIFY=NEVER, or NOTIFY=SUCCESS only: RFC 3461 §4.1), nor about
// a DSN (RFC 3461 §6.2): the message is failed and nothing else is queued.
func TestQueueNoDSN(t *testing.T) {
	for _, tc := range []struct {
		name   string
		from   string
		notify []smtp.DSNNotify
		dsn    bool // seeded as the relay's own notification
	}{
		{name: "null sender", from: ""},
		{name: "NOTIFY=NEVER", from: appSender, notify: []smtp.DSNNotify{smtp.DSNNotifyNever}},
		{name: "NOTIFY=SUCCESS", from: appSender, notify: []smtp.DSNNotify{smtp.DSNNotifySuccess}},
		{name: "a DSN", from: appSender, dsn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
				_ = loginDSN(t, c, br) &&
					exchange(t, c, br, "MAIL FROM:<"+tc.from+">", "250 2.1.0 Sender OK") &&
					exchange(t, c, br, "RCPT TO:<"+recipient+">", "550 5.1.1 User unknown") &&
					exchange(t, c, br, "RSET", "250 2.0.0 Resetting")
				quit221(t, c, br)
			})
			var seed func(*spool.Spool)
			var id string
			if tc.dsn {
				seed = func(sp *spool.Spool) {
					env := envelopeTo(tc.from, recipient)
					env.Notification = true
					id = seedMessage(t, sp, env, testMessage)
				}
			}
			w := newQueueWorld(t, queueOptions{target: tgt, seed: seed})
			if !tc.dsn {
				var opts *smtp.RcptOptions
				if tc.notify != nil {
					opts = &smtp.RcptOptions{Notify: tc.notify}
				}
				id = queued(t, w.queue, tc.from, []string{recipient}, opts, testMessage)
			}
			w.obs.wait(t, "the message failed", func(c queueCounts) bool { return c.Failed == 1 })
			if envs := active(t, w.spool); len(envs) != 0 {
				t.Errorf("a notification was queued: %+v", envs[0])
			}
			if f := failedEnvelopes(t, w.spool); len(f) != 1 || f[0].ID != id {
				t.Errorf("failed area %+v, want only %s", f, id)
			}
		})
	}
}

// A temporary failure is retried with backoff: the attempts are counted
// and the next one is 1, 2, 4, 8 minutes after the last. Once the message
// is older than MaxAge it is given up after its attempt, and the DSN says
// why in plain words (Status 5.4.7, RFC 3463: delivery time expired), with
// the upstream's last reply as its Diagnostic-Code when there was one.
func TestQueueBackoffAndMaxAge(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(t *testing.T) (tgtDone func())
		// attempts is how many deferred attempts are checked before the
		// clock moves past MaxAge.
		attempts int
		wantText string // in the DSN's text
		wantDiag string // its Diagnostic-Code, "" for none
		reason   string // of each deferral
	}{
		{name: "upstream unreachable", attempts: 4, wantText: "the upstream server was not available", reason: ReasonUnavailable},
		{name: "451 at MAIL", attempts: 1, wantText: "451 4.3.0 Temporary server error", wantDiag: "smtp; 451 4.3.0 Temporary server error",
			reason: ReasonTemporary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := unreachable(t)
			if tc.wantDiag != "" {
				tgt = scripted(t, func(c net.Conn, br *bufio.Reader) {
					_ = loginDSN(t, c, br) &&
						exchange(t, c, br, "MAIL FROM:<"+appSender+">", "451 4.3.0 Temporary server error") &&
						exchange(t, c, br, "MAIL FROM:<"+appSender+">", "451 4.3.0 Temporary server error") &&
						// The DSN's own first attempt.
						exchange(t, c, br, "MAIL FROM:<"+testMailbox+">", "451 4.3.0 Temporary server error")
					quit221(t, c, br)
				})
			}
			w := newQueueWorld(t, queueOptions{target: tgt, maxAge: time.Hour})
			id := queued(t, w.queue, appSender, []string{recipient}, nil, testMessage)
			for i := range tc.attempts {
				w.obs.wait(t, "a deferred attempt", func(c queueCounts) bool { return c.Deferred == i+1 })
				env := getEnvelope(t, w.spool, id)
				want := time.Minute << i
				if env.Attempts != i+1 || !env.NextAttempt.Equal(w.clock.Now().Add(want)) {
					t.Errorf("after attempt %d: attempts %d, next attempt %v after now, want %v",
						i+1, env.Attempts, env.NextAttempt.Sub(w.clock.Now()), want)
				}
				if env.Pending() != 1 || env.LastError == "" {
					t.Errorf("after attempt %d: %d pending, last error %q", i+1, env.Pending(), env.LastError)
				}
				if i+1 < tc.attempts {
					w.clock.advance(want)
					w.queue.wake()
				}
			}
			w.clock.advance(2 * time.Hour)
			w.queue.wake()
			w.obs.wait(t, "the message given up", func(c queueCounts) bool { return c.Failed == 1 })
			// The DSN's own first attempt fails alike.
			c := w.obs.wait(t, "the DSN deferred", func(c queueCounts) bool { return c.Deferred == tc.attempts+1 })
			var want []string
			for range tc.attempts {
				want = append(want, "deferred "+tc.reason)
			}
			want = append(want, "failed "+ReasonExpired, "deferred "+tc.reason)
			if !slices.Equal(c.Reasons, want) {
				t.Errorf("attempts reported %q, want %q", c.Reasons, want)
			}

			failed := getEnvelope(t, w.spool, id)
			if failed.Failed.IsZero() || failed.Attempts != tc.attempts+1 || !strings.Contains(failed.FailReason, "within 1 hour") {
				t.Errorf("given up: failed %v after %d attempts, reason %q", failed.Failed, failed.Attempts, failed.FailReason)
			}
			envs := active(t, w.spool)
			if len(envs) != 1 || !envs[0].Notification || envs[0].From != testMailbox ||
				len(envs[0].Recipients) != 1 || envs[0].Recipients[0].Addr != appSender ||
				!slices.Equal(envs[0].Recipients[0].Notify, []string{"NEVER"}) {
				t.Fatalf("active after giving up: %+v, want one DSN to %s", envs, appSender)
			}
			d := parseDSN(t, []byte(body(t, w.spool, envs[0].ID)))
			if len(d.recipients) != 1 {
				t.Fatalf("DSN names %d recipients, want 1", len(d.recipients))
			}
			r := d.recipients[0]
			if r.Get("Final-Recipient") != "rfc822; "+recipient || r.Get("Action") != "failed" || r.Get("Status") != "5.4.7" ||
				r.Get("Diagnostic-Code") != tc.wantDiag {
				t.Errorf("DSN recipient fields %v, want status 5.4.7 and Diagnostic-Code %q", r, tc.wantDiag)
			}
			for _, want := range []string{recipient, "could not be delivered within 1 hour", tc.wantText} {
				if !strings.Contains(d.text, want) {
					t.Errorf("DSN text %q does not say %q", d.text, want)
				}
			}
		})
	}
}

// Exchange's daily quota (554 5.2.0 ...SubmissionQuotaExceededException)
// is a 5xx that waiting cures: the queued message is deferred, not failed
// and bounced.
func TestQueueQuotaIsTemporary(t *testing.T) {
	const quota = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception"
	tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
		if loginDSN(t, c, br) &&
			exchange(t, c, br, "MAIL FROM:<"+appSender+">", "250 2.1.0 Sender OK") &&
			exchange(t, c, br, "RCPT TO:<"+recipient+">", "250 2.1.5 Recipient OK") {
			sendData(t, c, br, quota)
		}
		quit221(t, c, br)
	})
	w := newQueueWorld(t, queueOptions{target: tgt})
	id := queued(t, w.queue, appSender, []string{recipient}, nil, testMessage)
	c := w.obs.wait(t, "the attempt", func(c queueCounts) bool { return c.Deferred+c.Failed == 1 })
	if c.Failed != 0 {
		t.Fatalf("the quota reply failed the message: %+v", c)
	}
	if want := []string{"deferred " + ReasonQuota}; !slices.Equal(c.Reasons, want) {
		t.Errorf("attempts reported %q, want %q", c.Reasons, want)
	}
	env := getEnvelope(t, w.spool, id)
	if env.Pending() != 1 || env.Recipients[0].Reply != quota || !env.Failed.IsZero() {
		t.Errorf("after the quota reply: %+v", env)
	}
}

// What cannot be spooled is never acknowledged: an unusable spool gives the
// 452 4.3.1 reply, a message over MaxSize 552 5.3.4 (at MAIL when its SIZE=
// says so, else at DATA), and an app whose message fails to arrive the
// *smtpclient.ReadError; nothing is left in the spool.
func TestQueueRefusesWhatItCannotSpool(t *testing.T) {
	wantReply := func(t *testing.T, acc *Accepted, err error, code int, enh smtp.EnhancedCode) {
		t.Helper()
		var se *smtp.SMTPError
		if acc != nil || !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enh {
			t.Fatalf("Data: %v, %v (%T), want %d %v", acc, err, err, code, enh)
		}
	}
	wantEmpty := func(t *testing.T, w *queueWorld) {
		t.Helper()
		for _, d := range []string{"tmp", "body", "active"} {
			if ents, err := os.ReadDir(filepath.Join(w.dir, d)); err == nil && len(ents) != 0 {
				t.Errorf("%s/ holds %d files", d, len(ents))
			}
		}
		if c := w.obs.get(); c.Queued != 0 {
			t.Errorf("Queued reported %d times", c.Queued)
		}
	}
	t.Run("spool unwritable", func(t *testing.T) {
		w := newQueueWorld(t, queueOptions{target: unreachable(t)})
		replaceWithFile(t, filepath.Join(w.dir, "active"))
		acc, err := submit(t, w.queue, appSender, []string{recipient}, nil, testMessage)
		wantReply(t, acc, err, 452, smtp.EnhancedCode{4, 3, 1})
		wantEmpty(t, w)
	})
	t.Run("too big", func(t *testing.T) {
		w := newQueueWorld(t, queueOptions{target: unreachable(t)})
		big := testMessage + strings.Repeat("x", 1<<20)
		acc, err := submit(t, w.queue, appSender, []string{recipient}, nil, big)
		wantReply(t, acc, err, 552, smtp.EnhancedCode{5, 3, 4})
		_, err = w.queue.Begin(testCtx(t), nil, appSender, &smtp.MailOptions{Size: int64(len(big))})
		wantReply(t, nil, err, 552, smtp.EnhancedCode{5, 3, 4})
		wantEmpty(t, w)
	})
	t.Run("app fails mid-message", func(t *testing.T) {
		w := newQueueWorld(t, queueOptions{target: unreachable(t)})
		tx, err := w.queue.Begin(testCtx(t), nil, appSender, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rcpt(recipient, nil); err != nil {
			t.Fatal(err)
		}
		errApp := errors.New("the app went away")
		acc, err := tx.Data(io.MultiReader(strings.NewReader(testMessage[:40]), iotest.ErrReader(errApp)))
		var re *smtpclient.ReadError
		if acc != nil || !errors.As(err, &re) || !errors.Is(err, errApp) {
			t.Fatalf("Data: %v, %v (%T), want a *smtpclient.ReadError of the app's error", acc, err, err)
		}
		wantEmpty(t, w)
	})
}

func replaceWithFile(t *testing.T, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Messages already in the spool when a Queue starts (left by the process
// before) are delivered.
func TestQueueDeliversWhatItFindsAtStart(t *testing.T) {
	fake, tgt, cred := fakeUpstream(t)
	want := map[string]bool{}
	w := newQueueWorld(t, queueOptions{target: tgt, cred: cred, seed: func(sp *spool.Spool) {
		for _, n := range []string{"a", "b", "c"} {
			msg := numberedMessage(n)
			seedMessage(t, sp, envelopeTo(testMailbox, recipient), msg)
			want[msg] = true
		}
	}})
	msgs, err := fake.WaitMessages(testCtx(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	w.obs.wait(t, "three deliveries", func(c queueCounts) bool { return c.Delivered == 3 })
	for _, m := range msgs {
		if !want[string(m.Data)] {
			t.Errorf("unexpected or repeated message %q", m.Data)
		}
		delete(want, string(m.Data))
	}
	if envs := active(t, w.spool); len(envs) != 0 {
		t.Errorf("%d messages left in the spool", len(envs))
	}
}

// A Queue closed in the middle of a message (its final dot sent, the reply
// not yet read) leaves it due at once, and marked in flight: the second
// Queue over the same spool (the restart) delivers it and the one never
// tried, and counts the interrupted one as a possible duplicate.
func TestQueueClosedMidwayThenRestarted(t *testing.T) {
	stalled := make(chan struct{})
	first := scripted(t, func(c net.Conn, br *bufio.Reader) {
		if !loginDSN(t, c, br) ||
			!exchange(t, c, br, "MAIL FROM:<"+testMailbox+">", "250 2.1.0 Sender OK") ||
			!exchange(t, c, br, "RCPT TO:<"+recipient+">", "250 2.1.5 Recipient OK") {
			return
		}
		if _, ok := sendData(t, c, br, "250 2.0.0 OK <1@scripted>"); !ok {
			return
		}
		if !exchange(t, c, br, "MAIL FROM:<"+testMailbox+">", "250 2.1.0 Sender OK") ||
			!exchange(t, c, br, "RCPT TO:<"+recipient+">", "250 2.1.5 Recipient OK") ||
			!exchange(t, c, br, "DATA", "354 go ahead") {
			return
		}
		if _, ok := readBody(t, br); ok {
			close(stalled) // and never answer the final dot
			waitClosed(t, c)
		}
	})
	var ids []string
	w1 := newQueueWorld(t, queueOptions{target: first, seed: func(sp *spool.Spool) {
		for _, n := range []string{"a", "b", "c"} {
			ids = append(ids, seedMessage(t, sp, envelopeTo(testMailbox, recipient), numberedMessage(n)))
		}
	}})
	select {
	case <-stalled:
	case <-time.After(testLimit):
		t.Fatal("the first queue never reached its second message")
	}
	w1.queue.Close()
	var left []*spool.Envelope
	for _, e := range active(t, w1.spool) {
		left = append(left, e)
		if e.NextAttempt.After(w1.clock.Now()) {
			t.Errorf("message %s (attempts %d) is not due after the close: next attempt %v after now",
				e.ID, e.Attempts, e.NextAttempt.Sub(w1.clock.Now()))
		}
	}
	if len(left) != 2 {
		t.Fatalf("%d messages left after the close, want 2", len(left))
	}

	fake, tgt, cred := fakeUpstream(t)
	w2 := newQueueWorld(t, queueOptions{target: tgt, cred: cred, dir: w1.dir, clock: w1.clock})
	msgs, err := fake.WaitMessages(testCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	c := w2.obs.wait(t, "two deliveries", func(c queueCounts) bool { return c.Delivered == 2 })
	if c.Duplicates != 1 {
		t.Errorf("possible duplicates reported %d, want 1 (the message whose final dot went before the close)", c.Duplicates)
	}
	if a, b := messageIDOf(t, msgs[0].Data), messageIDOf(t, msgs[1].Data); a == b {
		t.Errorf("the restart delivered %s twice", a)
	}
	for _, id := range ids {
		wantGone(t, w2.spool, id)
	}
}

// A message whose last attempt was marked in flight and never finished (a
// crash) is delivered again, and reported as a possible duplicate.
func TestQueueInterruptedAttemptIsDuplicate(t *testing.T) {
	fake, tgt, cred := fakeUpstream(t)
	var id string
	w := newQueueWorld(t, queueOptions{target: tgt, cred: cred, seed: func(sp *spool.Spool) {
		id = seedMessage(t, sp, envelopeTo(testMailbox, recipient), testMessage)
		if _, _, err := sp.BeginAttempt(id); err != nil {
			t.Fatal(err)
		}
	}})
	if _, err := fake.WaitMessages(testCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	c := w.obs.wait(t, "the delivery", func(c queueCounts) bool { return c.Delivered == 1 })
	if c.Duplicates != 1 {
		t.Errorf("possible duplicates reported %d, want 1", c.Duplicates)
	}
	wantGone(t, w.spool, id)
}

// Two queues over one spool directory (two processes, here two Opens)
// never deliver one message twice: each message is claimed by one of them.
func TestQueueTwoWorkersOneSpool(t *testing.T) {
	const n = 20
	fake, tgt, cred := fakeUpstream(t)
	o := queueOptions{target: tgt, cred: cred, dir: t.TempDir(), clock: newTestClock(), obs: newQueueRecorder(),
		limits: config.Limits{Connections: 3, MessagesPerMinute: 1000, RecipientsPerDay: 10000, RecipientsPerMessage: 500}}
	seeded := o
	seeded.seed = func(sp *spool.Spool) {
		for i := range n {
			seedMessage(t, sp, envelopeTo(testMailbox, recipient), numberedMessage(fmt.Sprintf("m%d", i)))
		}
	}
	w1 := newQueueWorld(t, seeded)
	w2 := newQueueWorld(t, o)
	if _, err := fake.WaitMessages(testCtx(t), n); err != nil {
		t.Fatal(err)
	}
	o.obs.wait(t, "every message delivered", func(c queueCounts) bool { return c.Delivered >= n })
	msgs := fake.Messages()
	if len(msgs) != n {
		t.Errorf("the fake got %d messages, want %d", len(msgs), n)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		id := messageIDOf(t, m.Data)
		if seen[id] {
			t.Errorf("%s delivered twice", id)
		}
		seen[id] = true
	}
	if c := o.obs.get(); c.Delivered != n || c.Duplicates != 0 {
		t.Errorf("the queues reported %+v, want %d deliveries and no duplicate", c, n)
	}
	if len(active(t, w1.spool)) != 0 || len(active(t, w2.spool)) != 0 {
		t.Error("messages left in the spool")
	}
}

// A worker tries a message only if it is due on the envelope read under
// its claim: another worker may have tried and deferred it after this
// one listed the spool, and trying it again at once would skip the backoff.
func TestQueueAttemptRechecksUnderClaim(t *testing.T) {
	var id string
	clock := newTestClock()
	next := clock.Now().Add(10 * time.Minute)
	w := newQueueWorld(t, queueOptions{target: scripted(t), clock: clock, seed: func(sp *spool.Spool) {
		env := envelopeTo(appSender, recipient)
		env.NextAttempt = next // as another worker left it
		id = seedMessage(t, sp, env, testMessage)
	}})
	again, ok := w.queue.attempt(testCtx(t), id)
	if !ok || !again.Equal(next) {
		t.Errorf("attempt of a message not due: %v, %v; want its next attempt %v", again, ok, next)
	}
	if env := getEnvelope(t, w.spool, id); env.Attempts != 0 || !env.InFlight.IsZero() {
		t.Errorf("a message not due was tried: %+v", env)
	}
}

// An envelope that cannot be read (written by hand, or corrupted since
// the spool was opened) does not stop the account's other messages.
func TestQueueDeliversPastCorruptEnvelope(t *testing.T) {
	fake, tgt, cred := fakeUpstream(t)
	var id string
	w := newQueueWorld(t, queueOptions{target: tgt, cred: cred, seed: func(sp *spool.Spool) {
		id = seedMessage(t, sp, envelopeTo(testMailbox, recipient), testMessage)
		bad := filepath.Join(sp.Root(), "active", strings.Repeat("0", 26)+".json")
		if err := os.WriteFile(bad, []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
	}})
	if _, err := fake.WaitMessages(testCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	w.obs.wait(t, "the delivery", func(c queueCounts) bool { return c.Delivered == 1 })
	wantGone(t, w.spool, id)
}

// A message with nothing left to send (a crash after the Update that
// recorded its last recipient's failure) is finished without contacting
// the upstream: the scripted upstream takes no connection.
func TestQueueFinishesWhatHasNothingPending(t *testing.T) {
	var id string
	w := newQueueWorld(t, queueOptions{target: scripted(t), seed: func(sp *spool.Spool) {
		env := envelopeTo(appSender, recipient)
		env.Recipients[0].State, env.Recipients[0].Reply = spool.Failed, "550 5.1.1 User unknown"
		env.Notification = true // no DSN either
		id = seedMessage(t, sp, env, testMessage)
	}})
	w.obs.wait(t, "the message failed", func(c queueCounts) bool { return c.Failed == 1 })
	if env := getEnvelope(t, w.spool, id); env.Failed.IsZero() {
		t.Errorf("not in the failed area: %+v", env)
	}
}

// Close stops the worker wherever it is — between attempts, waiting for a
// token, waiting for the upstream's reply — and joins it (goleak checks
// nothing is left); a second Close is harmless.
func TestQueueCloseJoinsWorker(t *testing.T) {
	closeWithin := func(t *testing.T, q *Queue) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); q.Close() }()
		select {
		case <-done:
		case <-time.After(testLimit):
			t.Fatal("Close did not return")
		}
		q.Close()
	}
	t.Run("idle", func(t *testing.T) {
		w := newQueueWorld(t, queueOptions{target: unreachable(t)})
		closeWithin(t, w.queue)
	})
	t.Run("waiting for a token", func(t *testing.T) {
		_, tgt, cred := fakeUpstream(t)
		gate := newGatedCreds(cred)
		w := newQueueWorld(t, queueOptions{target: tgt, cred: gate})
		id := queued(t, w.queue, testMailbox, []string{recipient}, nil, testMessage)
		select {
		case <-gate.asked:
		case <-time.After(testLimit):
			t.Fatal("the worker never asked for a token")
		}
		closeWithin(t, w.queue)
		if env := getEnvelope(t, w.spool, id); env.Pending() != 1 || env.NextAttempt.After(w.clock.Now()) {
			t.Errorf("after the close: %+v, want it pending and due", env)
		}
	})
	t.Run("waiting for a reply", func(t *testing.T) {
		reading := make(chan struct{})
		tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
			if loginDSN(t, c, br) && expect(t, br, "MAIL FROM:") {
				close(reading)
				waitClosed(t, c)
			}
		})
		w := newQueueWorld(t, queueOptions{target: tgt})
		queued(t, w.queue, appSender, []string{recipient}, nil, testMessage)
		<-reading
		closeWithin(t, w.queue)
	})
}

// messageIDOf returns the Message-ID field of a message.
func messageIDOf(t *testing.T, data []byte) string {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("message %q: %v", data, err)
	}
	return m.Header.Get("Message-ID")
}
