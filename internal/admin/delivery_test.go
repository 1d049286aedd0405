package admin

import (
	"context"
	"fmt"
	"html"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// invoiceMessage is a message with its own Message-ID, the one an
// administrator searches for.
func invoiceMessage(id string) string {
	return "From: " + invoicesBox + "\r\n" +
		"To: customer@example.net\r\n" +
		"Subject: Invoice " + id + "\r\n" +
		"Message-ID: <" + id + "@contoso.com>\r\n" +
		"\r\n" +
		"Please find invoice " + id + " attached.\r\n"
}

// send hands a message to the account's Delivery as the SMTP front end
// does (Begin, Rcpt, Data) with the account's own credentials, and returns
// Data's reply.
func (w *world) send(account, from string, rcpts []string, msg string) string {
	w.t.Helper()
	a := w.account(account)
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	tx, err := a.Delivery.Begin(ctx, w.relay.Credentials(netip.Addr{}, a, ""), from, nil)
	if err != nil {
		w.t.Fatalf("%s: Begin: %v", account, err)
	}
	for _, to := range rcpts {
		if err := tx.Rcpt(to, nil); err != nil {
			w.t.Fatalf("%s: Rcpt %s: %v", account, to, err)
		}
	}
	acc, err := tx.Data(strings.NewReader(msg))
	if err != nil {
		w.t.Fatalf("%s: Data: %v", account, err)
	}
	return acc.Reply
}

// waitLog waits (bounded) until account's message log holds n records
// with outcome, and returns the newest.
func (w *world) waitLog(account, outcome string, n int) delivery.MessageRecord {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs, _ := w.metrics.logs.recent(account, "")
		var found []delivery.MessageRecord
		for _, r := range recs {
			if r.Outcome == outcome {
				found = append(found, r)
			}
		}
		if len(found) >= n {
			return found[0]
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: %d messages %s in the log within 10 s, want %d: %+v", account, len(found), outcome, n, recs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// section returns the account's delivery section of the status page.
func section(t *testing.T, page, account string) string {
	t.Helper()
	_, rest, ok := strings.Cut(page, `<section class="delivery" id="delivery-`+account+`"`)
	if !ok {
		t.Fatalf("no delivery section for %s:\n%s", account, page)
	}
	s, _, _ := strings.Cut(rest, "</section>")
	return s
}

var depthRE = regexp.MustCompile(`<dd class="depth"><span class="big">(\d+)</span>`)

// Real traffic through the relay's deliveries — invoices direct over the
// fake Exchange, alerts queued, one of its messages cut off during DATA
// and retried — shows on /metrics (queue depth and age, attempts by
// result, possible duplicates, outcomes, each mailbox's pool and limits)
// and on the status page (queue depth, next retry, limits, the message
// log with the upstream's reply and queue id, the search, the chart).
func TestDeliveryMetricsAndPage(t *testing.T) {
	w := newWorld(t, worldOptions{queueAlerts: true})
	w.waitState("alerts", "ok")
	if code, body := w.signIn("invoices"); code != 200 {
		t.Fatalf("sign-in: %d %s", code, body)
	}
	w.waitState("invoices", "ok")

	// invoices, direct: the app gets Exchange's 250 with its queue id.
	reply := w.send("invoices", invoicesBox, []string{"customer@example.net", "accounts@example.net"}, invoiceMessage("invoice-4711"))
	inv := w.waitLog("invoices", delivery.OutcomeDelivered, 1)
	if inv.Reply != "250 "+reply || !strings.Contains(reply, "<invoice-4711@contoso.com> [Hostname=") ||
		inv.MessageID != "<invoice-4711@contoso.com>" || inv.Rcpts != 2 {
		t.Fatalf("invoices logged %+v (reply %q)", inv, reply)
	}

	// alerts, queued: delivered by the worker; the next one is cut off
	// during DATA and deferred, still in flight (it may have gone).
	w.send("alerts", alertsBox, []string{"oncall@example.net"}, invoiceMessage("alert-1"))
	w.waitLog("alerts", delivery.OutcomeDelivered, 1)
	w.ms.DropNextDataAfter(10)
	queuedReply := w.send("alerts", alertsBox, []string{"oncall@example.net"}, invoiceMessage("alert-2"))
	id, ok := strings.CutPrefix(queuedReply, "2.0.0 OK queued as ")
	if !ok {
		t.Fatalf("alerts: %q, want queued", queuedReply)
	}
	deferred := w.waitLog("alerts", delivery.OutcomeDeferred, 1)
	if deferred.QueueID != id || deferred.Reply != "the connection to the upstream server was lost during DATA" {
		t.Fatalf("deferred logged as %+v", deferred)
	}

	_, body := w.get("/metrics")
	w.assertNoSecrets("/metrics", body)
	server := w.account("invoices").ProviderRef.SMTP.Addr
	// mbox names a series of invoices' mailbox, with one more label
	// ("" none); the exposition sorts labels by name.
	mbox := func(family, extra string) string {
		labels := []string{fmt.Sprintf("mailbox=%q", invoicesBox), fmt.Sprintf("server=%q", server)}
		if extra != "" {
			labels = append(labels, extra)
		}
		slices.Sort(labels)
		return family + "{" + strings.Join(labels, ",") + "}"
	}
	want := map[string]float64{
		`oauthrelay_queue_depth{account="alerts"}`:                                    1,
		`oauthrelay_queue_in_flight{account="alerts"}`:                                1,
		`oauthrelay_queue_failed_messages{account="alerts"}`:                          0,
		`oauthrelay_queue_messages_total{account="alerts"}`:                           2,
		`oauthrelay_queue_attempts_total{account="alerts",result="delivered"}`:        1,
		`oauthrelay_queue_attempts_total{account="alerts",result="deferred"}`:         1,
		`oauthrelay_queue_deferrals_total{account="alerts",reason="connection_lost"}`: 1,
		`oauthrelay_queue_failures_total{account="alerts",reason="refused"}`:          -1, // absent
		`oauthrelay_message_outcomes_total{account="alerts",outcome="queued"}`:        2,
		`oauthrelay_message_outcomes_total{account="alerts",outcome="deferred"}`:      1,
		`oauthrelay_message_outcomes_total{account="invoices",outcome="delivered"}`:   1,
		mbox("oauthrelay_mailbox_sessions", `state="idle"`):                           1,
		mbox("oauthrelay_mailbox_sessions", `state="in_use"`):                         0,
		mbox("oauthrelay_mailbox_waiting", `for="pace"`):                              0,
		mbox("oauthrelay_mailbox_waits_total", `for="session"`):                       0,
		mbox("oauthrelay_mailbox_waits_total", `for="pace"`):                          0,
		mbox("oauthrelay_mailbox_wait_seconds_total", `for="pace"`):                   0,
		mbox("oauthrelay_mailbox_limit_replies_total", `source="exchange"`):           0,
		mbox("oauthrelay_mailbox_limit_replies_total", `source="relay"`):              0,
		mbox("oauthrelay_mailbox_limit", `limit="connections"`):                       3,
		mbox("oauthrelay_mailbox_limit", `limit="messages_per_minute"`):               30,
		mbox("oauthrelay_mailbox_limit", `limit="recipients_per_day"`):                10000,
		mbox("oauthrelay_mailbox_limit", `limit="max_wait_seconds"`):                  120,
		mbox("oauthrelay_mailbox_backoff", `kind="pace_blocked"`):                     0,
		mbox("oauthrelay_mailbox_messages_in_window", ``):                             1,
		mbox("oauthrelay_mailbox_recipients_last_24h", ``):                            2,
		mbox("oauthrelay_mailbox_recipients_pending", ``):                             0,
		`oauthrelay_queue_attempts_total{account="alerts",result="failed"}`:           -1, // absent
		`oauthrelay_queue_depth{account="invoices"}`:                                  -1, // direct: no queue
		`oauthrelay_message_outcomes_total{account="invoices",outcome="refused"}`:     -1,
		`oauthrelay_queue_possible_duplicates_total{account="alerts"}`:                -1,
		`oauthrelay_queue_oldest_message_age_seconds{account="invoices"}`:             -1,
	}
	for series, v := range want {
		got, ok := sample(body, series)
		switch {
		case v < 0 && ok:
			t.Errorf("%s = %v, want none", series, got)
		case v >= 0 && !ok:
			t.Errorf("no sample %s", series)
		case v >= 0 && got != v:
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
	now := float64(time.Now().Unix())
	if age, ok := sample(body, `oauthrelay_queue_oldest_message_age_seconds{account="alerts"}`); !ok || age < 0 || age > 60 {
		t.Errorf("oldest queued message age %v (%v), want the seconds since it was queued", age, ok)
	}
	if next, ok := sample(body, `oauthrelay_queue_next_attempt_timestamp_seconds{account="alerts"}`); !ok || next < now+30 || next > now+61 {
		t.Errorf("next attempt at %v, want about a minute from now (%v)", next, now)
	}

	_, page := w.get("/")
	w.assertNoSecrets("the status page", page)
	alerts, invoices := section(t, page, "alerts"), section(t, page, "invoices")
	if m := depthRE.FindStringSubmatch(alerts); m == nil || m[1] != "1" {
		t.Errorf("alerts queue depth not 1 on the page:\n%s", alerts)
	}
	for _, s := range []string{`<dd class="next"><span title="`, `">in `, "queue id " + id,
		"the connection to the upstream server was lost during DATA", "&lt;alert-2@contoso.com&gt;", ">deferred<", ">queued<"} {
		if !strings.Contains(alerts, s) {
			t.Errorf("alerts section lacks %q:\n%s", s, alerts)
		}
	}
	for _, s := range []string{"delivery: direct", "Direct: each message goes upstream at once",
		"&lt;invoice-4711@contoso.com&gt;", html.EscapeString("250 " + reply), "customer@example.net, accounts@example.net",
		"<td>Connections</td><td class=\"num\">3</td><td>1 open: 0 in use, 1 idle</td>",
		"<td>Recipients a day</td><td class=\"num\">10000</td><td>2 in the last 24 h</td>",
		"No back-off in force.",
		`<desc id="chart-invoices-d">1 delivered and 0 not delivered`,
		`<rect class="ok"`} {
		if !strings.Contains(invoices, s) {
			t.Errorf("invoices section lacks %q:\n%s", s, invoices)
		}
	}
	if strings.Contains(invoices, "alert-2") {
		t.Error("an alerts message shows in the invoices log")
	}

	// "Did invoice 4711 go out?"
	_, found := w.get("/?q=4711")
	inv4711, alertsFound := section(t, found, "invoices"), section(t, found, "alerts")
	if !strings.Contains(inv4711, "&lt;invoice-4711@contoso.com&gt;") || !strings.Contains(inv4711, ">delivered<") ||
		!strings.Contains(inv4711, "1 of the last 1 messages match") {
		t.Errorf("the search for 4711 did not find it:\n%s", inv4711)
	}
	if strings.Contains(alertsFound, `<tr class="msg">`) || !strings.Contains(alertsFound, "0 of the last 4 messages match") {
		t.Errorf("the search for 4711 shows alerts messages:\n%s", alertsFound)
	}
	if !strings.Contains(found, `name="q" value="4711"`) {
		t.Error("the search box does not keep the query")
	}
	_, byQueueID := w.get("/?q=" + url.QueryEscape(strings.ToLower(id)))
	if n := strings.Count(section(t, byQueueID, "alerts"), `<tr class="msg">`); n != 2 {
		t.Errorf("the search for queue id %s found %d rows, want 2 (queued, deferred)", id, n)
	}
	_, byRcpt := w.get("/?q=accounts%40example")
	if n := strings.Count(byRcpt, `<tr class="msg">`); n != 1 {
		t.Errorf("the search for a recipient found %d rows, want 1", n)
	}

	// Retried at once (as `oauthrelay queue retry` does, through its own
	// handle on the spool) and woken by a new message: the message in
	// flight is sent again and counted as a possible duplicate.
	sp, _, err := spool.Open(filepath.Join(w.relay.Config().StateDir, "queue"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if err := sp.Retry(id); err != nil {
		t.Fatal(err)
	}
	w.send("alerts", alertsBox, []string{"oncall@example.net"}, invoiceMessage("alert-3"))
	w.waitLog("alerts", delivery.OutcomeDelivered, 3)
	_, body = w.get("/metrics")
	for series, v := range map[string]float64{
		`oauthrelay_queue_possible_duplicates_total{account="alerts"}`:         1,
		`oauthrelay_queue_depth{account="alerts"}`:                             0,
		`oauthrelay_queue_oldest_message_age_seconds{account="alerts"}`:        0,
		`oauthrelay_queue_attempts_total{account="alerts",result="delivered"}`: 3,
	} {
		if got, ok := sample(body, series); !ok || got != v {
			t.Errorf("after the retry %s = %v (%v), want %v", series, got, ok, v)
		}
	}
	if _, ok := sample(body, `oauthrelay_queue_next_attempt_timestamp_seconds{account="alerts"}`); ok {
		t.Error("a next attempt reported for an empty queue")
	}
	_, page = w.get("/")
	alerts = section(t, page, "alerts")
	if m := depthRE.FindStringSubmatch(alerts); m == nil || m[1] != "0" {
		t.Errorf("alerts queue depth not 0 after the retry:\n%s", alerts)
	}
	if !strings.Contains(alerts, `<desc id="chart-alerts-d">3 delivered and 0 not delivered`) {
		t.Errorf("alerts chart does not count 3 delivered:\n%s", alerts)
	}
}

// Whatever a message carries — a hostile envelope sender, Message-ID or
// reply, a hostile search — reaches the page escaped.
func TestMessageLogEscaped(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.metrics.MessageDone(events.Account{Name: "alerts"}, delivery.MessageRecord{
		Time:       time.Now(),
		From:       `"<script>alert(1)</script>"@evil.example`,
		MessageID:  `<x"><img src=x onerror=alert(2)>@evil.example>`,
		Recipients: []string{`</td><iframe src="https://evil.example/">`},
		Rcpts:      1,
		Outcome:    delivery.OutcomeRefused,
		Reply:      `550 5.7.1 <b onmouseover="alert(3)">no</b>`,
		QueueID:    `"><svg onload=alert(4)>`,
	})
	_, page := w.get("/?q=" + url.QueryEscape(`"><script>alert(5)</script>`))
	_, all := w.get("/")
	for _, p := range []string{page, all} {
		for _, bad := range []string{"<script>alert", "<img src=x", "<iframe", `<b onmouseover`, "<svg onload"} {
			if strings.Contains(p, bad) {
				t.Errorf("the page holds %q unescaped", bad)
			}
		}
	}
	for _, s := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;",
		"&lt;/td&gt;&lt;iframe", "&lt;b onmouseover=", "&lt;svg onload=alert(4)&gt;", ">refused<"} {
		if !strings.Contains(all, s) {
			t.Errorf("the page lacks the escaped %q", s)
		}
	}
	if !strings.Contains(page, `value="&#34;&gt;&lt;script&gt;alert(5)&lt;/script&gt;"`) {
		t.Error("the search box does not hold the hostile query escaped")
	}
}

// The ring keeps the newest logSize messages per account, a record's
// recipients and reply are bounded, and the hourly counts forget hours
// older than the chart.
func TestMessageLogBounds(t *testing.T) {
	l := newMessageLogs()
	now := time.Date(2025, 3, 14, 15, 30, 0, 0, time.UTC)
	many := make([]string, 500)
	for i := range many {
		many[i] = fmt.Sprintf("r%d@example.net", i)
	}
	l.add("a", delivery.MessageRecord{Time: now.Add(-25 * time.Hour), Outcome: delivery.OutcomeDelivered, From: "old@example.net"})
	for i := range logSize + 5 {
		l.add("a", delivery.MessageRecord{Time: now, From: fmt.Sprintf("s%d@example.net", i), Recipients: many,
			Outcome: delivery.OutcomeDelivered, Reply: strings.Repeat("x", 5000)})
	}
	recs, held := l.recent("a", "")
	if held != logSize || len(recs) != logSize {
		t.Fatalf("held %d, returned %d, want %d", held, len(recs), logSize)
	}
	if recs[0].From != fmt.Sprintf("s%d@example.net", logSize+4) || recs[logSize-1].From != "s5@example.net" {
		t.Errorf("newest %s, oldest %s", recs[0].From, recs[logSize-1].From)
	}
	if r := recs[0]; len(r.Recipients) != logRecipients || r.Rcpts != 500 || len(r.Reply) > logReplyLen+len("…") {
		t.Errorf("record kept %d recipients (count %d) and %d bytes of reply", len(r.Recipients), r.Rcpts, len(r.Reply))
	}
	if m, _ := l.recent("a", "S7@EXAMPLE"); len(m) != 1 {
		t.Errorf("case-insensitive search found %d", len(m))
	}
	start, counts := l.hourly("a", now)
	if len(counts) != chartHours || !start[chartHours-1].Equal(now.Truncate(time.Hour)) {
		t.Fatalf("hours %v", start)
	}
	total := 0
	for _, c := range counts {
		total += c.delivered
	}
	if counts[chartHours-1].delivered != logSize+5 || total != logSize+5 {
		t.Errorf("this hour %d, 24 h %d; want %d (the message of 25 h ago not counted)", counts[chartHours-1].delivered, total, logSize+5)
	}
	c := newChart("c", start, counts)
	if c.Bars[chartHours-1].OKH != chartPlot || c.Bars[0].OKH != 0 || c.Max != logSize+5 {
		t.Errorf("chart bars: last %+v, first %+v, max %d", c.Bars[chartHours-1], c.Bars[0], c.Max)
	}
}
