//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// The cluster test's sizes: a fast clock (a minute of Exchange's pace
// lasts half a second) and a few hundred messages, so that it runs in
// seconds; `oauthrelay bench -only cluster` sends more.
const (
	clusterSpeed = 120
	clusterBurst = 600 // the first burst, spread over the three instances (-short: a fifth)
	clusterMore  = 60  // sent while one instance is dead, and around the outage
	// clusterWait bounds each wait for deliveries (real time): the
	// slowest, after a kill, waits for the dead instance's leases.
	clusterWait = 60 * time.Second
)

// relayCluster is three `oauthrelay serve` processes sharing one redis-server
// in front of the fake Exchange.
type relayCluster struct {
	t       *testing.T
	bin     string
	cfgs    []string
	env     []string
	procs   []*relayProc
	lives   int
	fw      *fakeWorld
	subject int
	acked   map[string]bool
}

// TestClusterSharesLimits runs three relays of delivery: queue sharing
// one Redis in front of a fake that keeps Exchange's limits (3
// connections, 30 messages a minute, on the same fast clock): a burst
// over all three, one of them killed mid-run and restarted, the store
// stopped and started again. Every acknowledged message is delivered, and
// the fake never had to refuse one for a limit: the three kept 3
// connections and the pace in total, on the safe share while the store
// was away too.
func TestClusterSharesLimits(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	bin := buildBinary(t)
	epoch := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fw, err := startFakeWorld(ctx, fakems.Options{SMTPLimits: true,
		Clock: delivery.NewScaledClockAt(clusterSpeed, epoch)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.ms.Close() })
	hash, err := bcrypt.GenerateFromPassword([]byte(demoPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	c := &relayCluster{t: t, bin: bin, fw: fw, acked: map[string]bool{},
		env: []string{fmt.Sprintf("%s=%d", proxy.ClockSpeedEnv, clusterSpeed),
			fmt.Sprintf("%s=%d", proxy.ClockEpochEnv, epoch.UnixNano()), clusterLeaseEnv + "=2s"}}
	dir := t.TempDir()
	for i := range 3 {
		state := filepath.Join(dir, fmt.Sprintf("state%d", i))
		cfg := filepath.Join(dir, fmt.Sprintf("relay%d.yaml", i))
		admin := "off"
		if i == 0 {
			admin = "127.0.0.1:0" // its status page lists the others
		}
		writeFile(t, cfg, fw.yaml(state, "127.0.0.1:0", "off", "off", admin, string(hash))+
			"    delivery: queue\n"+
			// A queued message that waits its max_wait is retried a
			// minute of real time later: at this clock's speed the
			// default 2 minutes are one real second, less than the
			// backlog a killed instance leaves.
			"    limits: {max_wait: 1h}\n"+
			fmt.Sprintf("cluster:\n  store: %s\n  instance: relay-%d\n", r.URL, i))
		c.cfgs = append(c.cfgs, cfg)
		c.procs = append(c.procs, nil)
		c.start(i)
	}

	// A burst over all three; one is killed as soon as its share was
	// acknowledged, with most of it still in its spool.
	burst := clusterBurst
	if testing.Short() {
		burst /= 5
	}
	c.send(burst, 0, 1, 2)
	c.procs[2].kill(t)
	// What relay-2 delivered in its first life is at most this: the
	// store keeps it until it restarts empty, and nobody can tell it again
	// then (see the day's check below).
	deliveredAtKill := len(fw.ms.Messages())
	t.Logf("%v: %d delivered, limit replies %+v", time.Since(epoch).Round(time.Millisecond), len(fw.ms.Messages()), fw.ms.LimitReplies())
	before := len(fw.ms.Messages())
	c.send(clusterMore, 0, 1)
	c.waitDelivered(before+1, "the two live instances deliver while the third is dead")
	t.Logf("%v: %d delivered, limit replies %+v", time.Since(epoch).Round(time.Millisecond), len(fw.ms.Messages()), fw.ms.LimitReplies())
	c.start(2)
	c.waitAll("every acknowledged message, the killed instance's spool too")

	// The store stopped: the instances go on, each on its safe share.
	t.Logf("%v: %d delivered, limit replies %+v", time.Since(epoch).Round(time.Millisecond), len(fw.ms.Messages()), fw.ms.LimitReplies())
	r.Stop()
	before = len(fw.ms.Messages())
	c.send(clusterMore, 0, 1, 2)
	c.waitDelivered(before+clusterMore/2, "mail flows with the store stopped")
	t.Logf("%v: %d delivered, limit replies %+v", time.Since(epoch).Round(time.Millisecond), len(fw.ms.Messages()), fw.ms.LimitReplies())
	r.Start()
	c.waitLog("the shared store is back")
	c.send(clusterMore, 0, 1, 2)
	c.waitAll("every acknowledged message, after the store came back")

	t.Logf("%v: %d delivered, limit replies %+v", time.Since(epoch).Round(time.Millisecond), len(fw.ms.Messages()), fw.ms.LimitReplies())
	// Every instance's queue, through the store, from any host's
	// `queue list`.
	deadline := time.Now().Add(clusterWait)
	for {
		out, err := exec.Command(bin, "queue", "-config", c.cfgs[0], "list").CombinedOutput()
		if err != nil {
			t.Fatalf("queue list: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "relay-0") && strings.Contains(string(out), "relay-1") && strings.Contains(string(out), "relay-2") {
			t.Logf("queue list:\n%s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue list does not show the three instances:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The day's recipients of all three instances, through relay-0's
	// status page: every message delivered counts once (each has one
	// recipient) — those of relay-2's first life excepted, lost with the
	// store's restart — and at most a few twice (sent while the store was
	// down after their place was held in it).
	delivered := len(fw.ms.Messages())
	page := c.waitStatus(func(page string) bool {
		n, ok := sharedDay(page)
		return ok && n >= delivered-deliveredAtKill && n <= delivered+clusterMore/6
	})
	for i := range 3 {
		if !strings.Contains(page, fmt.Sprintf(`id="instance-relay-%d" data-state="healthy"`, i)) {
			t.Errorf("relay-0's status page does not show relay-%d healthy:\n%s", i, page[strings.Index(page, `<h2 id="instances"`):strings.Index(page, `<h2 id="delivery"`)])
		}
	}
	n, _ := sharedDay(page)
	t.Logf("the store counts %d recipients of the day for %d delivered (%d by the time relay-2 was killed)", n, delivered, deliveredAtKill)

	if l := fw.ms.LimitReplies(); l.Total() != 0 {
		t.Fatalf("the fake refused %+v for Exchange's limits: the instances together went over them", l)
	}
	t.Logf("%d messages acknowledged and delivered by 3 instances sharing 3 connections and 30 a minute; the fake refused none", len(c.acked))
}

func (c *relayCluster) start(i int) {
	c.lives++
	c.procs[i] = startRelay(c.t, c.bin, c.cfgs[i], filepath.Join(filepath.Dir(c.cfgs[i]), fmt.Sprintf("addrs.%d", c.lives)), c.env...)
}

// send sends n messages, each on a new connection, round robin over the
// instances given; every one must be acknowledged (delivery: queue).
func (c *relayCluster) send(n int, to ...int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	addrs := make([]string, len(to))
	for k, i := range to {
		addrs[k] = c.procs[i].smtpAddr(c.t, ctx)
	}
	for k := range n {
		c.subject++
		subject := fmt.Sprintf("cluster-%d", c.subject)
		msg := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@test>\r\n\r\nbody\r\n", demoMailbox, demoMailbox, subject, subject)
		if err := sendOnNewConnection(relayDial(addrs[k%len(addrs)], demoUser), []byte(msg)); err != nil {
			c.t.Fatalf("message %d to instance %d: %v", c.subject, to[k%len(to)], err)
		}
		c.acked[subject] = true
	}
}

// waitDelivered waits until the fake accepted n messages in all.
func (c *relayCluster) waitDelivered(n int, what string) {
	c.t.Helper()
	deadline := time.Now().Add(clusterWait)
	for len(c.fw.ms.Messages()) < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: %d delivered of %d after %v\n%s", what, len(c.fw.ms.Messages()), n, clusterWait, c.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAll waits until every acknowledged message was delivered.
func (c *relayCluster) waitAll(what string) {
	c.t.Helper()
	deadline := time.Now().Add(clusterWait)
	for {
		got := map[string]bool{}
		for _, m := range c.fw.ms.Messages() {
			if _, rest, ok := strings.Cut(string(m.Data), "\r\nSubject: "); ok {
				subject, _, _ := strings.Cut(rest, "\r\n")
				got[subject] = true
			}
		}
		missing := 0
		for h := range c.acked {
			if !got[h] {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: %d of %d acknowledged messages not delivered after %v\n%s", what, missing, len(c.acked), clusterWait, c.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog waits until every instance's log says text.
func (c *relayCluster) waitLog(text string) {
	c.t.Helper()
	deadline := time.Now().Add(clusterWait)
	for {
		all := true
		for _, p := range c.procs {
			all = all && strings.Contains(p.log.String(), text)
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("not every instance logged %q within %v\n%s", text, clusterWait, c.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *relayCluster) logs() string {
	var b strings.Builder
	for i, p := range c.procs {
		fmt.Fprintf(&b, "--- relay-%d\n%s", i, p.log.String())
	}
	return b.String()
}

var sharedDayRE = regexp.MustCompile(`(\d+) recipients in the last 24 h on all instances`)

// sharedDay reads the mailbox's shared day count off a status page.
func sharedDay(page string) (int, bool) {
	m := sharedDayRE.FindStringSubmatch(page)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// waitStatus fetches relay-0's status page until ok(page) holds, bounded
// by clusterWait, and returns it.
func (c *relayCluster) waitStatus(ok func(string) bool) string {
	c.t.Helper()
	var addr string
	deadline := time.Now().Add(clusterWait)
	for addr == "" {
		text, _ := os.ReadFile(c.procs[0].addrFile)
		for line := range strings.Lines(string(text)) {
			if v, found := strings.CutPrefix(strings.TrimSpace(line), "admin="); found {
				addr = v
			}
		}
		if addr == "" && time.Now().After(deadline) {
			c.t.Fatalf("relay-0 has no admin= address:\n%s", text)
		}
		time.Sleep(20 * time.Millisecond)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	var page string
	for {
		resp, err := client.Get("http://" + addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			page = string(b)
			if resp.StatusCode == http.StatusOK && ok(page) {
				return page
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("relay-0's status page (err %v) did not show what was expected within %v:\n%s", err, clusterWait, page)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
