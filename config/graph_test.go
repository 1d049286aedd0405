package config

// The upstream, save_to_sent_items and graph keys of the issue "Microsoft
// Graph path".

import (
	"slices"
	"strings"
	"testing"
)

func TestUpstreamProblems(t *testing.T) {
	google := "providers:\n  p: {type: google, client_id: id}\n"
	ropc := "providers:\n  p: {type: microsoft, client_id: id, grant: password}\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"mode", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, relay_from: [10.0.0.1], upstream: ews}\n", []string{
			`c.yaml:4: accounts[0].upstream: "ews" is not a sending path (have: smtp, graph, auto)`}},
		{"no graph for google", google + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, relay_from: [10.0.0.1], upstream: graph}\n", []string{
			`c.yaml:4: accounts[0].upstream: graph needs Microsoft Graph: provider p has no graph.url (set it, or use type microsoft)`}},
		{"passthrough", ropc + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_passthrough: true, upstream: auto}\n", []string{
			`c.yaml:4: accounts[0].upstream: auto is not possible with password_passthrough: Graph tokens are the account's own, not the app session's`}},
		{"many mailboxes", prov + "accounts:\n  - {name: a, provider: p, mailbox: \"*@b.c\", relay_from: [10.0.0.1], upstream: graph}\n", []string{
			`c.yaml:4: accounts[0].upstream: graph sends as the account's one mailbox: not with a domain-wide mailbox, mailboxes or send_as: sender (use one account per mailbox)`}},
		{"sent items for smtp", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, relay_from: [10.0.0.1], save_to_sent_items: false}\n", []string{
			`c.yaml:4: accounts[0].save_to_sent_items: only for upstream graph or auto (SMTP submission always saves to Sent Items)`}},
		{"graph url", "providers:\n  p: {type: microsoft, tenant: t, client_id: id, client_secret: s, graph: {url: \"http://graph.example\"}}\n" + acct, []string{
			`c.yaml:2: providers.p.graph.url: want an https:// URL (http:// only to a loopback host), not "http://graph.example"`}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := parseIn(dir, tt.yaml, env())
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestUpstreamKeys(t *testing.T) {
	yaml := "providers:\n  p: {type: microsoft, cloud: usgov, tenant: t, client_id: id, client_secret: s,\n" +
		"      graph: {url: \"https://dod-graph.microsoft.us\"}}\n" +
		"accounts:\n  - {name: a, provider: p, mailbox: a@contoso.com, username: u, password_hash: \"HASH\", upstream: graph, save_to_sent_items: false}\n" +
		"  - {name: b, provider: p, mailbox: b@contoso.com, username: v, password_hash: \"HASH\"}\n"
	c, err := parseIn(t.TempDir(), yaml, env())
	if err != "" {
		t.Fatal(err)
	}
	a, b := c.Account("a"), c.Account("b")
	if a.Upstream != UpstreamGraph || a.SavesToSentItems() || !a.SendsThroughGraph() {
		t.Errorf("a: upstream %q, saves %v", a.Upstream, a.SavesToSentItems())
	}
	if b.Upstream != UpstreamSMTP || !b.SavesToSentItems() || b.SendsThroughGraph() {
		t.Errorf("b: upstream %q, saves %v", b.Upstream, b.SavesToSentItems())
	}
	if g := c.Providers["p"].Graph; !slices.Equal(g.Scopes, []string{"https://dod-graph.microsoft.us/.default"}) {
		t.Errorf("DoD graph %+v", g)
	}
}
