package delivery

import (
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// The queue's fault matrix: the fake Exchange cuts the worker's connection
// once at each step of the dialogue. A queued message is never lost: it is
// delivered on the first attempt (a cut before DATA is survived on a fresh
// session) or on the next one. It is never duplicated silently: where the
// cut came after the message may have reached the upstream (mid-DATA,
// after the final dot) the next attempt is counted as a possible
// duplicate, and the fake holds a second copy only where it had in fact
// kept the first (after-dot-kept).
func TestQueueFaultMatrix(t *testing.T) {
	for _, tc := range []struct {
		fault fakems.SMTPFault
		// deferred: the first attempt fails and the second delivers;
		// maybeTwice: that second attempt is counted a possible
		// duplicate; copies: what the fake ends up holding.
		deferred, maybeTwice bool
		copies               int
	}{
		{fault: fakems.FaultBeforeGreeting, copies: 1},
		{fault: fakems.FaultDuringSTARTTLS, copies: 1},
		{fault: fakems.FaultTLSHandshake, copies: 1},
		{fault: fakems.FaultAfterAuth, copies: 1},
		{fault: fakems.FaultAfterMail, copies: 1},
		{fault: fakems.FaultAfterRcpt, copies: 1},
		{fault: fakems.FaultMidData, deferred: true, maybeTwice: true, copies: 1},
		{fault: fakems.FaultAfterDot, deferred: true, maybeTwice: true, copies: 1},
		{fault: fakems.FaultAfterDotKept, deferred: true, maybeTwice: true, copies: 2},
	} {
		t.Run(string(tc.fault), func(t *testing.T) {
			fake, tgt, cred := fakeUpstream(t)
			w := newQueueWorld(t, queueOptions{target: tgt, cred: cred})
			fake.FailSMTP(tc.fault, 1)
			id := queued(t, w.queue, testMailbox, []string{recipient}, nil, testMessage)
			if tc.deferred {
				c := w.obs.wait(t, "the first attempt deferred", func(c queueCounts) bool { return c.Deferred == 1 })
				if want := "deferred " + ReasonConnectionLost; len(c.Reasons) != 1 || c.Reasons[0] != want {
					t.Errorf("attempts reported %q, want [%q]", c.Reasons, want)
				}
				if env := getEnvelope(t, w.spool, id); env.InFlight.IsZero() {
					t.Errorf("after a cut at or after DATA the message is not marked in flight: %+v", env)
				}
				w.clock.advance(time.Minute)
				w.queue.wake()
			}
			c := w.obs.wait(t, "the message delivered", func(c queueCounts) bool { return c.Delivered == 1 })
			wantGone(t, w.spool, id)
			if want := map[bool]int{true: 1}[tc.maybeTwice]; c.Duplicates != want {
				t.Errorf("%d attempts counted as possible duplicates, want %d", c.Duplicates, want)
			}
			msgs := fake.Messages()
			if len(msgs) != tc.copies {
				t.Fatalf("the fake holds %d copies, want %d", len(msgs), tc.copies)
			}
			for _, m := range msgs {
				if string(m.Data) != testMessage {
					t.Errorf("the fake got %q, want the queued message", m.Data)
				}
			}
		})
	}
}
