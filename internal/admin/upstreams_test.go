package admin

// /readyz and the status page name an upstream mail server that does not
// accept connections. The world: a fake Microsoft 365 for tokens and IMAP,
// and an SMTP "upstream" that is a plain TCP port on 127.0.0.1 the test
// stops and starts again, used by two providers (so one address is probed
// once for both).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// upstreamWait bounds every wait of these tests.
const upstreamWait = 10 * time.Second

// togglePort is a TCP port on 127.0.0.1 that accepts and at once closes
// connections, and records the client address of each, until stopped; it
// can be started again on the same port.
type togglePort struct {
	t    *testing.T
	addr string

	mu       sync.Mutex
	ln       net.Listener
	accepted []string // remote addresses, in accept order
	wg       sync.WaitGroup
}

func newTogglePort(t *testing.T) *togglePort {
	g := &togglePort{t: t, addr: "127.0.0.1:0"}
	g.start()
	g.addr = g.ln.Addr().String()
	t.Cleanup(g.stop)
	return g
}

func (g *togglePort) start() {
	g.t.Helper()
	ln, err := net.Listen("tcp", g.addr)
	if err != nil {
		g.t.Fatalf("listen again on %s: %v", g.addr, err)
	}
	g.mu.Lock()
	g.ln = ln
	g.mu.Unlock()
	g.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.accepted = append(g.accepted, c.RemoteAddr().String())
			g.mu.Unlock()
			c.Close()
		}
	})
}

// stop closes the port (connections are then refused) and waits for its
// accept loop.
func (g *togglePort) stop() {
	g.mu.Lock()
	ln := g.ln
	g.ln = nil
	g.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	g.wg.Wait()
}

// connectionsBefore dials the port once more and returns how many
// connections were accepted before that one: the kernel hands connections
// to Accept in arrival order, so this counts every earlier probe exactly.
func (g *togglePort) connectionsBefore() int {
	g.t.Helper()
	marker, err := net.DialTimeout("tcp", g.addr, upstreamWait)
	if err != nil {
		g.t.Fatal(err)
	}
	defer marker.Close()
	me := marker.LocalAddr().String()
	deadline := time.Now().Add(upstreamWait)
	for {
		g.mu.Lock()
		for i, a := range g.accepted {
			if a == me {
				g.mu.Unlock()
				return i
			}
		}
		g.mu.Unlock()
		if time.Now().After(deadline) {
			g.t.Fatalf("the marker connection was not accepted within %v", upstreamWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// upstreamWorld is an admin server whose providers "daemon" and "daemon2"
// send mail through smtpAddr.
type upstreamWorld struct {
	t    *testing.T
	ms   *fakems.Server
	srv  *Server
	base string
}

func newUpstreamWorld(t *testing.T, smtpAddr string, ttl time.Duration) *upstreamWorld {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ms, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	ms.AddApp(fakems.App{ClientID: daemonAppID, Secret: daemonSecret})
	ms.AddMailbox(alertsBox, "alerts-mailbox-password")
	ms.AddMailbox(invoicesBox, "invoices-mailbox-password")
	ms.GrantApp(daemonAppID, alertsBox)
	ms.GrantApp(daemonAppID, invoicesBox)

	provider := func(name string) string {
		return fmt.Sprintf(`  %s:
    type: microsoft
    tenant: %s
    client_id: %s
    client_secret: %q
    token_url: %s
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    ca_file: %s
`, name, ms.Tenant, daemonAppID, daemonSecret, ms.TokenURL, smtpAddr, ms.IMAPAddr, ms.CAFile)
	}
	yaml := fmt.Sprintf(`
state_dir: %s
listen:
  smtp: {addr: "127.0.0.1:0"}
  imap: {addr: "127.0.0.1:0"}
  pop3: {addr: "off"}
  admin: {addr: "127.0.0.1:0"}
providers:
%s%saccounts:
  - {name: alerts, provider: daemon, mailbox: %s, username: monitor, password_hash: %q}
  - {name: invoices, provider: daemon2, mailbox: %s, username: erp, password_hash: %q}
`, t.TempDir(), provider("daemon"), provider("daemon2"), alertsBox, localHash, invoicesBox, localHash)
	cfg, err := config.Parse("test.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := testutil.Logger(t)
	relay, err := proxy.NewRelay(cfg, proxy.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() { defer close(runDone); relay.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })

	srv := New(relay, nil, Options{})
	srv.upstreams.ttl = ttl
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), upstreamWait)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	w := &upstreamWorld{t: t, ms: ms, srv: srv, base: "http://" + ln.Addr().String()}
	for _, a := range relay.Accounts() {
		w.waitTokenOK(a)
	}
	return w
}

func (w *upstreamWorld) waitTokenOK(a *proxy.Account) {
	w.t.Helper()
	deadline := time.Now().Add(upstreamWait)
	for a.Source.State().Status.String() != "ok" {
		if time.Now().After(deadline) {
			w.t.Fatalf("account %s: token %s, want ok", a.Name, a.Source.State().Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *upstreamWorld) get(path string) (int, string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), upstreamWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.base+path, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitReadyz polls /readyz (bounded) until cond holds for its answer.
func (w *upstreamWorld) waitReadyz(what string, cond func(code int, body string) bool) (int, string) {
	w.t.Helper()
	deadline := time.Now().Add(upstreamWait)
	for {
		code, body := w.get("/readyz")
		if cond(code, body) {
			return code, body
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("/readyz not %s within %v: %d\n%s", what, upstreamWait, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The upstream goes away: /readyz turns 503 naming each provider that uses
// it, with the protocol and address and no error text; the status page
// says the same. It comes back: once the cached answer is older than the
// cache interval, /readyz is 200 again.
func TestReadyzUpstreamUnreachable(t *testing.T) {
	up := newTogglePort(t)
	w := newUpstreamWorld(t, up.addr, 50*time.Millisecond)
	if code, body := w.get("/readyz"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("/readyz with the upstream up: %d\n%s", code, body)
	}

	up.stop()
	wantLines := []string{
		"upstream daemon smtp " + up.addr + ": unreachable",
		"upstream daemon2 smtp " + up.addr + ": unreachable",
	}
	_, body := w.waitReadyz("503 naming the upstream", func(code int, body string) bool {
		return code == http.StatusServiceUnavailable && strings.Contains(body, wantLines[0])
	})
	for _, want := range wantLines {
		if !strings.Contains(body, want) {
			t.Errorf("/readyz lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, w.ms.IMAPAddr) || strings.Contains(body, "refused") || strings.Contains(body, "account ") {
		t.Errorf("/readyz names more than the unreachable upstream (or a reason):\n%s", body)
	}
	code, page := w.get("/")
	want := "Upstream unreachable: daemon SMTP " + up.addr + " (connection refused); daemon2 SMTP " + up.addr + " (connection refused)."
	if code != http.StatusOK || !strings.Contains(page, want) {
		t.Errorf("status page: %d, lacks %q:\n%s", code, want, page)
	}

	up.start()
	w.waitReadyz("200 again", func(code int, body string) bool { return code == http.StatusOK && body == "ready\n" })
	if _, page := w.get("/"); strings.Contains(page, "Upstream unreachable") {
		t.Errorf("status page still shows the upstream as unreachable:\n%s", page)
	}
}

// Within the cache interval, readiness probes from many clients at once
// cost the provider one connection per address: concurrent requests share
// one round of probes, and later ones reuse its answer.
func TestUpstreamProbesCached(t *testing.T) {
	up := newTogglePort(t)
	w := newUpstreamWorld(t, up.addr, probeCacheTTL)
	const clients, rounds = 8, 3
	for range rounds {
		var wg sync.WaitGroup
		codes := make([]int, clients)
		for i := range clients {
			wg.Go(func() { codes[i], _ = w.get("/readyz") })
		}
		wg.Wait()
		for i, code := range codes {
			if code != http.StatusOK {
				t.Errorf("/readyz %d: %d", i, code)
			}
		}
	}
	if _, page := w.get("/"); strings.Contains(page, "Upstream unreachable") {
		t.Errorf("status page shows an unreachable upstream")
	}
	if n := up.connectionsBefore(); n != 1 {
		t.Errorf("%d probe connections to %s for %d requests and a page, want 1", n, up.addr, clients*rounds)
	}
}

// A closed admin server probes nothing: a check after Close reports the
// stale addresses at once, without dialling them.
func TestUpstreamCheckAfterClose(t *testing.T) {
	up := newTogglePort(t)
	c := newUpstreamChecker()
	c.close()
	states := c.check(context.Background(), []upstream{{"p", "smtp", up.addr}})
	if len(states) != 1 || states[0].Err == nil {
		t.Fatalf("check after close: %+v", states)
	}
	if n := up.connectionsBefore(); n != 0 {
		t.Errorf("%d connections after close, want 0", n)
	}
}

// The servers of the providers that accounts use, for the protocols whose
// listener is on, each once.
func TestUpstreamsInUse(t *testing.T) {
	p := &config.Provider{Name: "p", SMTP: config.Upstream{Addr: "smtp.example:587"}, IMAP: config.Upstream{Addr: "imap.example:993"}}
	acc := func(name string, prov *config.Provider) account {
		return account{Account: &config.Account{Name: name, ProviderRef: prov}}
	}
	cfg := &config.Config{}
	cfg.Listen.SMTP.Addr, cfg.Listen.IMAP.Addr = "127.0.0.1:2525", config.AddrOff
	got := upstreamsInUse(cfg, []account{acc("a", p), acc("b", p)})
	if len(got) != 1 || got[0] != (upstream{"p", "smtp", "smtp.example:587"}) {
		t.Errorf("upstreamsInUse = %+v", got)
	}
	// With the POP3 listener on, the provider's POP3 server is in use too.
	p.POP3 = config.Upstream{Addr: "pop.example:995"}
	cfg.Listen.POP3.Addr = "127.0.0.1:1110"
	got = upstreamsInUse(cfg, []account{acc("a", p)})
	if len(got) != 2 || got[0] != (upstream{"p", "pop3", "pop.example:995"}) || got[1].Proto != "smtp" {
		t.Errorf("upstreamsInUse with POP3 = %+v", got)
	}
	cfg.Listen.POP3.Addr = config.AddrOff
	if got = upstreamsInUse(cfg, []account{acc("a", p)}); len(got) != 1 {
		t.Errorf("upstreamsInUse with POP3 off = %+v", got)
	}
}
