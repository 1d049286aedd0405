package delivery

import (
	"iter"
	"time"
)

// window is the pace of one mailbox: a sliding-window log of the times its
// messages were sent in the last paceWindow, plus the messages in flight.
// It is a log rather than a token bucket because Exchange counts messages
// in any 60 seconds: a bucket that allows a burst of N lets 2N through in
// one window (N at the end of one refill, N more at the start of the next).
//
// A message takes its slot when its transaction begins (in flight), and
// counts from then until paceWindow after it was sent. In flight it never
// ages out, and once sent it is logged at the time the relay saw the
// upstream's reply, which is after the upstream counted it. So for any
// window of the upstream's: of the messages it counted there, the one
// admitted last was admitted inside that window, and at that moment every
// other one was either in flight or sent within paceWindow before it — all
// counted, so there were at most limit of them in total.
//
// Not safe for concurrent use; the Sender's lock guards it.
type window struct {
	sent     []time.Time // oldest first
	inFlight int
	// span is the window's length; zero is paceWindow (Exchange's SMTP
	// pace counts a minute, Graph's requests ten: see graphPace).
	span time.Duration
}

// length is the window's span.
func (w *window) length() time.Duration {
	if w.span > 0 {
		return w.span
	}
	return paceWindow
}

// expire drops the messages sent paceWindow or longer ago. The log is
// resliced from the front and compacted only once half of its array is
// dropped, so a mailbox allowed thousands a minute does not copy them all
// for every message.
func (w *window) expire(now time.Time) {
	n := 0
	for n < len(w.sent) && now.Sub(w.sent[n]) >= w.length() {
		n++
	}
	if n == 0 {
		return
	}
	w.sent = w.sent[n:]
	if len(w.sent) < cap(w.sent)/2 {
		w.sent = append(make([]time.Time, 0, 2*len(w.sent)+1), w.sent...)
	}
}

// sentSince returns the times of the messages sent at or after t still in
// the window.
func (w *window) sentSince(t time.Time) []time.Time {
	var out []time.Time
	for _, at := range w.sent {
		if !at.Before(t) {
			out = append(out, at)
		}
	}
	return out
}

// count returns the messages that count against the pace at now.
func (w *window) count(now time.Time) int {
	w.expire(now)
	return len(w.sent) + w.inFlight
}

// free reports whether a message may take a slot at now under limit and,
// if not, when the next slot frees by time alone (zero: only when a
// message in flight finishes or is refunded).
func (w *window) free(now time.Time, limit int) (bool, time.Time) {
	n := w.count(now)
	if n < limit {
		return true, time.Time{}
	}
	// n-limit+1 of the sent ones must age out; the last of them is at
	// index n-limit.
	if i := n - limit; i < len(w.sent) {
		return false, w.sent[i].Add(w.length())
	}
	return false, time.Time{}
}

// take puts a message in flight.
func (w *window) take() { w.inFlight++ }

// refund takes a message out of flight without counting it: it never
// reached DATA.
func (w *window) refund() { w.inFlight-- }

// done logs a message in flight as sent at now.
func (w *window) done(now time.Time) {
	w.inFlight--
	w.sent = append(w.sent, now)
}

// dayLog is the recipients of one mailbox in the last dayWindow: the ones
// of sent messages, logged in buckets of dayBucket aligned to the clock's
// minutes (as the shared store's, so that its count of this instance's
// minute and this one's can be compared: see SharedLimits.AddRecipients),
// and the ones of transactions still open (pending), which the upstream
// accepted at RCPT but which count only once their message is sent.
//
// Not safe for concurrent use; the Sender's lock guards it.
type dayLog struct {
	buckets []dayEntry // oldest first
	counted int        // the sum of buckets' n
	pending int
}

type dayEntry struct {
	minute, last time.Time // the bucket's start, its newest recipient
	n            int
}

// expire drops the entries whose newest recipient is dayWindow old.
func (d *dayLog) expire(now time.Time) {
	n := 0
	for n < len(d.buckets) && now.Sub(d.buckets[n].last) >= dayWindow {
		d.counted -= d.buckets[n].n
		n++
	}
	if n > 0 {
		d.buckets = append(d.buckets[:0], d.buckets[n:]...)
	}
}

// add counts n recipients of a message sent at now.
func (d *dayLog) add(now time.Time, n int) {
	if n <= 0 {
		return
	}
	d.counted += n
	minute := now.Truncate(dayBucket)
	if k := len(d.buckets); k > 0 && d.buckets[k-1].minute.Equal(minute) {
		d.buckets[k-1].n += n
		d.buckets[k-1].last = now
		return
	}
	d.buckets = append(d.buckets, dayEntry{minute: minute, last: now, n: n})
}

// perMinute yields each bucket's minute and count, oldest first.
func (d *dayLog) perMinute() iter.Seq2[time.Time, int] {
	buckets := append([]dayEntry(nil), d.buckets...)
	return func(yield func(time.Time, int) bool) {
		for _, b := range buckets {
			if !yield(b.minute, b.n) {
				return
			}
		}
	}
}

// freeAt returns when need of the counted recipients will have aged out
// (zero when fewer than need are counted: the rest are pending).
func (d *dayLog) freeAt(need int) time.Time {
	sum := 0
	for _, b := range d.buckets {
		sum += b.n
		if sum >= need {
			return b.last.Add(dayWindow)
		}
	}
	return time.Time{}
}

// oldest returns when the oldest counted recipient ages out (zero: none).
func (d *dayLog) oldest() time.Time {
	if len(d.buckets) == 0 {
		return time.Time{}
	}
	return d.buckets[0].last.Add(dayWindow)
}
