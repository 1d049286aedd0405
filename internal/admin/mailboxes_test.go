package admin

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

// A domain-wide account's mailboxes in use: each login through the
// relay's own login path names its mailbox, the status page lists them
// with their logins and messages and each mailbox's own pool, and the
// metrics count them by account and mailbox.
func TestMailboxesInUse(t *testing.T) {
	w := newWorld(t, worldOptions{accounts: `
  - name: fleet
    provider: %[2]s
    mailbox: "*@fabrikam.com"
    password_hash: %[1]q
`})
	for _, mb := range []string{"a@fabrikam.com", "b@fabrikam.com"} {
		w.ms.AddMailbox(mb, "x")
		w.ms.GrantApp(daemonAppID, mb)
	}
	ctx := context.Background()
	addr := netip.MustParseAddr("127.0.0.1")
	for _, name := range []string{"A@fabrikam.com", "a@fabrikam.com.", "b@fabrikam.com"} {
		v, err := w.relay.Login(ctx, addr, name, "erp-local-password")
		if err != nil {
			t.Fatalf("login %s: %v", name, err)
		}
		w.metrics.Login("smtp", v.Info(), "ok")
		w.metrics.Message(v.Info(), 100)
		// The SMTP front end's AUTH: the mailbox's own pool logs in.
		if err := v.Delivery.Ready(ctx, w.relay.Credentials(addr, v, "")); err != nil {
			t.Fatalf("%s ready: %v", name, err)
		}
	}
	_, page := w.get("/")
	for _, want := range []string{"2 mailboxes in use", "a@fabrikam.com · 2 logins · 2 msg", "b@fabrikam.com · 1 logins · 1 msg",
		"<tr><td>a@fabrikam.com</td><td class=\"num\">1 (0 in use)</td>", "<tr><td>b@fabrikam.com</td><td class=\"num\">1 (0 in use)</td>"} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
	_, body := w.do(nil, "GET", "/metrics", nil, nil)
	for series, v := range map[string]float64{
		`oauthrelay_mailbox_logins_total{account="fleet",mailbox="a@fabrikam.com",proto="smtp"}`: 2,
		`oauthrelay_mailbox_messages_total{account="fleet",mailbox="b@fabrikam.com"}`:            1,
		`oauthrelay_messages_total{account="fleet"}`:                                             3,
	} {
		if got, ok := sample(body, series); !ok || got != v {
			t.Errorf("%s = %v (%v), want %v", series, got, ok, v)
		}
	}
}
