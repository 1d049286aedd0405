package admin

import (
	"strings"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
)

// Bounds of the message log, which lives in memory only: it answers "did
// invoice 4711 go out?" for recent mail; the relay's log lines are the
// record of everything.
const (
	// logSize is how many messages each account's log keeps (a ring:
	// the oldest goes first).
	logSize = 200
	// logRecipients is how many recipient addresses an entry keeps; the
	// count is kept whole. Exchange allows 500 a message: 200 entries of
	// 500 addresses would cost megabytes for nothing a page shows.
	logRecipients = 10
	// logReplyLen bounds the reply text kept (an SMTP reply line is at
	// most 512 octets, RFC 5321 §4.5.3.1.5; plain-words reasons are
	// longer).
	logReplyLen = 1000
	// chartHours is the span of the messages-per-hour chart.
	chartHours = 24
	// maxQuery bounds the search text taken from ?q=.
	maxQuery = 200
)

// messageLogs are the accounts' message logs and hourly counts.
type messageLogs struct {
	mu        sync.Mutex
	byAccount map[string]*accountLog // by account name: survives reloads
}

// accountLog is one account's ring of messages and its hourly counts.
type accountLog struct {
	ring  [logSize]delivery.MessageRecord
	next  int // where the next record goes
	count int // records held, up to logSize
	hours [chartHours]hourCount
}

// hourCount is one hour's finished messages; hour is the Unix hour it
// counts, so a bucket left from an earlier day reads as zero.
type hourCount struct {
	hour                    int64
	delivered, notDelivered int
}

func newMessageLogs() *messageLogs {
	return &messageLogs{byAccount: make(map[string]*accountLog)}
}

// add records r for account; a delivered, refused or failed message also
// counts in its hour.
func (l *messageLogs) add(account string, r delivery.MessageRecord) {
	r = trimRecord(r)
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	al := l.byAccount[account]
	if al == nil {
		al = &accountLog{}
		l.byAccount[account] = al
	}
	al.ring[al.next] = r
	al.next = (al.next + 1) % logSize
	al.count = min(al.count+1, logSize)
	switch r.Outcome {
	case delivery.OutcomeDelivered, delivery.OutcomeRefused, delivery.OutcomeFailed:
		h := unixHour(r.Time)
		b := &al.hours[hourSlot(h)]
		if b.hour != h {
			*b = hourCount{hour: h}
		}
		if r.Outcome == delivery.OutcomeDelivered {
			b.delivered++
		} else {
			b.notDelivered++
		}
	}
}

// trimRecord keeps r within the log's bounds.
func trimRecord(r delivery.MessageRecord) delivery.MessageRecord {
	if r.Rcpts < len(r.Recipients) {
		r.Rcpts = len(r.Recipients)
	}
	if len(r.Recipients) > logRecipients {
		r.Recipients = r.Recipients[:logRecipients]
	}
	r.Recipients = append([]string(nil), r.Recipients...) // not the caller's array
	if len(r.Reply) > logReplyLen {
		r.Reply = strings.ToValidUTF8(r.Reply[:logReplyLen], "") + "…"
	}
	return r
}

// recent returns account's records, newest first, that match query (all
// when query is ""), and how many the log holds.
func (l *messageLogs) recent(account, query string) (matches []delivery.MessageRecord, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	al := l.byAccount[account]
	if al == nil {
		return nil, 0
	}
	q := strings.ToLower(query)
	for i := 1; i <= al.count; i++ {
		r := al.ring[(al.next-i+logSize)%logSize]
		if q == "" || recordMatches(r, q) {
			matches = append(matches, r)
		}
	}
	return matches, al.count
}

// recordMatches: lower-case q is in the sender, the Message-ID, a
// recipient, the reply or the spool id.
func recordMatches(r delivery.MessageRecord, q string) bool {
	for _, s := range append([]string{r.From, r.MessageID, r.Reply, r.QueueID}, r.Recipients...) {
		if strings.Contains(strings.ToLower(s), q) {
			return true
		}
	}
	return false
}

// hourly returns account's counts for the chartHours hours up to the one
// holding now, oldest first; start[i] is the beginning of hour i.
func (l *messageLogs) hourly(account string, now time.Time) (start []time.Time, counts []hourCount) {
	cur := unixHour(now)
	l.mu.Lock()
	al := l.byAccount[account]
	for i := range int64(chartHours) {
		h := cur - chartHours + 1 + i
		c := hourCount{hour: h}
		if al != nil && al.hours[hourSlot(h)].hour == h {
			c = al.hours[hourSlot(h)]
		}
		counts = append(counts, c)
		start = append(start, time.Unix(h*3600, 0).In(now.Location()))
	}
	l.mu.Unlock()
	return start, counts
}

func unixHour(t time.Time) int64 { return t.Unix() / 3600 }

// hourSlot is hour h's bucket (h may be negative: a time before 1970).
func hourSlot(h int64) int { return int((h%chartHours + chartHours) % chartHours) }
