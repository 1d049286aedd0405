package admin

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
)

// deliveryMetrics are the families of the delivery seam: what the queue and
// the message log are told (counters), and the spool's and the mailboxes'
// Senders' state, read at scrape time (collectors).
type deliveryMetrics struct {
	queued     *prometheus.CounterVec // account
	attempts   *prometheus.CounterVec // account, result
	deferrals  *prometheus.CounterVec // account, reason
	failures   *prometheus.CounterVec // account, reason
	duplicates *prometheus.CounterVec // account
	outcomes   *prometheus.CounterVec // account, outcome
	// graphDuplicates: Graph sends repeated without knowing (graph_metrics.go)
	graphDuplicates *prometheus.CounterVec // account
	queue           *queueCollector
	senders         *senderCollector
}

func newDeliveryMetrics() *deliveryMetrics {
	return &deliveryMetrics{
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_queue_messages_total",
			Help: "Messages written to the spool (the app got 250 queued), by account (delivery: queue).",
		}, []string{"account"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_queue_attempts_total",
			Help: "Delivery attempts of queued messages by account and result: delivered (every recipient done), deferred (retried later), failed (given up: a 5xx or queue.max_age; a notification went to the sender).",
		}, []string{"account", "result"}),
		deferrals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_queue_deferrals_total",
			Help: "Delivery attempts of queued messages that left recipients to retry, by account and reason: limit (the mailbox's sending limit: the relay's own wait or Exchange's throttling), quota (daily recipients used up), temporary (another 4xx reply), login_refused, unavailable (upstream or token endpoint unreachable), needs_sign_in, connection_lost, timeout, unreadable, interrupted, other.",
		}, []string{"account", "reason"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_queue_failures_total",
			Help: "Queued messages given up (a notification went to the sender), by account and reason: refused (a 5xx reply), expired (queue.max_age passed), unreadable (the spool lost the message), or one of the deferral reasons.",
		}, []string{"account", "reason"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_queue_possible_duplicates_total",
			Help: "Attempts of queued messages whose previous attempt was cut off (a crash) after the message may have reached the upstream: each may have been delivered twice, by account.",
		}, []string{"account"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_message_outcomes_total",
			Help: "Messages by account and outcome, as the status page's message log records them: direct delivery's delivered, refused (the upstream's or the relay's reply at the final dot) or failed (connection lost, the app's message cut short); queue mode's queued, then each attempt's delivered, deferred or failed.",
		}, []string{"account", "outcome"}),
		graphDuplicates: newGraphDuplicates(),
		queue:           newQueueCollector(),
		senders:         newSenderCollector(),
	}
}

func (d *deliveryMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{d.queued, d.attempts, d.deferrals, d.failures, d.duplicates, d.outcomes, d.graphDuplicates, d.queue, d.senders}
}

func (d *deliveryMetrics) setRelay(r Relay) {
	d.queue.setRelay(r)
	d.senders.setRelay(r)
}

// Queued implements delivery.QueueObserver.
func (m *Metrics) Queued(a events.Account, _ int64) {
	m.delivery.queued.WithLabelValues(a.Name).Inc()
}

// QueueAttempt implements delivery.QueueObserver.
func (m *Metrics) QueueAttempt(a events.Account, result, reason string) {
	m.delivery.attempts.WithLabelValues(a.Name, result).Inc()
	switch result {
	case "deferred":
		m.delivery.deferrals.WithLabelValues(a.Name, reason).Inc()
	case "failed":
		m.delivery.failures.WithLabelValues(a.Name, reason).Inc()
	}
}

// QueueDuplicate implements delivery.QueueObserver.
func (m *Metrics) QueueDuplicate(a events.Account) {
	m.delivery.duplicates.WithLabelValues(a.Name).Inc()
}

// MessageDone implements delivery.MessageLogger: the message goes in the
// account's log on the status page and counts in its outcome.
func (m *Metrics) MessageDone(a events.Account, r delivery.MessageRecord) {
	m.delivery.outcomes.WithLabelValues(a.Name, r.Outcome).Inc()
	m.logs.add(a.Name, r)
}

var (
	_ delivery.QueueObserver = (*Metrics)(nil)
	_ delivery.MessageLogger = (*Metrics)(nil)
)

// relayHolder is the relay a collector reads, set once a Server is built.
type relayHolder struct {
	mu    sync.Mutex
	relay Relay
}

func (h *relayHolder) setRelay(r Relay) {
	h.mu.Lock()
	h.relay = r
	h.mu.Unlock()
}

func (h *relayHolder) get() Relay {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.relay
}

// queueCollector reads the spool's figures per account when scraped.
type queueCollector struct {
	relayHolder
	depth, inFlight, failed, oldest, next *prometheus.Desc
}

func newQueueCollector() *queueCollector {
	l := []string{"account"}
	return &queueCollector{
		depth:    prometheus.NewDesc("oauthrelay_queue_depth", "Messages in the spool waiting for delivery, by account.", l, nil),
		inFlight: prometheus.NewDesc("oauthrelay_queue_in_flight", "Queued messages with a delivery attempt in progress (or cut off by a crash), by account.", l, nil),
		failed:   prometheus.NewDesc("oauthrelay_queue_failed_messages", "Messages given up and kept in the spool's failed area (queue.keep_failed), by account.", l, nil),
		oldest:   prometheus.NewDesc("oauthrelay_queue_oldest_message_age_seconds", "Age of the oldest message waiting in the spool, by account; 0 when none waits.", l, nil),
		next:     prometheus.NewDesc("oauthrelay_queue_next_attempt_timestamp_seconds", "When the next delivery attempt is due, by account (absent when none waits).", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.depth, c.inFlight, c.failed, c.oldest, c.next} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Every account with delivery:
// queue has its series (zero when it has nothing queued), as do accounts
// no longer configured whose messages are still in the spool. Envelopes
// that cannot be read are left out (the status page says so).
func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	relay := c.get()
	if relay == nil {
		return
	}
	st, ok, _ := relay.QueueStats()
	if !ok {
		return
	}
	now := time.Now()
	names := queueAccounts(relay.Config())
	for name := range st.Accounts {
		if !contains(names, name) {
			names = append(names, name)
		}
	}
	gauge := func(d *prometheus.Desc, v float64, name string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, name)
	}
	for _, name := range names {
		var a struct {
			depth, inFlight, failed int
			oldest, next            time.Time
		}
		if s := st.Accounts[name]; s != nil {
			a.depth, a.inFlight, a.failed, a.oldest, a.next = s.Depth, s.InFlight, s.Failed, s.Oldest, s.NextAttempt
		}
		gauge(c.depth, float64(a.depth), name)
		gauge(c.inFlight, float64(a.inFlight), name)
		gauge(c.failed, float64(a.failed), name)
		age := 0.0
		if !a.oldest.IsZero() {
			age = max(now.Sub(a.oldest).Seconds(), 0)
		}
		gauge(c.oldest, age, name)
		if !a.next.IsZero() {
			gauge(c.next, float64(a.next.UnixMilli())/1e3, name)
		}
	}
}

// queueAccounts are the names of cfg's accounts with delivery: queue.
func queueAccounts(cfg *config.Config) []string {
	var out []string
	for _, a := range cfg.Accounts {
		if a.Delivery == config.DeliveryQueue {
			out = append(out, a.Name)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// senderCollector reads every mailbox's Sender (pool, waits, limits) when
// scraped.
type senderCollector struct {
	relayHolder
	sessions, waiting, waits, waitTime, limitReplies, limit, backoff, window, rcptsDay, rcptsPending *prometheus.Desc
}

func newSenderCollector() *senderCollector {
	l := []string{"mailbox", "server"}
	with := func(extra string) []string { return append(append([]string(nil), l...), extra) }
	return &senderCollector{
		sessions: prometheus.NewDesc("oauthrelay_mailbox_sessions",
			"Authenticated upstream SMTP sessions of the mailbox's pool, by state: idle (kept for reuse), in_use (in a transaction or logging in).", with("state"), nil),
		waiting: prometheus.NewDesc("oauthrelay_mailbox_waiting",
			"Messages waiting now, by what for: session (a free connection) or pace (their slot in messages_per_minute).", with("for"), nil),
		waits: prometheus.NewDesc("oauthrelay_mailbox_waits_total",
			"Messages that had to wait before going upstream, by what for: session (a free connection of the pool) or pace (their slot in messages_per_minute).", with("for"), nil),
		waitTime: prometheus.NewDesc("oauthrelay_mailbox_wait_seconds_total",
			"Time messages spent waiting before going upstream, by what for: session or pace.", with("for"), nil),
		limitReplies: prometheus.NewDesc("oauthrelay_mailbox_limit_replies_total",
			"Replies that said a limit was reached, by source: relay (the relay's own 451 4.7.0: max_wait passed, daily recipients), exchange (Exchange's 432 4.3.2 or 554 5.2.0 quota).", with("source"), nil),
		limit: prometheus.NewDesc("oauthrelay_mailbox_limit",
			"The mailbox's limits in force, by limit: connections (lowered for a while after Exchange's 432), messages_per_minute, recipients_per_message, recipients_per_day, max_wait_seconds.", with("limit"), nil),
		backoff: prometheus.NewDesc("oauthrelay_mailbox_backoff",
			"1 while something Exchange's replies imposed is in force, by kind: connections_lowered, logins_paused, pace_blocked, quota_blocked.", with("kind"), nil),
		window: prometheus.NewDesc("oauthrelay_mailbox_messages_in_window",
			"Messages counting against messages_per_minute now (sent in the last minute, or in flight).", l, nil),
		rcptsDay: prometheus.NewDesc("oauthrelay_mailbox_recipients_last_24h",
			"Recipients of the messages sent in the last 24 hours (against recipients_per_day).", l, nil),
		rcptsPending: prometheus.NewDesc("oauthrelay_mailbox_recipients_pending",
			"Recipients accepted in open transactions, held against recipients_per_day.", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *senderCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.waiting, c.waits, c.waitTime, c.limitReplies, c.limit,
		c.backoff, c.window, c.rcptsDay, c.rcptsPending} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *senderCollector) Collect(ch chan<- prometheus.Metric) {
	relay := c.get()
	if relay == nil {
		return
	}
	relay.EachSender(func(mailbox, server string, st delivery.Stats) {
		emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, t, v, append([]string{mailbox, server}, extra...)...)
		}
		g, ctr := prometheus.GaugeValue, prometheus.CounterValue
		emit(c.sessions, g, float64(st.Idle), "idle")
		emit(c.sessions, g, float64(st.InUse), "in_use")
		emit(c.waiting, g, float64(st.WaitingSession), "session")
		emit(c.waiting, g, float64(st.WaitingPace), "pace")
		emit(c.waits, ctr, float64(st.Waits-st.PaceWaits), "session")
		emit(c.waits, ctr, float64(st.PaceWaits), "pace")
		emit(c.waitTime, ctr, (st.WaitTime - st.PaceWaitTime).Seconds(), "session")
		emit(c.waitTime, ctr, st.PaceWaitTime.Seconds(), "pace")
		emit(c.limitReplies, ctr, float64(st.LimitReplies), "relay")
		emit(c.limitReplies, ctr, float64(st.ExchangeLimitReplies), "exchange")
		e := st.Effective
		emit(c.limit, g, float64(e.Connections), "connections")
		emit(c.limit, g, float64(e.MessagesPerMinute), "messages_per_minute")
		emit(c.limit, g, float64(e.RecipientsPerMessage), "recipients_per_message")
		emit(c.limit, g, float64(e.RecipientsPerDay), "recipients_per_day")
		emit(c.limit, g, e.MaxWait.Seconds(), "max_wait_seconds")
		for _, b := range backoffs(st) {
			emit(c.backoff, g, boolValue(!b.until.IsZero()), b.kind)
		}
		emit(c.window, g, float64(st.MessagesInWindow))
		emit(c.rcptsDay, g, float64(st.RecipientsToday))
		emit(c.rcptsPending, g, float64(st.PendingRecipients))
	})
}

// backoff is one thing Exchange's replies imposed, in force until until
// (zero: not in force).
type backoff struct {
	kind, words string
	until       time.Time
}

// backoffs lists what Exchange's replies can impose, in a fixed order.
func backoffs(st delivery.Stats) []backoff {
	return []backoff{
		{"connections_lowered", "fewer connections (Exchange answered 432: another client holds connections of the mailbox)", st.ConnectionsLoweredUntil},
		{"logins_paused", "no new logins (after Exchange's 432 at login)", st.LoginsPausedUntil},
		{"pace_blocked", "no messages (Exchange said the per-minute limit was hit)", st.PaceBlockedUntil},
		{"quota_blocked", "no messages (Exchange said the daily recipient quota is used up)", st.QuotaBlockedUntil},
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
