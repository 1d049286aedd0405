package admin

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// joinAs starts another instance on the store of r that publishes q (nil:
// no queue, delivery: direct); it leaves at cleanup.
func joinAs(t *testing.T, r *testutil.Redis, name string, q *cluster.QueueStats) *cluster.Store {
	t.Helper()
	s, err := cluster.Open(config.Cluster{Store: r.URL, Instance: name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.PublishQueue(func() (cluster.QueueStats, bool) {
		if q == nil {
			return cluster.QueueStats{}, false
		}
		return *q, true
	})
	s.Join()
	return s
}

var instanceRE = regexp.MustCompile(`(?s)<tr class="instance" id="instance-([^"]+)" data-state="([^"]+)">(.*?)</tr>`)

// instances returns the page's Instances rows: name → state and the row.
func instances(page string) map[string][2]string {
	out := map[string][2]string{}
	for _, m := range instanceRE.FindAllStringSubmatch(page, -1) {
		out[m[1]] = [2]string{m[2], m[3]}
	}
	return out
}

// The status page lists every instance sharing the store and its queue,
// read through the store by a real request: this one (its queue as its
// spool counts it), another with a backlog, one delivering directly (no
// queue), and one that stopped (gone while its published queue lasts).
// With the store stopped the page says so, and how many of this
// instance's mailboxes keep a safe share; with it back, that it answers.
func TestStatusPageInstances(t *testing.T) {
	r := testutil.StartRedis(t)
	w := newWorld(t, worldOptions{queueAlerts: true, cluster: r})
	w.waitState("alerts", "ok")
	w.send("alerts", alertsBox, []string{"oncall@example.net"}, invoiceMessage("alert-1"))
	w.waitLog("alerts", delivery.OutcomeDelivered, 1)

	oldest := time.Now().Add(-3 * time.Minute)
	b := joinAs(t, r, "relay-b", &cluster.QueueStats{Depth: 5, InFlight: 1, Failed: 2, Oldest: oldest})
	t.Cleanup(func() { b.Close() })
	c := joinAs(t, r, "relay-c", nil)
	t.Cleanup(func() { c.Close() })
	joinAs(t, r, "relay-d", &cluster.QueueStats{Depth: 1}).Close() // stopped: its queue lasts 10 s

	var rows map[string][2]string
	var page string
	deadline := time.Now().Add(10 * time.Second)
	for {
		var code int
		code, page = w.get("/")
		if code != 200 {
			t.Fatalf("GET /: %d", code)
		}
		rows = instances(page)
		if len(rows) == 4 && strings.Contains(rows["relay-a"][1], `class="num depth"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page lists %d instances, want relay-a to -d:\n%s", len(rows), page)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, want := range map[string][]string{
		"relay-a": {"healthy", "(this instance)", `<td class="num depth">0</td>`, `<td class="num failed">0</td>`, "just now"},
		"relay-b": {"healthy", `<td class="num depth">5</td>`, `<td class="num inflight">1</td>`, `<td class="num failed">2</td>`,
			"3 min ago", `title="` + absTime(oldest) + `"`},
		"relay-c": {"healthy", "no queue: its accounts deliver directly", "no queue published"},
		"relay-d": {"gone", "its heartbeat stopped", `<td class="num depth">1</td>`},
	} {
		row := rows[name]
		if row[0] != want[0] {
			t.Errorf("%s is %q, want %q", name, row[0], want[0])
		}
		for _, s := range want[1:] {
			if !strings.Contains(row[1], s) {
				t.Errorf("%s's row lacks %q:\n%s", name, s, row[1])
			}
		}
	}
	for _, s := range []string{"sharing " + r.URL + " · this one is relay-a", "store reachable", `href="#instances"`,
		"alive at the last heartbeat"} {
		if !strings.Contains(page, s) {
			t.Errorf("the page lacks %q", s)
		}
	}
	if p := section(t, page, "alerts"); !strings.Contains(p, "daily recipients counted in the shared store") ||
		!strings.Contains(p, "1 recipients in the last 24 h on all instances") {
		t.Errorf("alerts' limits do not show the shared day:\n%s", p)
	}

	r.Stop()
	w.waitPage(t, "the store unreachable", "store unreachable", "2 of this instance&#39;s 2 mailboxes keep a safe share",
		"The store could not be read")
	r.Start()
	w.waitPage(t, "the store back", "store reachable", `id="instance-relay-a" data-state="healthy"`)
}

// waitPage waits (bounded) until the status page holds every text.
func (w *world) waitPage(t *testing.T, what string, texts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, page := w.get("/")
		missing := ""
		for _, s := range texts {
			if !strings.Contains(page, s) {
				missing = s
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the page lacks %q:\n%s", what, missing, page)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
