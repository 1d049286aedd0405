package delivery

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// logRecorder is an Observer with a message log: it keeps every record,
// and what the Queue reports, for tests to wait on.
type logRecorder struct {
	*queueRecorder
	mu      sync.Mutex
	records []MessageRecord
	changed chan struct{}
}

func newLogRecorder() *logRecorder {
	return &logRecorder{queueRecorder: newQueueRecorder(), changed: make(chan struct{})}
}

func (r *logRecorder) MessageDone(a events.Account, rec MessageRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a != testAccount {
		panic("MessageDone for account " + a.Name)
	}
	r.records = append(r.records, rec)
	close(r.changed)
	r.changed = make(chan struct{})
}

// wait returns the records once there are n, failing the test after
// testLimit.
func (r *logRecorder) wait(t *testing.T, n int) []MessageRecord {
	t.Helper()
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	for {
		r.mu.Lock()
		recs, changed := append([]MessageRecord(nil), r.records...), r.changed
		r.mu.Unlock()
		if len(recs) >= n {
			return recs
		}
		select {
		case <-changed:
		case <-limit.C:
			t.Fatalf("waiting for %d message log records: not within %v; got %+v", n, testLimit, recs)
		}
	}
}

// Direct logs a delivered message with its Message-ID, the recipients the
// upstream took, its size and the upstream's 250 with Exchange's queue id;
// a message that did not arrive whole is logged failed.
func TestMessageLogDirect(t *testing.T) {
	w := newWorld(t)
	obs := newLogRecorder()
	d := NewDirect(testAccount, w.sender, obs, DirectOptions{MaxWait: MailboxMaxWait, SharedSender: true})
	ctx := testCtx(t)

	tx := begin(t, ctx, d, w.cred)
	for _, to := range []string{recipient, "accounts@example.net"} {
		if err := tx.Rcpt(to, nil); err != nil {
			t.Fatalf("Rcpt: %v", err)
		}
	}
	acc, err := tx.Data(iotest.OneByteReader(strings.NewReader(testMessage)))
	if err != nil {
		t.Fatalf("Data: %v", err)
	}
	rec := obs.wait(t, 1)[0]
	if rec.Outcome != OutcomeDelivered || rec.From != testMailbox || rec.Rcpts != 2 ||
		strings.Join(rec.Recipients, ",") != recipient+",accounts@example.net" ||
		rec.MessageID != "<inv-2024-03@contoso.com>" || rec.Bytes != int64(len(testMessage)) ||
		rec.Reply != "250 "+acc.Reply || rec.QueueID != "" || rec.Time.IsZero() {
		t.Errorf("delivered message logged as %+v (accepted %q)", rec, acc.Reply)
	}
	if !strings.HasPrefix(rec.Reply, "250 2.0.0 OK <inv-2024-03@contoso.com> [Hostname=") {
		t.Errorf("reply %q lacks Exchange's queue id", rec.Reply)
	}

	tx = begin(t, ctx, d, w.cred)
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	_, err = tx.Data(io.MultiReader(strings.NewReader(testMessage[:40]), iotest.ErrReader(errors.New("the app went away"))))
	if err == nil {
		t.Fatal("Data of a message that did not arrive succeeded")
	}
	rec = obs.wait(t, 2)[1]
	if rec.Outcome != OutcomeFailed || rec.Bytes != 40 || rec.MessageID != "" ||
		rec.Reply != "the app's message did not arrive whole; nothing was delivered" {
		t.Errorf("a message that did not arrive logged as %+v", rec)
	}
}

// A message the upstream refuses at the final dot is logged refused with
// the upstream's reply.
func TestMessageLogDirectRefused(t *testing.T) {
	tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
		if !login(t, c, br) || !expect(t, br, "MAIL FROM:") {
			return
		}
		reply(t, c, "250 2.1.0 Sender OK")
		if !expect(t, br, "RCPT TO:") {
			return
		}
		reply(t, c, "250 2.1.5 Recipient OK")
		if !expect(t, br, "DATA") {
			return
		}
		reply(t, c, "354 Start mail input; end with <CRLF>.<CRLF>")
		if readMessage(t, br) {
			reply(t, c, "554 5.6.211 Invalid MIME Content: Single text value size (32768) limit exceeded")
			expect(t, br, "QUIT") // at Close: the session was parked
		}
	})
	s := NewSender(tgt)
	t.Cleanup(s.Close)
	obs := newLogRecorder()
	d := NewDirect(testAccount, s, obs)
	tx := begin(t, testCtx(t), d, &staticCreds{token: "scripted-token"})
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	if _, err := tx.Data(strings.NewReader(testMessage)); err == nil {
		t.Fatal("Data succeeded against a 554")
	}
	rec := obs.wait(t, 1)[0]
	if rec.Outcome != OutcomeRefused || rec.MessageID != "<inv-2024-03@contoso.com>" || rec.Rcpts != 1 ||
		rec.Reply != "554 5.6.211 Invalid MIME Content: Single text value size (32768) limit exceeded" {
		t.Errorf("refused message logged as %+v", rec)
	}
}

// newLoggedQueue is a Queue of testAccount over tgt whose Observer keeps a
// message log (the Direct below it has the same Observer, as in the
// relay).
func newLoggedQueue(t *testing.T, w *queueWorld, tgt queueOptions, obs *logRecorder) *Queue {
	t.Helper()
	sender := NewSender(tgt.target, SenderOptions{Logger: testLogger(t)})
	q := NewQueue(QueueOptions{
		Account: testAccount, Spool: w.spool,
		Sender:       NewDirect(testAccount, sender, obs, DirectOptions{MaxWait: testLimit / 2}),
		Credentials:  tgt.cred,
		MaxSize:      1 << 20,
		ReportingMTA: "relay.test",
		Logger:       testLogger(t),
		Observer:     obs,
		Now:          w.clock.Now,
	})
	q.Start()
	t.Cleanup(q.Close)
	return q
}

func loggedQueueWorld(t *testing.T) *queueWorld {
	t.Helper()
	w := &queueWorld{dir: t.TempDir(), clock: newTestClock()}
	sp, _, err := spool.Open(w.dir, spool.Options{Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	w.spool = sp
	return w
}

// A queued message is logged twice: queued at DATA with its spool id, and
// delivered with the upstream's 250 — once, not again by the Direct the
// Queue delivers through.
func TestMessageLogQueueDelivered(t *testing.T) {
	fake, tgt, cred := fakeUpstream(t)
	w := loggedQueueWorld(t)
	obs := newLogRecorder()
	q := newLoggedQueue(t, w, queueOptions{target: tgt, cred: cred}, obs)
	id := queued(t, q, testMailbox, []string{recipient}, nil, testMessage)
	if _, err := fake.WaitMessages(testCtx(t), 1); err != nil {
		t.Fatal(err)
	}
	obs.queueRecorder.wait(t, "delivered", func(c queueCounts) bool { return c.Delivered == 1 })
	recs := obs.wait(t, 2)
	if len(recs) != 2 {
		t.Fatalf("message log %+v, want queued and delivered only", recs)
	}
	if r := recs[0]; r.Outcome != OutcomeQueued || r.QueueID != id || r.Reply != "250 2.0.0 OK queued as "+id ||
		r.MessageID != "<inv-2024-03@contoso.com>" || r.Rcpts != 1 || r.Recipients[0] != recipient ||
		r.Bytes != int64(len(testMessage)) || !r.Time.Equal(w.clock.Now()) {
		t.Errorf("queued logged as %+v", r)
	}
	if r := recs[1]; r.Outcome != OutcomeDelivered || r.QueueID != id ||
		!strings.HasPrefix(r.Reply, "250 2.0.0 OK <inv-2024-03@contoso.com> [Hostname=") || r.From != testMailbox {
		t.Errorf("delivered logged as %+v", r)
	}
}

// An attempt that cannot reach the upstream is logged deferred with the
// reason; a permanent refusal is logged failed with the upstream's reply.
func TestMessageLogQueueDeferredAndFailed(t *testing.T) {
	w := loggedQueueWorld(t)
	obs := newLogRecorder()
	q := newLoggedQueue(t, w, queueOptions{target: unreachable(t), cred: &staticCreds{token: "t"}}, obs)
	// The null sender: no notification follows the failure.
	id := queued(t, q, "", []string{recipient}, nil, testMessage)
	obs.queueRecorder.wait(t, "deferred", func(c queueCounts) bool { return c.Deferred == 1 })
	recs := obs.wait(t, 2)
	if r := recs[1]; r.Outcome != OutcomeDeferred || r.QueueID != id ||
		!strings.HasPrefix(r.Reply, "the upstream server was not available") {
		t.Errorf("deferred logged as %+v", r)
	}
	q.Close()

	tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
		if !login(t, c, br) || !expect(t, br, "MAIL FROM:") {
			return
		}
		reply(t, c, "550 5.7.60 SMTP; Client does not have permissions to send as this sender")
		expect(t, br, "QUIT")
	})
	obs2 := newLogRecorder()
	w.clock.advance(2 * minBackoff)
	newLoggedQueue(t, w, queueOptions{target: tgt, cred: &staticCreds{token: "t"}}, obs2)
	obs2.queueRecorder.wait(t, "failed", func(c queueCounts) bool { return c.Failed == 1 })
	r := obs2.wait(t, 1)[0]
	if r.Outcome != OutcomeFailed || r.QueueID != id ||
		r.Reply != "550 5.7.60 SMTP; Client does not have permissions to send as this sender" {
		t.Errorf("failed logged as %+v", r)
	}
}

// The sniffer's Message-ID (spool.MessageID) is read wherever the header has it, folded or
// not, and nothing of the body; the sniffer keeps only the header.
func TestHeaderMessageID(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{testMessage, "<inv-2024-03@contoso.com>"},
		{"Subject: x\nmessage-id:\n <folded@example.com>\n\nbody", "<folded@example.com>"},
		{"Subject: x\r\n\r\nMessage-ID: <in-body@example.com>\r\n", ""},
		{"Message-ID: <a\x01b@example.com>\r\n\r\n", ""},
		{"Subject: no id\r\n\r\n", ""},
		{"Message-ID: <at-the-end@example.com>", "<at-the-end@example.com>"},
	} {
		h := &headerSniffer{r: iotest.HalfReader(strings.NewReader(tc.msg))}
		if _, err := io.Copy(io.Discard, h); err != nil {
			t.Fatal(err)
		}
		if got := h.messageID(); got != tc.want {
			t.Errorf("%q: Message-ID %q, want %q", tc.msg, got, tc.want)
		}
		if h.n != int64(len(tc.msg)) {
			t.Errorf("%q: counted %d bytes", tc.msg, h.n)
		}
	}
	big := strings.Repeat("X-Filler: "+strings.Repeat("a", 90)+"\r\n", 2000) + "\r\nbody"
	h := &headerSniffer{r: strings.NewReader(big)}
	io.Copy(io.Discard, h)
	if len(h.head) > headerScanLimit {
		t.Errorf("the sniffer kept %d bytes, more than %d", len(h.head), headerScanLimit)
	}
}
