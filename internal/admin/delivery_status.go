package admin

import (
	"fmt"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// pageLogRows is how many of an account's latest messages the page shows
// without a search; a search shows every match the log holds.
const pageLogRows = 20

// deliveryView is an account's delivery section of the status page: its
// queue, its mailbox's pool and limits, the chart and the message log.
// Like row, it is built field by field from public facts.
type deliveryView struct {
	Name, Mailbox string
	Queued        bool // delivery: queue
	// Upstream is the account's upstream (smtp, graph, auto);
	// UpstreamNote, for auto, where its mail goes now in plain words.
	Upstream, UpstreamNote string
	Queue                  queueView
	Pool                   *poolView // nil: no Sender for the mailbox (yet)
	Chart                  chart
	Log                    []logRow
	// LogHeld is how many messages the account's log holds; LogNote
	// says what Log shows of them.
	LogHeld int
	LogNote string
	// Pools are the Senders of the other mailboxes the account sends as
	// (a domain-wide account's, a send-as account's), by mailbox.
	Pools []mailboxPool
}

type queueView struct {
	Depth, InFlight, Failed int
	Oldest, OldestTitle     string
	Next, NextTitle         string
	Unreadable              bool // some envelopes could not be read
}

// poolView is the mailbox's Sender: its sessions, waits and limits.
type poolView struct {
	Server                      string
	Open, Idle, InUse           int
	WaitingSession, WaitingPace int
	Waits                       uint64
	WaitTime                    string
	LimitReplies, ExchangeLimit uint64
	Limits                      []limitView
	BackOff                     []string // what Exchange imposed, in words with until when
}

// mailboxPool is the pool of one of an account's several mailboxes.
type mailboxPool struct {
	Mailbox string
	*poolView
}

// limitView is one limit in force with its current use.
type limitView struct {
	Name, Value, Use string
}

// logRow is one message of the log as the page shows it.
type logRow struct {
	When, WhenTitle string
	From, MessageID string
	Rcpts           int
	Recipients      string // the first addresses, "…" when there are more
	Size            string
	Outcome, Class  string
	Reply, QueueID  string
	OutcomeTitle    string
}

// deliveryViews builds every account's delivery section; query filters
// the message logs.
func (s *Server) deliveryViews(accts []account, query string, now time.Time) []deliveryView {
	qs, queueOK, qerr := s.relay.QueueStats()
	if qerr != nil {
		s.log.Warn("some queued messages could not be read for the status page", "err", qerr)
	}
	pools := make(map[poolKey]delivery.Stats)
	var poolKeys []poolKey // in EachSender's order: by mailbox
	s.relay.EachSender(func(mailbox, server string, st delivery.Stats) {
		pools[poolKey{mailbox, server}] = st
		poolKeys = append(poolKeys, poolKey{mailbox, server})
	})
	var out []deliveryView
	for _, a := range accts {
		v := deliveryView{Name: a.Name, Mailbox: a.Mailbox, Queued: a.Delivery == config.DeliveryQueue, Upstream: a.Upstream}
		v.UpstreamNote = s.autoNote(a.Name, now)
		if v.Queued && queueOK {
			v.Queue = queueOf(qs.Accounts[a.Name], now)
			v.Queue.Unreadable = qerr != nil
		}
		if st, ok := pools[poolKey{strings.ToLower(a.Mailbox), smtpAddr(a)}]; ok {
			v.Pool = poolOf(st, smtpAddr(a), now)
		}
		for _, k := range poolKeys {
			if k.server == smtpAddr(a) && !strings.EqualFold(k.mailbox, a.Mailbox) && a.SendsAs(k.mailbox) {
				v.Pools = append(v.Pools, mailboxPool{k.mailbox, poolOf(pools[k], k.server, now)})
			}
		}
		start, counts := s.metrics.logs.hourly(a.Name, now)
		v.Chart = newChart("chart-"+a.Name, start, counts)
		recs, held := s.metrics.logs.recent(a.Name, query)
		v.LogHeld = held
		switch {
		case query != "":
			v.LogNote = fmt.Sprintf("%d of the last %d messages match %q", len(recs), held, query)
		case len(recs) > pageLogRows:
			v.LogNote = fmt.Sprintf("the latest %d of %d messages kept; search to see the others", pageLogRows, held)
			recs = recs[:pageLogRows]
		}
		for _, r := range recs {
			v.Log = append(v.Log, logRowOf(r, now))
		}
		out = append(out, v)
	}
	return out
}

// AutoStater is an optional add-on of Relay (*proxy.Relay has it): where
// an account with upstream: auto sends now.
type AutoStater interface {
	AutoState(account string) (delivery.AutoState, bool)
}

// autoNote says, for an upstream: auto account that moved to Graph, why
// and since when; "" otherwise.
func (s *Server) autoNote(name string, now time.Time) string {
	as, ok := s.relay.(AutoStater)
	if !ok {
		return ""
	}
	st, ok := as.AutoState(name)
	if !ok || !st.Graph {
		return ""
	}
	return fmt.Sprintf("%s. Moved %s; SMTP is tried again %s.", st.Reason, relTime(st.Since, now), relTime(st.NextProbe, now))
}

type poolKey struct{ mailbox, server string }

func smtpAddr(a account) string {
	if a.ProviderRef == nil {
		return ""
	}
	return a.ProviderRef.SMTP.Addr
}

func queueOf(st *spool.AccountStats, now time.Time) queueView {
	var v queueView
	if st == nil {
		return v
	}
	v.Depth, v.InFlight, v.Failed = st.Depth, st.InFlight, st.Failed
	if !st.Oldest.IsZero() {
		v.Oldest, v.OldestTitle = relTime(st.Oldest, now), absTime(st.Oldest)
	}
	switch {
	case st.NextAttempt.IsZero():
	case !st.NextAttempt.After(now):
		v.Next, v.NextTitle = "due now", absTime(st.NextAttempt)
	default:
		v.Next, v.NextTitle = relTime(st.NextAttempt, now), absTime(st.NextAttempt)
	}
	return v
}

func poolOf(st delivery.Stats, server string, now time.Time) *poolView {
	e, l := st.Effective, st.Limits
	p := &poolView{
		Server: server,
		Open:   st.Open, Idle: st.Idle, InUse: st.InUse,
		WaitingSession: st.WaitingSession, WaitingPace: st.WaitingPace,
		Waits: st.Waits, WaitTime: plainDuration(st.WaitTime),
		LimitReplies: st.LimitReplies, ExchangeLimit: st.ExchangeLimitReplies,
	}
	conns := fmt.Sprint(e.Connections)
	if e.Connections < l.Connections {
		conns = fmt.Sprintf("%d (configured %d)", e.Connections, l.Connections)
	}
	p.Limits = []limitView{
		{"Connections", conns, fmt.Sprintf("%d open: %d in use, %d idle", st.Open, st.InUse, st.Idle)},
		{"Messages a minute", fmt.Sprint(e.MessagesPerMinute), fmt.Sprintf("%d in the last minute", st.MessagesInWindow)},
		{"Recipients a day", fmt.Sprint(e.RecipientsPerDay), recipientsUse(st)},
		{"Recipients a message", fmt.Sprint(e.RecipientsPerMessage), ""},
		{"Max wait", plainDuration(e.MaxWait), ""},
	}
	at := st.At
	if at.IsZero() {
		at = now
	}
	for _, b := range backoffs(st) {
		if !b.until.IsZero() {
			// Until is on the Sender's clock: say it relative to its own
			// snapshot time.
			p.BackOff = append(p.BackOff, capitalize(b.words)+" "+relTime(b.until, at))
		}
	}
	return p
}

func recipientsUse(st delivery.Stats) string {
	s := fmt.Sprintf("%d in the last 24 h", st.RecipientsToday)
	if st.PendingRecipients > 0 {
		s += fmt.Sprintf(", %d in open transactions", st.PendingRecipients)
	}
	return s
}

// outcomeClass styles an outcome's badge, and outcomeWords explains it.
var (
	outcomeClass = map[string]string{
		delivery.OutcomeDelivered: "ok", delivery.OutcomeQueued: "idle", delivery.OutcomeDeferred: "warn",
		delivery.OutcomeFailed: "bad", delivery.OutcomeRefused: "bad",
	}
	outcomeWords = map[string]string{
		delivery.OutcomeDelivered: "the upstream accepted the message",
		delivery.OutcomeQueued:    "written to the relay's queue; the app was told 250",
		delivery.OutcomeDeferred:  "this attempt failed for now; the queue tries again later",
		delivery.OutcomeFailed:    "not delivered",
		delivery.OutcomeRefused:   "refused; the app got this reply",
	}
)

func logRowOf(r delivery.MessageRecord, now time.Time) logRow {
	row := logRow{
		When: relTime(r.Time, now), WhenTitle: absTime(r.Time),
		From: r.From, MessageID: r.MessageID, Rcpts: r.Rcpts,
		Recipients: strings.Join(r.Recipients, ", "),
		Size:       humanBytes(r.Bytes),
		Outcome:    r.Outcome, Class: outcomeClass[r.Outcome], OutcomeTitle: outcomeWords[r.Outcome],
		Reply: r.Reply, QueueID: r.QueueID,
	}
	if row.From == "" {
		row.From = "<>"
	}
	if r.Rcpts > len(r.Recipients) {
		row.Recipients += ", …"
	}
	if row.Class == "" {
		row.Class = "idle"
	}
	return row
}

// plainDuration says d in the page's words: "2 min", "45 s", "0 s".
func plainDuration(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%d h", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%d min", d/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%.1f min", d.Minutes())
	case d >= time.Second || d == 0:
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return fmt.Sprintf("%d ms", d/time.Millisecond)
}

// searchQuery is the ?q= text, trimmed and bounded.
func searchQuery(raw string) string {
	q := strings.TrimSpace(raw)
	if len(q) > maxQuery {
		q = strings.ToValidUTF8(q[:maxQuery], "")
	}
	return q
}
