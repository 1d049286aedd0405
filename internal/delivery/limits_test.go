package delivery

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// limits returns config.DefaultLimits() changed by set.
func limits(set func(*config.Limits)) config.Limits {
	l := config.DefaultLimits()
	set(&l)
	return l
}

// wantReply checks that err is exactly the SMTP reply code, enhanced, text.
func wantReply(t *testing.T, err error, code int, enhanced smtp.EnhancedCode, text string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T), want the reply %d %v %q", err, err, code, enhanced, text)
	}
	if se.Code != code || se.EnhancedCode != enhanced || se.Message != text {
		t.Fatalf("reply %d %v %q, want %d %v %q", se.Code, se.EnhancedCode, se.Message, code, enhanced, text)
	}
}

// sendTo relays testMessage to rcpts in tx and checks the upstream's 250.
func sendTo(t *testing.T, tx Tx, rcpts ...string) {
	t.Helper()
	for _, r := range rcpts {
		if err := tx.Rcpt(r, nil); err != nil {
			t.Fatalf("Rcpt %s: %v", r, err)
		}
	}
	if _, err := tx.Data(strings.NewReader(testMessage)); err != nil {
		t.Fatalf("Data: %v", err)
	}
}

// result is what a Begin run on its own goroutine returned.
type result struct {
	tx  Tx
	err error
}

// goBegin runs a Begin on its own goroutine, joined at cleanup.
func goBegin(t *testing.T, ctx context.Context, d Delivery, cred upstream.Credentials) <-chan result {
	t.Helper()
	c := make(chan result, 1)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Go(func() {
		tx, err := d.Begin(ctx, cred, testMailbox, nil)
		c <- result{tx, err}
	})
	return c
}

// receive waits for a Begin run by goBegin.
func receive(t *testing.T, c <-chan result) result {
	t.Helper()
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	select {
	case r := <-c:
		return r
	case <-limit.C:
		t.Fatalf("Begin did not return within %v", testLimit)
	}
	return result{}
}

// notYet checks that a Begin run by goBegin is still waiting. It can miss
// a Begin about to return, never report one still waiting: the test
// checks that the Begin returns later, when it should.
func notYet(t *testing.T, c <-chan result) {
	t.Helper()
	select {
	case r := <-c:
		t.Fatalf("Begin returned while it should wait: %v", r.err)
	default:
	}
}

// Ten messages at once against Connections=3 and a fake that answers a
// fourth connection 432: never more than three sessions, all ten
// delivered, and the fake never had to refuse one. Seven of the ten wait
// for a session while the first three hold theirs.
func TestConnectionsLimit(t *testing.T) {
	w := newWorldWith(t, worldOptions{fake: fakems.Options{SMTPLimits: true}, clock: newTestClock()})
	ctx := testCtx(t)
	const n = 10
	release := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			tx, err := w.direct.Begin(ctx, w.cred, testMailbox, nil)
			if err != nil {
				errs <- fmt.Errorf("Begin: %w", err)
				return
			}
			<-release
			if err := tx.Rcpt(recipient, nil); err != nil {
				errs <- fmt.Errorf("Rcpt: %w", err)
				return
			}
			if _, err := tx.Data(strings.NewReader(testMessage)); err != nil {
				errs <- fmt.Errorf("Data: %w", err)
			}
		})
	}
	st := waitStats(t, w.sender, "7 messages waiting for a session", func(st Stats) bool {
		return st.WaitingSession == n-3 && st.InUse == 3
	})
	if st.Open != 3 {
		t.Errorf("%d sessions open while seven wait, want 3", st.Open)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantMessages(t, w, n)
	if got := w.dials.Load(); got > 3 {
		t.Errorf("upstream connections dialled: %d, want at most 3", got)
	}
	st = w.sender.Stats()
	if st.ExchangeLimitReplies != 0 || st.LimitReplies != 0 {
		t.Errorf("limit replies: %d from the fake, %d from the relay; want none", st.ExchangeLimitReplies, st.LimitReplies)
	}
	if st.Waits < n-3 {
		t.Errorf("%d waits counted, want at least %d", st.Waits, n-3)
	}
}

// With every connection busy, Ready does not open another: the sessions
// in use show the mailbox's logins work, and only the token is asked for.
func TestReadyWithinConnections(t *testing.T) {
	w := newWorldWith(t, worldOptions{limits: limits(func(l *config.Limits) { l.Connections = 1 }), clock: newTestClock()})
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	tokens := w.cred.tokens.Load()
	if err := w.direct.Ready(ctx, w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	wantDials(t, w, 1)
	if n := w.cred.tokens.Load() - tokens; n != 1 {
		t.Errorf("Ready asked for %d tokens, want 1", n)
	}
	send(t, tx)
}

// 30 messages a minute on the Sender's clock: the 31st waits until the
// first one's minute has passed, then goes through.
func TestPaceWaitsForTheWindow(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock})
	ctx := testCtx(t)
	for range 30 {
		send(t, begin(t, ctx, w.direct, w.cred))
	}
	c := goBegin(t, ctx, w.direct, w.cred)
	waitStats(t, w.sender, "the 31st waiting for the pace", func(st Stats) bool { return st.WaitingPace == 1 })
	clock.advance(paceWindow - time.Second)
	notYet(t, c)
	clock.advance(time.Second)
	r := receive(t, c)
	if r.err != nil {
		t.Fatalf("the 31st Begin: %v", r.err)
	}
	send(t, r.tx)
	wantMessages(t, w, 31)
	if st := w.sender.Stats(); st.Waits != 1 || st.WaitTime != paceWindow || st.PaceWaits != 1 || st.PaceWaitTime != paceWindow {
		t.Errorf("waits %d for %v (for the pace %d for %v), want 1 for %v, all for the pace",
			st.Waits, st.WaitTime, st.PaceWaits, st.PaceWaitTime, paceWindow)
	}
}

// A message that would wait longer than max_wait gets 451 4.7.0 in plain
// words with the limits in force, and never reaches the upstream.
func TestPaceMaxWait(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock, limits: limits(func(l *config.Limits) { l.MaxWait = 30 * time.Second })})
	ctx := testCtx(t)
	for range 30 {
		send(t, begin(t, ctx, w.direct, w.cred))
	}
	c := goBegin(t, ctx, w.direct, w.cred)
	waitStats(t, w.sender, "the 31st waiting for the pace", func(st Stats) bool { return st.WaitingPace == 1 })
	clock.advance(30 * time.Second)
	r := receive(t, c)
	wantReply(t, r.err, 451, smtp.EnhancedCode{4, 7, 0},
		"invoices@contoso.com is at its sending limit (30 messages a minute, 3 connections); try again later")
	wantMessages(t, w, 30)
	if st := w.sender.Stats(); st.LimitReplies != 1 || st.WaitingPace != 0 || st.MessagesInWindow != 30 {
		t.Errorf("stats %+v: want 1 limit reply, none waiting, 30 in the window", st)
	}
	// The account's own max wait (0) applies to its Direct: no wait at all.
	now := NewDirect(testAccount, w.sender, nil, DirectOptions{MaxWait: 0, SharedSender: true})
	_, err := now.Begin(ctx, w.cred, testMailbox, nil)
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0},
		"invoices@contoso.com is at its sending limit (30 messages a minute, 3 connections); try again later")
}

// A transaction aborted before DATA gives its slot in the pace back; a
// message sent, or refused at its final dot, keeps its slot.
func TestPaceRefunds(t *testing.T) {
	w := newWorldWith(t, worldOptions{
		fake:   fakems.Options{SMTPMaxMessageBytes: 1000},
		clock:  newTestClock(),
		limits: limits(func(l *config.Limits) { l.MessagesPerMinute = 2; l.MaxWait = 0 }),
	})
	ctx := testCtx(t)
	full := func() {
		t.Helper()
		_, err := w.direct.Begin(ctx, w.cred, testMailbox, nil)
		wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0},
			"invoices@contoso.com is at its sending limit (2 messages a minute, 3 connections); try again later")
	}
	a := begin(t, ctx, w.direct, w.cred)
	b := begin(t, ctx, w.direct, w.cred)
	full()
	a.Abort()
	c := begin(t, ctx, w.direct, w.cred) // a's slot
	send(t, b)
	full()
	if err := c.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	_, err := c.Data(strings.NewReader(testMessage + strings.Repeat("x", 1000) + "\r\n"))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 552 {
		t.Fatalf("Data of a message over SIZE: %v, want the fake's 552", err)
	}
	full()
	if st := w.sender.Stats(); st.MessagesInWindow != 2 {
		t.Errorf("%d messages in the window, want 2 (b sent, c refused)", st.MessagesInWindow)
	}
}

// A RCPT past recipients_per_message gets 452 4.5.3 (RFC 5321
// §4.5.3.1.10) without reaching the upstream, and the message goes to the
// ones accepted.
func TestRecipientsPerMessage(t *testing.T) {
	w := newWorldWith(t, worldOptions{limits: limits(func(l *config.Limits) { l.RecipientsPerMessage = 2 })})
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	for _, r := range []string{"a@example.net", "b@example.net"} {
		if err := tx.Rcpt(r, nil); err != nil {
			t.Fatalf("Rcpt %s: %v", r, err)
		}
	}
	wantReply(t, tx.Rcpt("c@example.net", nil), 452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients (at most 2 a message)")
	if _, err := tx.Data(strings.NewReader(testMessage)); err != nil {
		t.Fatalf("Data: %v", err)
	}
	msgs := w.fake.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].To, []string{"a@example.net", "b@example.net"}) {
		t.Fatalf("the fake got %+v, want one message to a and b", msgs)
	}
}

// The recipients of a rolling 24 hours: counted when their message is
// sent (not when it is aborted or refused), held while their transaction
// is open, refused with 451 4.7.0 and the time they free past the limit,
// and free again 24 hours later.
func TestRecipientsPerDay(t *testing.T) {
	clock := newTestClock()
	t0 := clock.Now()
	w := newWorldWith(t, worldOptions{
		fake:   fakems.Options{SMTPMaxMessageBytes: 1000},
		clock:  clock,
		limits: limits(func(l *config.Limits) { l.RecipientsPerDay = 5 }),
	})
	ctx := testCtx(t)
	wantCounts := func(today, pending int) {
		t.Helper()
		if st := w.sender.Stats(); st.RecipientsToday != today || st.PendingRecipients != pending {
			t.Fatalf("recipients today %d, pending %d; want %d, %d", st.RecipientsToday, st.PendingRecipients, today, pending)
		}
	}
	const dailyAt9 = "invoices@contoso.com reached its daily recipient limit (5 recipients in 24 hours); " +
		"it frees at 2024-03-02 09:00 UTC; try again then"
	sendTo(t, begin(t, ctx, w.direct, w.cred), "a@example.net", "b@example.net", "c@example.net")
	wantCounts(3, 0)

	clock.advance(time.Minute)
	tx := begin(t, ctx, w.direct, w.cred)
	other := begin(t, ctx, w.direct, w.cred) // open at the same time
	for _, r := range []string{"d@example.net", "e@example.net"} {
		if err := tx.Rcpt(r, nil); err != nil {
			t.Fatalf("Rcpt %s: %v", r, err)
		}
	}
	wantCounts(3, 2)
	wantReply(t, other.Rcpt("f@example.net", nil), 451, smtp.EnhancedCode{4, 7, 0}, dailyAt9)
	tx.Abort()
	other.Abort()
	wantCounts(3, 0)

	// Refused at the final dot (over the fake's SIZE): not counted.
	tx = begin(t, ctx, w.direct, w.cred)
	if err := tx.Rcpt("d@example.net", nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	if _, err := tx.Data(strings.NewReader(testMessage + strings.Repeat("x", 1000) + "\r\n")); err == nil {
		t.Fatal("a message over SIZE was accepted")
	}
	wantCounts(3, 0)

	sendTo(t, begin(t, ctx, w.direct, w.cred), "d@example.net", "e@example.net")
	wantCounts(5, 0)
	// Full: Begin refuses at once (it frees long after any wait), before
	// anything goes upstream.
	_, err := w.direct.Begin(ctx, w.cred, testMailbox, nil)
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0}, dailyAt9)
	before := len(w.fake.Messages())

	clock.advance(t0.Add(dayWindow).Sub(clock.Now())) // the first three age out
	wantCounts(2, 0)
	sendTo(t, begin(t, ctx, w.direct, w.cred), "f@example.net", "g@example.net", "h@example.net")
	wantCounts(5, 0)
	if n := len(w.fake.Messages()); n != before+1 {
		t.Errorf("the fake has %d messages, want %d", n, before+1)
	}
	if st := w.sender.Stats(); st.LimitReplies != 2 {
		t.Errorf("%d limit replies, want 2", st.LimitReplies)
	}
}

// holdConnections logs in n sessions of the mailbox straight to the fake,
// as another client outside the relay would; they end at cleanup.
func holdConnections(t *testing.T, w *world, n int) []*smtpclient.Client {
	t.Helper()
	tgt := upstream.Target{
		Account: testAccount,
		Server:  config.Upstream{Addr: w.fake.SMTPAddr, TLS: config.TLSStartTLS},
		TLS:     &tls.Config{RootCAs: w.fake.CAPool},
	}
	var cs []*smtpclient.Client
	for range n {
		c, err := upstream.SMTP(testCtx(t), tgt, w.cred)
		if err != nil {
			t.Fatalf("another client's login: %v", err)
		}
		t.Cleanup(func() { quit(c) })
		cs = append(cs, c)
	}
	return cs
}

// Another client holds one of the mailbox's three connections: the
// relay's third login gets the fake's 432, the connection limit drops to
// two for the cool-down, and that message waits for one of the relay's
// sessions instead of failing. After the cool-down the limit is back.
func TestConcurrentLimitAtLogin(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{fake: fakems.Options{SMTPLimits: true}, clock: clock})
	holdConnections(t, w, 1)
	ctx := testCtx(t)
	a := begin(t, ctx, w.direct, w.cred)
	b := begin(t, ctx, w.direct, w.cred)
	c := goBegin(t, ctx, w.direct, w.cred)
	st := waitStats(t, w.sender, "the third message waiting after a 432", func(st Stats) bool {
		return st.WaitingSession == 1 && st.ExchangeLimitReplies == 1
	})
	if st.Effective.Connections != 2 || st.Open != 2 || !st.ConnectionsLoweredUntil.Equal(clock.Now().Add(connCoolDown)) || !st.BackingOff() {
		t.Fatalf("after the 432: %+v; want 2 connections, lowered for %v", st, connCoolDown)
	}
	send(t, a)
	r := receive(t, c)
	if r.err != nil {
		t.Fatalf("the third Begin: %v", r.err)
	}
	send(t, r.tx)
	send(t, b)
	wantMessages(t, w, 3)
	wantDials(t, w, 3) // two sessions, and the login refused

	clock.advance(connCoolDown)
	if st := w.sender.Stats(); st.Effective.Connections != 3 || st.BackingOff() {
		t.Errorf("after the cool-down: %+v; want 3 connections, nothing in force", st)
	}
}

// With all three connections held by another client, a message keeps
// trying to log in within its max wait (after loginRetryDelay each time)
// and then gets the relay's 451 4.7.0 — never Exchange's 432.
func TestConcurrentLimitMaxWait(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{
		fake:   fakems.Options{SMTPLimits: true},
		clock:  clock,
		limits: limits(func(l *config.Limits) { l.MaxWait = loginRetryDelay + 5*time.Second }),
	})
	holdConnections(t, w, 3)
	ctx := testCtx(t)
	c := goBegin(t, ctx, w.direct, w.cred)
	waitStats(t, w.sender, "a message waiting after a 432", func(st Stats) bool {
		return st.WaitingSession == 1 && st.ExchangeLimitReplies == 1
	})
	if st := w.sender.Stats(); st.Effective.Connections != 1 {
		t.Fatalf("effective connections %d, want 1: the relay held none of the three", st.Effective.Connections)
	}
	clock.advance(loginRetryDelay) // it tries again, and gets 432 again
	waitStats(t, w.sender, "the second 432", func(st Stats) bool {
		return st.WaitingSession == 1 && st.ExchangeLimitReplies == 2
	})
	// The next try would be after the wait ends: the wait ends first.
	clock.advance(5 * time.Second)
	r := receive(t, c)
	wantReply(t, r.err, 451, smtp.EnhancedCode{4, 7, 0},
		"invoices@contoso.com is at its sending limit (30 messages a minute, 1 connection); try again later")
	wantDials(t, w, 2)
	if st := w.sender.Stats(); st.Open != 0 || st.LimitReplies != 1 {
		t.Errorf("after the wait: %+v; want nothing open, one limit reply", st)
	}
}

// Exchange throttles a message at its final dot (the fake's 31st in a
// real minute, with the relay's own pace raised): the app of that message
// gets Exchange's reply as it is, and the next message waits for the
// pace to reopen a minute later instead of being sent into the throttle.
func TestThrottleReplyBlocksPace(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{
		fake:   fakems.Options{SMTPLimits: true},
		clock:  clock,
		limits: limits(func(l *config.Limits) { l.MessagesPerMinute = 1000; l.MaxWait = 10 * time.Second }),
	})
	ctx := testCtx(t)
	for range 30 {
		send(t, begin(t, ctx, w.direct, w.cred))
	}
	tx := begin(t, ctx, w.direct, w.cred)
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	_, err := tx.Data(strings.NewReader(testMessage))
	wantReply(t, err, 432, smtp.EnhancedCode{4, 3, 2},
		"STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=SN4PR0201CA0041.namprd02.prod.outlook.com]")
	st := w.sender.Stats()
	if !st.PaceBlockedUntil.Equal(clock.Now().Add(throttleBackOff)) || st.ExchangeLimitReplies != 1 {
		t.Fatalf("after the throttle: %+v; want the pace blocked for %v", st, throttleBackOff)
	}
	c := goBegin(t, ctx, w.direct, w.cred)
	waitStats(t, w.sender, "the next message waiting", func(st Stats) bool { return st.WaitingPace == 1 })
	clock.advance(10 * time.Second)
	wantReply(t, receive(t, c).err, 451, smtp.EnhancedCode{4, 7, 0},
		"invoices@contoso.com is at its sending limit (1000 messages a minute, 3 connections); try again later")
	clock.advance(throttleBackOff)
	if st := w.sender.Stats(); st.BackingOff() {
		t.Errorf("a minute later: %+v, want the pace open", st)
	}
	wantMessages(t, w, 30)
}

// Exchange's daily quota reply at the final dot reaches that app as it is;
// the next message is refused by the relay at once (451 4.7.0, when it
// frees: an hour, as the relay counted no recipient itself), without going
// upstream — the script would fail on a MAIL.
func TestQuotaReplyBlocksDay(t *testing.T) {
	const quotaReply = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception"
	tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
		if !login(t, c, br) {
			return
		}
		for _, step := range [][2]string{
			{"MAIL FROM:", "250 2.1.0 Sender OK"},
			{"RCPT TO:", "250 2.1.5 Recipient OK"},
			{"DATA", "354 Start mail input; end with <CRLF>.<CRLF>"},
		} {
			if !expect(t, br, step[0]) {
				return
			}
			reply(t, c, step[1])
		}
		if !readMessage(t, br) {
			return
		}
		reply(t, c, quotaReply)
		if expect(t, br, "QUIT") {
			reply(t, c, "221 2.0.0 Bye")
		}
	})
	clock := newTestClock()
	s := NewSender(tgt, SenderOptions{Clock: clock, Logger: testLogger(t)})
	d := NewDirect(testAccount, s, nil)
	t.Cleanup(d.Close)
	ctx := testCtx(t)
	cred := &staticCreds{token: "scripted-token"}
	tx := begin(t, ctx, d, cred)
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	_, err := tx.Data(strings.NewReader(testMessage))
	wantReply(t, err, 554, smtp.EnhancedCode{5, 2, 0}, strings.TrimPrefix(quotaReply, "554 5.2.0 "))
	_, err = d.Begin(ctx, cred, testMailbox, nil)
	wantReply(t, err, 451, smtp.EnhancedCode{4, 7, 0}, "invoices@contoso.com reached its daily recipient limit "+
		"(10000 recipients in 24 hours); it frees at 2024-03-01 10:00 UTC; try again then")
	if st := s.Stats(); !st.QuotaBlockedUntil.Equal(clock.Now().Add(quotaFallback)) {
		t.Errorf("quota blocked until %v, want %v", st.QuotaBlockedUntil, clock.Now().Add(quotaFallback))
	}
	if !s.hasIdle() {
		t.Error("the session that delivered Exchange's verdict was not kept")
	}
	d.Close() // QUIT, while the script waits for it
	clock.advance(quotaFallback)
	if st := s.Stats(); !st.QuotaBlockedUntil.IsZero() {
		t.Errorf("an hour later the quota is still blocked until %v", st.QuotaBlockedUntil)
	}
}

// A session logged in maxSessionAge ago is not reused: one that comes
// back from a transaction at that age is closed, not parked, and one that
// reaches it while parked is closed by the idle timer; each time the next
// message logs in anew (with a fresh token).
func TestMaxSessionAge(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock})
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred) // logged in at 0
	clock.advance(maxSessionAge)
	send(t, tx)
	w.link.waitEnded(t, 0)
	if w.sender.hasIdle() {
		t.Fatal("a session at its max age was parked")
	}
	tokens := w.cred.tokens.Load()
	tx = begin(t, ctx, w.direct, w.cred) // a new one, at 50m
	wantDials(t, w, 2)
	if n := w.cred.tokens.Load() - tokens; n != 1 {
		t.Errorf("the new login asked for %d tokens, want 1", n)
	}
	clock.advance(maxSessionAge - 30*time.Second)
	tx.Abort() // parked at 49m30s of its age
	clock.advance(30 * time.Second)
	w.link.waitEnded(t, 1)
	begin(t, ctx, w.direct, w.cred).Abort()
	wantDials(t, w, 3)
}

// SetLimits applies to the next Begin and to messages already waiting,
// and closes idle sessions over a lowered connection limit.
func TestSetLimits(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock, limits: limits(func(l *config.Limits) { l.MessagesPerMinute = 1; l.MaxWait = 0 })})
	ctx := testCtx(t)
	send(t, begin(t, ctx, w.direct, w.cred))
	if _, err := w.direct.Begin(ctx, w.cred, testMailbox, nil); err == nil {
		t.Fatal("a second message within the minute was not refused")
	}
	w.sender.SetLimits(limits(func(l *config.Limits) { l.MessagesPerMinute = 2; l.MaxWait = time.Minute }))
	send(t, begin(t, ctx, w.direct, w.cred))

	c := goBegin(t, ctx, w.direct, w.cred) // the third: waits
	waitStats(t, w.sender, "the third waiting", func(st Stats) bool { return st.WaitingPace == 1 })
	w.sender.SetLimits(limits(func(l *config.Limits) { l.MessagesPerMinute = 5 }))
	r := receive(t, c)
	if r.err != nil {
		t.Fatalf("the waiting Begin after the limit was raised: %v", r.err)
	}
	tx2 := begin(t, ctx, w.direct, w.cred)
	tx3 := begin(t, ctx, w.direct, w.cred)
	r.tx.Abort()
	tx2.Abort()
	tx3.Abort()
	if st := w.sender.Stats(); st.Idle != 3 {
		t.Fatalf("%d idle sessions, want 3", st.Idle)
	}
	w.sender.SetLimits(limits(func(l *config.Limits) { l.Connections = 1 }))
	w.link.waitEnded(t, 0, 1) // the oldest parked go first
	if st := w.sender.Stats(); st.Open != 1 || st.Effective.Connections != 1 {
		t.Errorf("after lowering to one connection: %+v", st)
	}
}

// Close wakes a message waiting for a session (ErrClosed at once); the
// transaction in progress finishes, and its session is closed after.
func TestCloseWakesWaiters(t *testing.T) {
	w := newWorldWith(t, worldOptions{clock: newTestClock(), limits: limits(func(l *config.Limits) { l.Connections = 1 })})
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	c := goBegin(t, ctx, w.direct, w.cred)
	waitStats(t, w.sender, "a message waiting for the session", func(st Stats) bool { return st.WaitingSession == 1 })
	w.direct.Close()
	if r := receive(t, c); !errors.Is(r.err, ErrClosed) {
		t.Fatalf("the waiting Begin after Close: %v, want ErrClosed", r.err)
	}
	send(t, tx)
	w.link.waitEnded(t, 0)
	if _, err := w.direct.Begin(ctx, w.cred, testMailbox, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Begin after Close: %v, want ErrClosed", err)
	}
}

// A Direct over a shared Sender leaves it open at Close: the mailbox's
// other accounts still send through it.
func TestSharedSenderOutlivesDirect(t *testing.T) {
	w := newWorldWith(t, worldOptions{clock: newTestClock()})
	ctx := testCtx(t)
	d := NewDirect(testAccount, w.sender, nil, DirectOptions{MaxWait: MailboxMaxWait, SharedSender: true})
	begin(t, ctx, d, w.cred).Abort()
	d.Close()
	send(t, begin(t, ctx, w.direct, w.cred))
	wantDials(t, w, 1)
}

// The scaled clock runs faster than the system's, and its timers fire on
// its time: once a timer of d has fired, at least d has passed on it.
func TestScaledClock(t *testing.T) {
	c := NewScaledClock(600)
	start := c.Now()
	fired := make(chan time.Time, 1)
	c.AfterFunc(time.Minute, func() { fired <- c.Now() })
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	select {
	case at := <-fired:
		if at.Sub(start) < time.Minute {
			t.Errorf("a timer of a minute fired after %v on the clock", at.Sub(start))
		}
	case <-limit.C:
		t.Fatalf("a minute at 600x did not pass within %v", testLimit)
	}
}

// A message waiting for a session stops waiting when its context ends
// (the server closing), with the context's error.
func TestWaitEndsWithContext(t *testing.T) {
	w := newWorldWith(t, worldOptions{clock: newTestClock(), limits: limits(func(l *config.Limits) { l.Connections = 1 })})
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := goBegin(t, wctx, w.direct, w.cred)
	waitStats(t, w.sender, "a message waiting for the session", func(st Stats) bool { return st.WaitingSession == 1 })
	cancel()
	if r := receive(t, c); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Begin after its context was cancelled: %v, want context.Canceled", r.err)
	}
	if st := w.sender.Stats(); st.WaitingSession != 0 || st.MessagesInWindow != 1 {
		t.Errorf("after the cancelled wait: %+v; want nobody waiting and its pace slot refunded", st)
	}
	send(t, tx)
}

// Ready when the mailbox's connections are all held elsewhere: the
// login's 432 is learned from, and the app's AUTH succeeds (its token
// came); its messages wait rather than fail at AUTH.
func TestReadyAfter432(t *testing.T) {
	w := newWorldWith(t, worldOptions{fake: fakems.Options{SMTPLimits: true}, clock: newTestClock()})
	holdConnections(t, w, 3)
	if err := w.direct.Ready(testCtx(t), w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if st := w.sender.Stats(); st.ExchangeLimitReplies != 1 || st.Effective.Connections != 1 || st.Open != 0 {
		t.Errorf("after Ready's 432: %+v; want it learned, one connection, none open", st)
	}
}
