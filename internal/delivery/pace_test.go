package delivery

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
)

// maxInAnyWindow returns the most of times (sorted) that fall in any
// window of length d: the window starting at each time is enough, since
// a window holding the most can be moved right until it starts at one.
func maxInAnyWindow(times []time.Time, d time.Duration) int {
	most := 0
	j := 0
	for i := range times {
		for j < len(times) && times[j].Sub(times[i]) < d {
			j++
		}
		most = max(most, j-i)
	}
	return most
}

// The window never lets more than its limit be sent in any paceWindow,
// whatever the arrivals, the lengths of the transactions and the
// refunds; and the time it names for the next free slot is one at which
// a slot is free, if nothing else happens first. Random arrivals, with
// transactions that finish or abort after random delays, for several
// seeds and limits.
func TestWindowProperty(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		limit := 1 + rng.IntN(30)
		// Each seed its own traffic: steps from bursts to a trickle,
		// and more or fewer arrivals than completions.
		step := []time.Duration{100 * time.Millisecond, time.Second, 4 * time.Second, 20 * time.Second}[rng.IntN(4)]
		arrive := 3 + rng.IntN(5) // of 10 operations
		var (
			w        window
			now      = time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC)
			inFlight int
			sent     []time.Time
			admitted int
		)
		for range 3000 {
			now = now.Add(time.Duration(rng.Int64N(int64(step))))
			switch op := rng.IntN(10); {
			case op < arrive: // an arrival
				ok, at := w.free(now, limit)
				if ok {
					w.take()
					inFlight++
					admitted++
					continue
				}
				if at.IsZero() {
					// Only the messages in flight can free a slot.
					if inFlight < limit {
						t.Fatalf("seed %d: no slot and no time for one, with %d of %d in flight", seed, inFlight, limit)
					}
					continue
				}
				probe := window{sent: slices.Clone(w.sent), inFlight: w.inFlight}
				if ok, _ := probe.free(at, limit); !ok {
					t.Fatalf("seed %d: the slot named free at %v is not", seed, at)
				}
				if !at.After(now) {
					t.Fatalf("seed %d: a slot named free at %v, not after now %v", seed, at, now)
				}
			case op < 9 && inFlight > 0: // one finishes: sent
				w.done(now)
				inFlight--
				sent = append(sent, now)
			case inFlight > 0: // one aborts before DATA
				w.refund()
				inFlight--
			}
		}
		if got := maxInAnyWindow(sent, paceWindow); got > limit {
			t.Fatalf("seed %d: %d messages sent in one window, limit %d", seed, got, limit)
		}
		if admitted < limit {
			t.Fatalf("seed %d: only %d admitted in all", seed, admitted)
		}
	}
}

// Through the Sender, against the fake over real sockets: random
// arrivals on the Sender's clock, up to three transactions open at once
// that finish or abort at random; a message either gets its slot at once
// (max_wait 0) or the 451 of the limit, and the messages the fake
// accepted never number more than messages_per_minute in any minute of
// the Sender's clock.
func TestSenderPaceProperty(t *testing.T) {
	const limit = 5
	clock := newTestClock()
	w := newWorldWith(t, worldOptions{clock: clock, limits: limits(func(l *config.Limits) {
		l.MessagesPerMinute = limit
		l.MaxWait = 0
	})})
	ctx := testCtx(t)
	rng := rand.New(rand.NewPCG(7, 11))
	var (
		open    []Tx
		sent    []time.Time
		refused int
	)
	pick := func() Tx {
		i := rng.IntN(len(open))
		tx := open[i]
		open = slices.Delete(open, i, i+1)
		return tx
	}
	for range 300 {
		clock.advance(time.Duration(rng.Int64N(int64(6 * time.Second))))
		switch op := rng.IntN(4); {
		case op < 2 && len(open) < 3:
			tx, err := w.direct.Begin(ctx, w.cred, testMailbox, nil)
			var se *smtp.SMTPError
			switch {
			case err == nil:
				if err := tx.Rcpt(recipient, nil); err != nil {
					t.Fatalf("Rcpt: %v", err)
				}
				open = append(open, tx)
			case errors.As(err, &se) && se.Code == 451 && strings.Contains(se.Message, "sending limit"):
				refused++
			default:
				t.Fatalf("Begin: %v", err)
			}
		case op == 2 && len(open) > 0:
			if _, err := pick().Data(strings.NewReader(testMessage)); err != nil {
				t.Fatalf("Data: %v", err)
			}
			sent = append(sent, clock.Now())
		case op == 3 && len(open) > 0:
			pick().Abort()
		}
	}
	for _, tx := range open {
		tx.Abort()
	}
	if got := maxInAnyWindow(sent, paceWindow); got > limit {
		t.Fatalf("%d messages sent in one minute, limit %d", got, limit)
	}
	if len(w.fake.Messages()) != len(sent) || refused == 0 || len(sent) < limit {
		t.Fatalf("%d sent (the fake has %d), %d refused: the run did not reach the limit", len(sent), len(w.fake.Messages()), refused)
	}
	t.Logf("%d sent, %d refused at the limit", len(sent), refused)
}

// The day's log: recipients count from their message's time, age out
// 24 hours after the newest in their bucket (never early), and the time
// named for freeing n is when n of them have aged out.
func TestDayLog(t *testing.T) {
	t0 := time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC)
	var d dayLog
	d.add(t0, 3)
	d.add(t0.Add(30*time.Second), 2) // same bucket
	d.add(t0.Add(2*time.Minute), 4)
	if d.counted != 9 || len(d.buckets) != 2 {
		t.Fatalf("counted %d in %d buckets, want 9 in 2", d.counted, len(d.buckets))
	}
	if got, want := d.freeAt(5), t0.Add(30*time.Second+dayWindow); !got.Equal(want) {
		t.Errorf("5 free at %v, want %v", got, want)
	}
	if got, want := d.freeAt(6), t0.Add(2*time.Minute+dayWindow); !got.Equal(want) {
		t.Errorf("6 free at %v, want %v", got, want)
	}
	if got := d.freeAt(10); !got.IsZero() {
		t.Errorf("10 of 9 free at %v, want never (zero)", got)
	}
	d.expire(t0.Add(dayWindow)) // the first bucket's newest is 30s younger
	if d.counted != 9 {
		t.Errorf("counted %d at 24h, want 9: a bucket ages out with its newest", d.counted)
	}
	d.expire(t0.Add(30*time.Second + dayWindow))
	if d.counted != 4 || !d.oldest().Equal(t0.Add(2*time.Minute+dayWindow)) {
		t.Errorf("counted %d, oldest frees %v", d.counted, d.oldest())
	}
}

// classify reads Exchange's limit replies, and nothing else as one.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		code     int
		enhanced smtp.EnhancedCode
		text     string
		want     exchangeLimit
	}{
		{432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.", limitConnections},
		{432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded", limitPace},
		{452, smtp.EnhancedCode{4, 3, 2}, "Message rate limit exceeded", limitPace},
		{554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message", limitQuota},
		{554, smtp.EnhancedCode{5, 2, 2}, "mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", noLimit},
		{421, smtp.EnhancedCode{4, 3, 2}, "Service not available, closing transmission channel", noLimit},
		{451, smtp.EnhancedCode{4, 4, 2}, "Connection dropped", noLimit},
		{550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender", noLimit},
	} {
		se := &smtp.SMTPError{Code: c.code, EnhancedCode: c.enhanced, Message: c.text}
		if got := classify(se); got != c.want {
			t.Errorf("classify(%d %v %q) = %d, want %d", c.code, c.enhanced, c.text, got, c.want)
		}
	}
}
