package delivery

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// testMessage is dot-unstuffed with CRLF line ends, as the front end hands
// it over; its second body line begins with a dot, which must arrive as is.
const testMessage = "From: invoices@contoso.com\r\n" +
	"To: customer@example.net\r\n" +
	"Subject: March invoice\r\n" +
	"Message-ID: <inv-2024-03@contoso.com>\r\n" +
	"\r\n" +
	"Please find the invoice attached.\r\n" +
	". is where the dots are\r\n"

// begin opens a transaction from the mailbox, failing the test otherwise.
func begin(t *testing.T, ctx context.Context, d Delivery, cred upstream.Credentials) Tx {
	t.Helper()
	tx, err := d.Begin(ctx, cred, testMailbox, nil)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	return tx
}

// send relays testMessage to recipient in tx and checks the upstream's 250.
func send(t *testing.T, tx Tx) *Accepted {
	t.Helper()
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	acc, err := tx.Data(strings.NewReader(testMessage))
	if err != nil {
		t.Fatalf("Data: %v", err)
	}
	return acc
}

// wantMessages checks that the fake accepted exactly n copies of
// testMessage from the mailbox to recipient.
func wantMessages(t *testing.T, w *world, n int) {
	t.Helper()
	msgs := w.fake.Messages()
	if len(msgs) != n {
		t.Fatalf("the fake accepted %d messages, want %d", len(msgs), n)
	}
	for _, m := range msgs {
		if m.AuthUser != testMailbox || m.From != testMailbox || !slices.Equal(m.To, []string{recipient}) {
			t.Errorf("message from %q as %q to %v", m.From, m.AuthUser, m.To)
		}
		if string(m.Data) != testMessage {
			t.Errorf("message data %q, want %q", m.Data, testMessage)
		}
	}
}

func wantUpstreamError(t *testing.T, err error, kind upstream.Kind) *upstream.Error {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T), want *upstream.Error", err, err)
	}
	if ue.Kind != kind {
		t.Errorf("error kind %s, want %s: %v", ue.Kind, kind, err)
	}
	return ue
}

func wantLost(t *testing.T, err error, stage string) *LostError {
	t.Helper()
	var le *LostError
	if !errors.As(err, &le) {
		t.Fatalf("error %v (%T), want *LostError", err, err)
	}
	if le.Stage != stage {
		t.Errorf("lost at %q, want %q", le.Stage, stage)
	}
	return le
}

// Ready logs in once and parks the session; the next transaction reuses it
// and the message goes through with the fake's own 250 text; the session
// is parked again afterwards.
func TestReadyThenSend(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	if err := w.direct.Ready(ctx, w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	wantDials(t, w, 1)
	if n := w.cred.tokens.Load(); n != 1 {
		t.Errorf("Ready asked for %d tokens, want 1", n)
	}
	if !w.sender.hasIdle() {
		t.Fatal("Ready parked no session")
	}
	tx := begin(t, ctx, w.direct, w.cred)
	wantDials(t, w, 1)
	acc := send(t, tx)
	if !strings.HasPrefix(acc.Reply, "2.0.0 OK <inv-2024-03@contoso.com> [Hostname=") {
		t.Errorf("accepted with %q, want the fake's 250 text", acc.Reply)
	}
	if acc.Bytes != int64(len(testMessage)) {
		t.Errorf("accepted %d bytes, want %d", acc.Bytes, len(testMessage))
	}
	wantMessages(t, w, 1)
	if got := w.obs.sizes(); !slices.Equal(got, []int64{int64(len(testMessage))}) {
		t.Errorf("observed messages %v", got)
	}
	// Ready again, then another transaction: still the one session.
	if err := w.direct.Ready(ctx, w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	begin(t, ctx, w.direct, w.cred).Abort()
	wantDials(t, w, 1)
	if n := w.cred.invalidated.Load(); n != 0 {
		t.Errorf("token invalidated %d times", n)
	}
}

// Credentials that cannot give a token fail Ready and Begin as an
// *upstream.Error of the token's class, before anything is dialled, also
// when a session of another app waits parked (a password passthrough
// login is checked on every AUTH).
func TestTokenFailure(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	oe := &oauth.Error{Class: oauth.NeedsSignIn, Code: "invalid_grant", AADSTS: 700082, Reason: "the refresh token has expired"}
	bad := &staticCreds{err: oe}

	err := w.direct.Ready(ctx, bad)
	if ue := wantUpstreamError(t, err, upstream.NeedsSignIn); !errors.Is(ue, oe) {
		t.Errorf("error %v does not wrap the token error", err)
	}
	_, err = w.direct.Begin(ctx, bad, testMailbox, nil)
	wantUpstreamError(t, err, upstream.NeedsSignIn)
	wantDials(t, w, 0)

	if err := w.direct.Ready(ctx, w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	err = w.direct.Ready(ctx, bad)
	if ue := wantUpstreamError(t, err, upstream.NeedsSignIn); !errors.Is(ue, oe) {
		t.Errorf("error %v does not wrap the token error", err)
	}
	transient := &staticCreds{err: &oauth.Error{Class: oauth.Transient, Reason: "the token endpoint did not answer in time"}}
	wantUpstreamError(t, w.direct.Ready(ctx, transient), upstream.Unavailable)
	wantDials(t, w, 1)
}

// A token the fake refuses (535 5.7.3) fails Ready and Begin as Refused
// with the fake's reply, the token is invalidated each time, and no
// session is kept.
func TestLoginRefused(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	bad := &staticCreds{token: "not-a-token-the-fake-issued"}
	for i, step := range []func() error{
		func() error { return w.direct.Ready(ctx, bad) },
		func() error { _, err := w.direct.Begin(ctx, bad, testMailbox, nil); return err },
	} {
		ue := wantUpstreamError(t, step(), upstream.Refused)
		if ue.Reply == nil || ue.Reply.Code != 535 || ue.Reply.EnhancedCode != (smtp.EnhancedCode{5, 7, 3}) ||
			!strings.HasPrefix(ue.Reply.Message, "Authentication unsuccessful") {
			t.Errorf("reply %+v, want the fake's 535 5.7.3", ue.Reply)
		}
		if n := bad.invalidated.Load(); n != int32(i+1) {
			t.Errorf("token invalidated %d times, want %d", n, i+1)
		}
		if w.sender.hasIdle() {
			t.Error("a refused session was kept")
		}
	}
	wantDials(t, w, 2)
	w.link.waitEnded(t, 0, 1)
}

// A parked session the server closed is replaced at Begin by a new one,
// and the transaction goes through on it: the app never sees the dead one.
func TestDeadIdleSessionReplaced(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	if err := w.direct.Ready(ctx, w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	w.link.cut(t, 0)
	w.link.waitEnded(t, 0)
	tx := begin(t, ctx, w.direct, w.cred)
	wantDials(t, w, 2)
	send(t, tx)
	wantMessages(t, w, 1)
}

// A parked session the server ended with 421 (RFC 5321 §3.8: a server
// that closes an idle session says 421 first, and the relay reads it as
// the reply to its MAIL) is replaced at Begin as well.
func TestIdle421Replaced(t *testing.T) {
	tgt := scripted(t,
		func(c net.Conn, br *bufio.Reader) {
			if !login(t, c, br) {
				return
			}
			reply(t, c, "421 4.4.2 scripted Error: timeout exceeded")
			expect(t, br, "MAIL FROM:")
		},
		func(c net.Conn, br *bufio.Reader) {
			if !login(t, c, br) || !expect(t, br, "MAIL FROM:<"+testMailbox+">") {
				return
			}
			reply(t, c, "250 2.1.0 Sender OK")
			if !expect(t, br, "RSET") {
				return
			}
			reply(t, c, "250 2.0.0 Resetting")
			if expect(t, br, "QUIT") {
				reply(t, c, "221 2.0.0 Bye")
			}
		})
	var dials *atomic.Int32
	tgt.Dialer, dials = countingDialer()
	sender := NewSender(tgt)
	d := NewDirect(testAccount, sender, nil)
	t.Cleanup(sender.Close)
	ctx := testCtx(t)
	cred := &staticCreds{token: "scripted-token"}
	if err := d.Ready(ctx, cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	begin(t, ctx, d, cred).Abort()
	if n := dials.Load(); n != 2 {
		t.Errorf("upstream connections dialled: %d, want 2", n)
	}
	sender.Close() // QUIT on the second, while its script waits for it
}

// A recipient the upstream refuses is its reply, as is, and the
// transaction goes on; Abort resets it upstream and parks the session,
// which the next transaction gets without a new login, with nothing of
// the aborted one left.
func TestRcptRefusedThenAbort(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	err := tx.Rcpt(recipient, &smtp.RcptOptions{Notify: []smtp.DSNNotify{"BOGUS"}})
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 501 || se.EnhancedCode != (smtp.EnhancedCode{5, 5, 4}) {
		t.Fatalf("Rcpt with a malformed NOTIFY: %v, want the upstream's 501 5.5.4", err)
	}
	if err := tx.Rcpt("other@example.net", nil); err != nil {
		t.Fatalf("Rcpt after a refused one: %v", err)
	}
	tx.Abort()
	if !w.sender.hasIdle() {
		t.Fatal("Abort did not park the session")
	}
	send(t, begin(t, ctx, w.direct, w.cred))
	wantDials(t, w, 1)
	wantMessages(t, w, 1) // to recipient only: the aborted RCPT is gone
}

// A session whose RSET is not answered 250 (here 421: the server is
// closing it) is closed at Abort, not parked: its state upstream is not
// known, and a parked one would fail the next transaction.
func TestAbortRefusedDrops(t *testing.T) {
	tgt := scripted(t, func(c net.Conn, br *bufio.Reader) {
		if !login(t, c, br) || !expect(t, br, "MAIL FROM:") {
			return
		}
		reply(t, c, "250 2.1.0 Sender OK")
		if expect(t, br, "RSET") {
			reply(t, c, "421 4.3.2 Service not available, closing transmission channel")
			waitClosed(t, c)
		}
	})
	s := NewSender(tgt)
	d := NewDirect(testAccount, s, nil)
	t.Cleanup(s.Close)
	begin(t, testCtx(t), d, &staticCreds{token: "scripted-token"}).Abort()
	if s.hasIdle() {
		t.Error("a session whose RSET failed was parked")
	}
}

// When reading the app's message fails, Data returns the *ReadError, the
// upstream never gets the final dot (so no message), and the session,
// left inside DATA, is closed rather than reused.
func TestDataReadError(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	errApp := errors.New("the app went away")
	_, err := tx.Data(io.MultiReader(strings.NewReader(testMessage[:40]), iotest.ErrReader(errApp)))
	var re *smtpclient.ReadError
	if !errors.As(err, &re) || !errors.Is(err, errApp) {
		t.Fatalf("Data: %v (%T), want a *smtpclient.ReadError of the app's error", err, err)
	}
	var le *LostError
	if errors.As(err, &le) {
		t.Errorf("an app failure reported as a lost upstream: %v", err)
	}
	w.link.waitEnded(t, 0)
	if w.sender.hasIdle() {
		t.Error("the session left inside DATA was kept")
	}
	send(t, begin(t, ctx, w.direct, w.cred))
	wantDials(t, w, 2)
	wantMessages(t, w, 1) // only the second
	if got := w.obs.sizes(); len(got) != 1 {
		t.Errorf("observed messages %v, want only the second", got)
	}
}

// An upstream lost in the middle of DATA is a *LostError at DATA, no
// message is accepted, and the next transaction logs in anew.
func TestLostDuringData(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	tx := begin(t, ctx, w.direct, w.cred)
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	w.fake.DropNextDataAfter(20)
	_, err := tx.Data(strings.NewReader(testMessage))
	wantLost(t, err, "DATA")
	if n := len(w.fake.Messages()); n != 0 {
		t.Errorf("the fake accepted %d messages", n)
	}
	if _, err := tx.Data(strings.NewReader(testMessage)); err == nil {
		t.Error("Data on a finished transaction succeeded")
	}
	w.link.waitEnded(t, 0)
	begin(t, ctx, w.direct, w.cred).Abort()
	wantDials(t, w, 2)
	if got := w.obs.sizes(); len(got) != 0 {
		t.Errorf("observed messages %v", got)
	}
}

// Close ends the parked sessions and leaves the one in use alone; that
// transaction finishes, and its session is closed when it comes back,
// not kept. Sessions are handed out most recently parked first.
func TestCloseQuitsIdle(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	if err := w.direct.Ready(ctx, w.cred); err != nil { // link connection 0
		t.Fatalf("Ready: %v", err)
	}
	tx0 := begin(t, ctx, w.direct, w.cred)
	tx1 := begin(t, ctx, w.direct, w.cred) // connection 1
	wantDials(t, w, 2)
	tx0.Abort()
	tx1.Abort() // parked last
	tx := begin(t, ctx, w.direct, w.cred)
	wantDials(t, w, 2)

	w.sender.Close()
	w.link.waitEnded(t, 0)
	if open := w.link.open(); !slices.Equal(open, []int{1}) {
		t.Fatalf("open connections %v after Close, want [1]: the one in use, parked last", open)
	}
	send(t, tx)
	wantMessages(t, w, 1)
	w.link.waitEnded(t, 1)
	if w.sender.hasIdle() {
		t.Error("a session released after Close was kept")
	}
}

// A session parked for idleTimeout is closed and not handed out; one
// parked for less is reused. Only the Sender's clock decides here.
func TestIdleExpiryAtBegin(t *testing.T) {
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock})
	ctx := testCtx(t)
	if err := w.direct.Ready(ctx, w.cred); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	clock.advance(idleTimeout - time.Second)
	begin(t, ctx, w.direct, w.cred).Abort() // parked again, from now
	wantDials(t, w, 1)
	clock.advance(idleTimeout)
	begin(t, ctx, w.direct, w.cred).Abort()
	wantDials(t, w, 2)
	w.link.waitEnded(t, 0)
}

// The idle timer closes parked sessions on its own, each when its own
// idle time is up (the timer re-arms for the next one), with no
// transaction to notice.
func TestIdleExpiryTimer(t *testing.T) {
	const idle = 20 * time.Millisecond
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock})
	w.sender.idleTimeout = idle
	ctx := testCtx(t)
	tx0 := begin(t, ctx, w.direct, w.cred)
	tx1 := begin(t, ctx, w.direct, w.cred)
	tx0.Abort() // parked at 0; the timer is armed for 20ms
	clock.advance(15 * time.Millisecond)
	tx1.Abort() // parked at 15ms

	clock.advance(10 * time.Millisecond) // 25ms: connection 0 has had its time
	w.link.waitEnded(t, 0)
	if open := w.link.open(); !slices.Equal(open, []int{1}) {
		t.Fatalf("open connections %v, want [1]: parked 10ms of 20 ago", open)
	}
	clock.advance(15 * time.Millisecond) // 40ms
	w.link.waitEnded(t, 1)
	if w.sender.hasIdle() {
		t.Error("an expired session is still parked")
	}
	if n := clock.pending(); n != 0 {
		t.Errorf("%d timers armed with no session parked and nobody waiting", n)
	}
	begin(t, ctx, w.direct, w.cred).Abort()
	wantDials(t, w, 3)
}

// Cancelling the transaction's context interrupts Data while it waits on
// the upstream (here, for the reply to the final dot, which never comes):
// Data returns at once with the lost upstream, and the session is closed.
func TestDataCancelledWaitingForUpstream(t *testing.T) {
	gotDot := make(chan struct{})
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
		if readMessage(t, br) {
			close(gotDot)
			waitClosed(t, c) // and never answer
		}
	})
	sender := NewSender(tgt)
	d := NewDirect(testAccount, sender, nil)
	t.Cleanup(sender.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tx := begin(t, ctx, d, &staticCreds{token: "scripted-token"})
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := tx.Data(strings.NewReader(testMessage))
		errc <- err
	}()
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	select {
	case <-gotDot:
	case err := <-errc:
		t.Fatalf("Data returned before the upstream had the message: %v", err)
	case <-limit.C:
		t.Fatal("the upstream did not get the message")
	}
	cancel()
	select {
	case err := <-errc:
		wantLost(t, err, "DATA")
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Data: %v, want it interrupted by the cancelled context", err)
		}
	case <-limit.C:
		<-errc // the script's deadline ends it; join before failing
		t.Fatal("cancelling the context did not interrupt Data")
	}
}

// An app whose message stops coming and whose reader the front end ends
// when it closes (the session's context cancelled, the app's connection
// closed) gets a *ReadError from Data; the upstream never gets the final
// dot, and the session is not reused.
func TestDataCancelledWaitingForApp(t *testing.T) {
	w := newWorld(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	tx := begin(t, ctx, w.direct, w.cred)
	if err := tx.Rcpt(recipient, nil); err != nil {
		t.Fatalf("Rcpt: %v", err)
	}
	r := &stepReader{first: []byte(testMessage[:40]), blocked: make(chan struct{}), release: ctx.Done(), after: net.ErrClosed}
	errc := make(chan error, 1)
	go func() {
		_, err := tx.Data(r)
		errc <- err
	}()
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	select {
	case <-r.blocked:
	case err := <-errc:
		t.Fatalf("Data returned before the reader blocked: %v", err)
	case <-limit.C:
		t.Fatal("Data never read the message")
	}
	cancel()
	select {
	case err := <-errc:
		var re *smtpclient.ReadError
		if !errors.As(err, &re) || !errors.Is(err, net.ErrClosed) {
			t.Errorf("Data: %v (%T), want the app's *smtpclient.ReadError", err, err)
		}
	case <-limit.C:
		t.Fatal("Data did not return once the reader ended")
	}
	w.link.waitEnded(t, 0)
	if n := len(w.fake.Messages()); n != 0 {
		t.Errorf("the fake accepted %d messages", n)
	}
	if w.sender.hasIdle() {
		t.Error("the session left inside DATA was kept")
	}
}
