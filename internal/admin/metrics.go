package admin

import (
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// Metrics records what the sessions do, for /metrics and the status page.
// It implements proxy.Observer: pass it as proxy.Options.Observer; it is
// also the deliveries' delivery.QueueObserver and delivery.MessageLogger
// (the status page's message log). Every
// metric lives in the Metrics' own registry (no global registry), so tests
// and several relays in one process do not share counters.
//
// Token metrics (state, expiry, last success per account) are read from the
// accounts' token sources at scrape time, once a Server is built with New.
type Metrics struct {
	reg *prometheus.Registry

	connTotal    *prometheus.CounterVec // proto
	connActive   *prometheus.GaugeVec   // proto
	connUnauth   *prometheus.GaugeVec   // proto
	connRefused  *prometheus.CounterVec // proto, reason
	unauthLimit  *prometheus.GaugeVec   // proto, scope
	sessions     *prometheus.CounterVec // proto
	logins       *prometheus.CounterVec // proto, result
	upstream     *prometheus.CounterVec // proto, result
	upstreamTime *prometheus.HistogramVec
	messages     *prometheus.CounterVec // account
	mbLogins     *prometheus.CounterVec // account, mailbox, proto
	mbMessages   *prometheus.CounterVec // account, mailbox
	messageBytes *prometheus.CounterVec // account
	imapBytes    *prometheus.CounterVec // account, direction
	pop3Bytes    *prometheus.CounterVec // account, direction
	tokenReqs    *prometheus.CounterVec // account, result
	tokenTime    *prometheus.HistogramVec
	tokens       *tokenCollector
	delivery     *deliveryMetrics
	logs         *messageLogs

	mu       sync.Mutex
	accounts map[string]*accountStats // by account name: survives reloads
}

// accountStats is what the status page shows beyond the token state.
type accountStats struct {
	messages  int64
	bytes     int64
	lastOK    time.Time // last upstream login that succeeded
	lastErr   string    // plain words
	lastErrAt time.Time
	lastFix   string // the status page's fix entry for lastErr (fixes.go), or ""
	// mailboxes are the mailboxes seen in use (a login or a message) by
	// address, at most maxMailboxesShown: a domain-wide account serves
	// many, and the status page lists them.
	mailboxes map[string]*mailboxUse
}

// mailboxUse is one mailbox's use by an account.
type mailboxUse struct {
	logins, messages int64
	last             time.Time
}

// maxMailboxesShown bounds the mailboxes an account's record keeps (and
// the per-mailbox series): past it new ones are counted only by account.
const maxMailboxesShown = 1000

// seenLocked records a use of mailbox by the account st; m.mu held. It
// reports whether the mailbox is (now) among those kept.
func (st *accountStats) seenLocked(mailbox string, login, message bool) bool {
	if mailbox == "" || strings.Contains(mailbox, "*") {
		return false
	}
	u := st.mailboxes[mailbox]
	if u == nil {
		if len(st.mailboxes) >= maxMailboxesShown {
			return false
		}
		if st.mailboxes == nil {
			st.mailboxes = make(map[string]*mailboxUse)
		}
		u = &mailboxUse{}
		st.mailboxes[mailbox] = u
	}
	if login {
		u.logins++
	}
	if message {
		u.messages++
	}
	u.last = time.Now()
	return true
}

// Upstream latency buckets: a token from the cache plus a TLS handshake to
// Exchange takes 100–500 ms; a token request adds about as much; 15 s is
// the dial timeout.
var latencyBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30}

// NewMetrics returns Metrics with every family registered, plus the Go
// runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg:      prometheus.NewRegistry(),
		accounts: make(map[string]*accountStats),
		connTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_connections_total", Help: "Client connections accepted, by protocol.",
		}, []string{"proto"}),
		connActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthrelay_connections_active", Help: "Client connections open now, by protocol.",
		}, []string{"proto"}),
		connUnauth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthrelay_connections_unauthenticated",
			Help: "Client connections open now that have not logged in yet, by protocol.",
		}, []string{"proto"}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_connections_refused_total",
			Help: "Client connections refused at accept because too many had not logged in, by protocol and reason: listener_cap (the listener's cap), address_cap (the client address's cap).",
		}, []string{"proto", "reason"}),
		unauthLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oauthrelay_connections_unauthenticated_limit",
			Help: "Configured cap on client connections that have not logged in yet, by protocol and scope: listener, address (per client address; loopback 127.0.0.1 and ::1 exempt). 0: no cap.",
		}, []string{"proto", "scope"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_sessions_total", Help: "Client sessions that logged in and got an upstream session, by protocol.",
		}, []string{"proto"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_local_logins_total",
			Help: "Client logins by protocol and result: ok, bad_credentials, unavailable, needs_attention, upstream_rejected.",
		}, []string{"proto", "result"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_upstream_logins_total",
			Help: "Upstream connects with XOAUTH2 login, by protocol and result: ok, rejected, unavailable.",
		}, []string{"proto", "result"}),
		upstreamTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "oauthrelay_upstream_login_duration_seconds",
			Help:    "Time to connect to the upstream server and log in with XOAUTH2 (token included), by protocol and result.",
			Buckets: latencyBuckets,
		}, []string{"proto", "result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_messages_total", Help: "Messages the upstream accepted (SMTP), by account.",
		}, []string{"account"}),
		mbLogins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_mailbox_logins_total",
			Help: "Client logins that succeeded, by account, the mailbox they opened (a domain-wide account serves many; at most 1,000 per account are labelled) and protocol.",
		}, []string{"account", "mailbox", "proto"}),
		mbMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_mailbox_messages_total",
			Help: "Messages the upstream accepted (SMTP), by account and the mailbox that sent them (at most 1,000 per account are labelled).",
		}, []string{"account", "mailbox"}),
		messageBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_message_bytes_total", Help: "Bytes of the messages the upstream accepted (SMTP), by account.",
		}, []string{"account"}),
		imapBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_imap_bytes_total", Help: "Bytes copied by IMAP sessions after login, by account and direction (in: from the app).",
		}, []string{"account", "direction"}),
		pop3Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_pop3_bytes_total", Help: "Bytes copied by POP3 sessions after login, by account and direction (in: from the app).",
		}, []string{"account", "direction"}),
		tokenReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oauthrelay_token_requests_total",
			Help: "Attempts to get an access token (requests to the identity provider, or refusals before one such as a missing sign-in) by account and result: ok, or the error class (transient: network, 5xx, 429, temporarily_unavailable; needs_sign_in: everything an administrator must fix).",
		}, []string{"account", "result"}),
		tokenTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "oauthrelay_token_request_duration_seconds",
			Help:    "Duration of token requests to the identity provider, by result.",
			Buckets: latencyBuckets,
		}, []string{"result"}),
		tokens:   newTokenCollector(),
		delivery: newDeliveryMetrics(),
		logs:     newMessageLogs(),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connTotal, m.connActive, m.connUnauth, m.connRefused, m.unauthLimit, m.sessions, m.logins, m.upstream, m.upstreamTime,
		m.messages, m.mbLogins, m.mbMessages, m.messageBytes, m.imapBytes, m.pop3Bytes, m.tokenReqs, m.tokenTime, m.tokens,
	)
	m.reg.MustRegister(m.delivery.collectors()...)
	// Families with a fixed label set start at zero, so that rate() and
	// alerts work before the first event.
	for _, p := range []string{"smtp", "imap", "pop3"} {
		m.connTotal.WithLabelValues(p)
		m.connActive.WithLabelValues(p)
		m.connUnauth.WithLabelValues(p)
		m.connRefused.WithLabelValues(p, string(events.PreAuthListenerCap))
		m.connRefused.WithLabelValues(p, string(events.PreAuthAddressCap))
		m.sessions.WithLabelValues(p)
	}
	return m
}

// Handler serves the metrics in the Prometheus text (or OpenMetrics) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Registry is the Metrics' own registry, for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// watch makes the collectors read relay at scrape time.
func (m *Metrics) watch(relay Relay) {
	m.tokens.setRelay(relay)
	m.delivery.setRelay(relay)
}

// stats returns the account's record, creating it; m.mu must be held.
func (m *Metrics) statsLocked(name string) *accountStats {
	st := m.accounts[name]
	if st == nil {
		st = &accountStats{}
		m.accounts[name] = st
	}
	return st
}

// accountStats returns a copy of the account's record (zero if none).
func (m *Metrics) accountStats(name string) accountStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.accounts[name]; st != nil {
		c := *st
		c.mailboxes = make(map[string]*mailboxUse, len(st.mailboxes))
		for k, u := range st.mailboxes {
			uc := *u
			c.mailboxes[k] = &uc
		}
		return c
	}
	return accountStats{}
}

// recordError notes a failure for the status page, with the ID of its
// entry in the page's fixes ("" for none).
func (m *Metrics) recordError(name, words, fix string) {
	m.mu.Lock()
	st := m.statsLocked(name)
	st.lastErr, st.lastErrAt, st.lastFix = words, time.Now(), fix
	m.mu.Unlock()
}

// Connection implements events.Observer.
func (m *Metrics) Connection(proto events.Proto, delta int) {
	if delta > 0 {
		m.connTotal.WithLabelValues(string(proto)).Add(float64(delta))
	}
	m.connActive.WithLabelValues(string(proto)).Add(float64(delta))
}

// Login implements events.Observer. Failures of a known account are kept
// as its last error.
func (m *Metrics) Login(proto events.Proto, a events.Account, result events.LoginResult) {
	m.logins.WithLabelValues(string(proto), string(result)).Inc()
	if a.Name != "" && result != events.LoginOK {
		m.recordError(a.Name, loginWords(proto, result), loginFix(result))
	}
	if a.Name != "" && result == events.LoginOK {
		m.mu.Lock()
		kept := m.statsLocked(a.Name).seenLocked(a.Mailbox, true, false)
		m.mu.Unlock()
		if kept {
			m.mbLogins.WithLabelValues(a.Name, a.Mailbox, string(proto)).Inc()
		}
	}
}

// Upstream implements events.Observer.
func (m *Metrics) Upstream(proto events.Proto, a events.Account, result events.UpstreamResult, took time.Duration) {
	m.upstream.WithLabelValues(string(proto), string(result)).Inc()
	m.upstreamTime.WithLabelValues(string(proto), string(result)).Observe(took.Seconds())
	if result == events.UpstreamOK {
		m.sessions.WithLabelValues(string(proto)).Inc()
	}
	if a.Name == "" {
		return
	}
	if result == events.UpstreamOK {
		m.mu.Lock()
		m.statsLocked(a.Name).lastOK = time.Now()
		m.mu.Unlock()
		return
	}
	fix := fixMailbox
	if result == events.UpstreamUnavailable {
		fix = fixUnreachable
	}
	m.recordError(a.Name, upstreamWords(proto, result), fix)
}

// Message implements events.Observer.
func (m *Metrics) Message(a events.Account, bytes int64) {
	if a.Name == "" {
		return
	}
	m.messages.WithLabelValues(a.Name).Inc()
	m.messageBytes.WithLabelValues(a.Name).Add(float64(bytes))
	m.mu.Lock()
	st := m.statsLocked(a.Name)
	st.messages++
	st.bytes += bytes
	kept := st.seenLocked(a.Mailbox, false, true)
	m.mu.Unlock()
	if kept {
		m.mbMessages.WithLabelValues(a.Name, a.Mailbox).Inc()
	}
}

// Transferred implements events.Observer: IMAP and POP3 bytes are
// counted in their own families.
func (m *Metrics) Transferred(proto events.Proto, a events.Account, in, out int64) {
	if a.Name == "" {
		return
	}
	c := m.imapBytes
	if proto == events.POP3 {
		c = m.pop3Bytes
	}
	c.WithLabelValues(a.Name, "in").Add(float64(in))
	c.WithLabelValues(a.Name, "out").Add(float64(out))
}

// Unauthenticated implements events.Observer.
func (m *Metrics) Unauthenticated(proto events.Proto, delta int) {
	m.connUnauth.WithLabelValues(string(proto)).Add(float64(delta))
}

// PreAuthRejected implements events.Observer.
func (m *Metrics) PreAuthRejected(proto events.Proto, reason events.PreAuthReason) {
	m.connRefused.WithLabelValues(string(proto), string(reason)).Inc()
}

// PreAuthLimits implements events.Observer.
func (m *Metrics) PreAuthLimits(proto events.Proto, perListener, perAddr int) {
	m.unauthLimit.WithLabelValues(string(proto), "listener").Set(float64(perListener))
	m.unauthLimit.WithLabelValues(string(proto), "address").Set(float64(perAddr))
}

var _ events.Observer = (*Metrics)(nil)

// loginWords says what a failed client login means, for the status page.
func loginWords(proto events.Proto, result events.LoginResult) string {
	switch result {
	case events.LoginBadCredentials:
		return "the app logged in to " + protoName(proto) + " with a wrong password"
	case events.LoginUnavailable:
		return "an app login to " + protoName(proto) + " failed for a temporary reason (identity provider or Exchange unreachable); the app was told to retry"
	case events.LoginNeedsAttention:
		return "an app login to " + protoName(proto) + " was refused because the account cannot get a token (see the token state)"
	case events.LoginUpstreamRejected:
		return "Exchange refused the " + protoName(proto) + " login with the account's token (the log has its reply)"
	}
	return "an app login to " + protoName(proto) + " failed (" + string(result) + ")"
}

// loginFix is the fixes entry for a failed app login; a token failure has
// the token state's own.
func loginFix(result events.LoginResult) string {
	switch result {
	case events.LoginBadCredentials:
		return fixAppPassword
	case events.LoginUnavailable:
		return fixUnreachable
	case events.LoginUpstreamRejected:
		return fixMailbox
	}
	return ""
}

// upstreamWords says what a failed upstream login means.
func upstreamWords(proto events.Proto, result events.UpstreamResult) string {
	switch result {
	case events.UpstreamRejected:
		return "Exchange refused the " + protoName(proto) + " login with the account's token (the log has its reply)"
	case events.UpstreamUnavailable:
		return "the " + protoName(proto) + " server could not be reached or did not answer in time"
	}
	return "the upstream " + protoName(proto) + " login failed (" + string(result) + ")"
}

func protoName(proto events.Proto) string {
	switch proto {
	case events.SMTP:
		return "SMTP"
	case events.IMAP:
		return "IMAP"
	case events.POP3:
		return "POP3"
	}
	return string(proto)
}

// tokenCollector reads each account's token source when scraped.
type tokenCollector struct {
	mu    sync.Mutex
	relay Relay

	info, state, expiry, success, retry *prometheus.Desc
}

// tokenStates are the values of the state label, in oauth.Status order.
var tokenStates = []oauth.Status{oauth.StatusUnknown, oauth.StatusOK, oauth.StatusRefreshing, oauth.StatusTransient, oauth.StatusNeedsSignIn}

func newTokenCollector() *tokenCollector {
	return &tokenCollector{
		info: prometheus.NewDesc("oauthrelay_account_info",
			"Configured accounts (value 1) with their provider and grant.", []string{"account", "provider", "grant"}, nil),
		state: prometheus.NewDesc("oauthrelay_token_state",
			"1 for the token state the account is in: unknown, ok, refreshing, transient, needs_sign_in.", []string{"account", "state"}, nil),
		expiry: prometheus.NewDesc("oauthrelay_token_expiry_timestamp_seconds",
			"When the cached access token expires (absent while there is none).", []string{"account"}, nil),
		success: prometheus.NewDesc("oauthrelay_token_last_success_timestamp_seconds",
			"When a token was last obtained (absent if never).", []string{"account"}, nil),
		retry: prometheus.NewDesc("oauthrelay_token_retry_timestamp_seconds",
			"When the next token request is planned after a failure (absent when none is).", []string{"account"}, nil),
	}
}

func (c *tokenCollector) setRelay(r Relay) {
	c.mu.Lock()
	c.relay = r
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *tokenCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.state, c.expiry, c.success, c.retry} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *tokenCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	relay := c.relay
	c.mu.Unlock()
	if relay == nil {
		return
	}
	ts := func(d *prometheus.Desc, t time.Time, name string) {
		if !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(t.UnixMilli())/1e3, name)
		}
	}
	for _, a := range accounts(relay) {
		st := a.Source.State()
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, a.Name, a.Provider, st.Grant)
		for _, s := range tokenStates {
			v := 0.0
			if s == st.Status {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, a.Name, s.String())
		}
		ts(c.expiry, st.Expiry, a.Name)
		ts(c.success, st.LastSuccess, a.Name)
		ts(c.retry, st.RetryAt, a.Name)
	}
}
