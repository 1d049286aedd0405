package admin

import (
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// upstream: auto in a tenant with SMTP AUTH off: the status page says in
// plain words that the account moved to Graph, and a resend after a lost
// answer that could not be checked in Sent Items counts as a possible
// duplicate in /metrics.
func TestGraphAutoOnPageAndMetrics(t *testing.T) {
	w := newWorld(t, worldOptions{autoAlerts: true})
	w.waitState("alerts", "ok")
	w.ms.SetTenantSMTPAuthDisabled(true)
	w.ms.SetGraphPermissions(daemonAppID, "Mail.Send") // no Sent Items read
	w.ms.FailGraphSends(1, fakems.GraphFailure{Status: 504, AfterSend: true})
	reply := w.send("alerts", alertsBox, []string{"oncall@example.net"}, strings.Replace(invoiceMessage("alert-graph"), invoicesBox, alertsBox, 1))
	if !strings.Contains(reply, "queued by Microsoft Graph") {
		t.Fatalf("reply %q", reply)
	}
	w.waitLog("alerts", delivery.OutcomeDelivered, 1)
	_, page := w.get("/")
	sec := section(t, page, "alerts")
	for _, want := range []string{"upstream: auto", "SMTP AUTH is disabled (535 5.7.139): mail goes through Microsoft Graph", "SMTP is tried again in"} {
		if !strings.Contains(sec, want) {
			t.Errorf("the alerts section lacks %q:\n%s", want, sec)
		}
	}
	_, metrics := w.get("/metrics")
	if !strings.Contains(metrics, `oauthrelay_graph_possible_duplicates_total{account="alerts"} 1`) {
		t.Errorf("no possible duplicate counted:\n%s", grep(metrics, "graph"))
	}
	if n := len(w.ms.GraphMessages()); n != 2 {
		t.Errorf("%d Graph messages, want 2 (the resend)", n)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
