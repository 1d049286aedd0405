package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// The world of these tests: a fake Microsoft 365 on 127.0.0.1 with two app
// registrations, and a relay with two accounts behind the admin server on a
// real loopback listener:
//   - invoices: authorization code (a web app with a secret), not signed in
//     yet, so it needs sign-in until a test signs in;
//   - alerts: client credentials, which gets its token at once.
const (
	webAppID     = "22222222-aaaa-bbbb-cccc-000000000002"
	webSecret    = "web-app-secret-value-do-not-show"
	daemonAppID  = "33333333-aaaa-bbbb-cccc-000000000003"
	daemonSecret = "daemon-app-secret-value-do-not-show"
	invoicesBox  = "invoices@contoso.com"
	deskAppID    = "44444444-aaaa-bbbb-cccc-000000000004" // public client, device code
	deskBox      = "frontdesk@contoso.com"
	alertsBox    = "alerts@contoso.com"
	adminUser    = "ops"
	adminPass    = "admin-password-for-tests"
)

var localHash = hash("erp-local-password")

func hash(pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}

type worldOptions struct {
	basicAuth bool         // protect the admin pages with adminUser/adminPass
	ready     func() error // Options.Ready
	// queueAlerts gives alerts delivery: queue (a spool in state_dir).
	queueAlerts bool
	// device adds the account frontdesk (mailbox deskBox), device code
	// grant with a public client, not signed in yet.
	device bool
	// tls serves the admin pages over HTTPS with this certificate.
	tls *testutil.LocalCert
	// autoAlerts gives alerts upstream: auto (SMTP, or Graph).
	autoAlerts bool
	// accounts are more accounts (YAML list items; %[1]s is the local
	// password's hash, %[2]s the daemon provider's name).
	accounts string
	// cluster shares the relay's limits in this redis-server as the
	// instance relay-a, which publishes its queue there.
	cluster *testutil.Redis
}

type world struct {
	t       *testing.T
	ctx     context.Context
	ms      *fakems.Server
	relay   *proxy.Relay
	metrics *Metrics
	srv     *Server
	store   *tokenstore.Store
	base    string // http://127.0.0.1:PORT (https with worldOptions.tls)
	log     *testutil.Buf
	opts    worldOptions
	// transport trusts worldOptions.tls; nil: the default.
	transport http.RoundTripper
	// cluster is the store of worldOptions.cluster.
	cluster *cluster.Store
}

func newWorld(t *testing.T, o worldOptions) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ms, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	auth := ""
	base := "http://" + ln.Addr().String()
	var transport http.RoundTripper
	if o.tls != nil {
		base = "https://" + ln.Addr().String()
		tr := &http.Transport{TLSClientConfig: o.tls.ClientTLS()}
		t.Cleanup(tr.CloseIdleConnections)
		transport = tr
		auth += fmt.Sprintf(", cert_file: %q, key_file: %q", o.tls.CertFile, o.tls.KeyFile)
	}
	ms.AddApp(fakems.App{ClientID: webAppID, Secret: webSecret, RedirectURIs: []string{base + "/oauth2/callback"}})
	ms.AddApp(fakems.App{ClientID: daemonAppID, Secret: daemonSecret})
	ms.AddMailbox(invoicesBox, "invoices-mailbox-password")
	ms.AddMailbox(alertsBox, "alerts-mailbox-password")
	ms.GrantApp(daemonAppID, alertsBox)

	if o.basicAuth {
		auth += fmt.Sprintf(", username: %s, password_hash: %q", adminUser, hash(adminPass))
	}
	yaml := fmt.Sprintf(`
state_dir: %s
listen:
  smtp: {addr: "off"}
  imap: {addr: "off"}
  pop3: {addr: "off"}
  admin: {addr: %q%s}
providers:
  web:
    type: microsoft
    tenant: %[4]s
    client_id: %[5]s
    client_secret: %[6]q
    grant: authorization_code
    token_url: %[7]s
    authorize_url: %[8]s
    smtp: {addr: %[9]q, tls: starttls}
    imap: {addr: %[10]q, tls: implicit}
    ca_file: %[11]s
  daemon:
    type: microsoft
    tenant: %[4]s
    client_id: %[12]s
    client_secret: %[13]q
    token_url: %[7]s
    graph: {url: %[17]q}
    smtp: {addr: %[9]q, tls: starttls}
    imap: {addr: %[10]q, tls: implicit}
    ca_file: %[11]s
accounts:
  - name: invoices
    provider: web
    mailbox: %[14]s
    username: erp
    password_hash: %[16]q
  - name: alerts
    provider: daemon
    mailbox: %[15]s
    username: monitor
    password_hash: %[16]q
`, t.TempDir(), ln.Addr().String(), auth, ms.Tenant, webAppID, webSecret, ms.TokenURL, ms.AuthorizeURL,
		ms.SMTPAddr, ms.IMAPAddr, ms.CAFile, daemonAppID, daemonSecret, invoicesBox, alertsBox, localHash, ms.GraphURL)
	if o.autoAlerts {
		yaml += "    upstream: auto\n"
	}
	if o.queueAlerts {
		yaml += "    delivery: queue\n" // alerts is the last account
	}
	if o.device {
		ms.AddApp(fakems.App{ClientID: deskAppID, PublicClient: true})
		ms.AddMailbox(deskBox, "desk-mailbox-password")
		yaml = strings.Replace(yaml, "\naccounts:\n", fmt.Sprintf(`
  desk:
    type: microsoft
    tenant: %s
    client_id: %s
    grant: device_code
    token_url: %s
    device_url: %s
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    ca_file: %s
accounts:
`, ms.Tenant, deskAppID, ms.TokenURL, ms.DeviceURL, ms.SMTPAddr, ms.IMAPAddr, ms.CAFile), 1)
		yaml += fmt.Sprintf("  - name: frontdesk\n    provider: desk\n    mailbox: %s\n    username: desk\n    password_hash: %q\n", deskBox, localHash)
	}
	if o.accounts != "" {
		yaml += fmt.Sprintf(o.accounts, localHash, "daemon")
	}
	if o.cluster != nil {
		yaml += fmt.Sprintf("cluster: {store: %q, instance: relay-a}\n", o.cluster.URL)
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	store, err := tokenstore.Open(t.TempDir(), key)
	if err != nil {
		t.Fatal(err)
	}
	logger, buf := testutil.Logger(t)
	m := NewMetrics()
	ropts := proxy.Options{Logger: logger, Store: store, Observer: m}
	var cl *cluster.Store
	if o.cluster != nil {
		if cl, err = cluster.Open(cfg.Cluster, logger); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() }) // after the relay's Senders
		ropts.Shared = cl
	}
	relay, err := proxy.NewRelay(cfg, ropts)
	if err != nil {
		t.Fatal(err)
	}
	aopts := Options{Store: store, Ready: o.ready}
	if cl != nil {
		// What serve publishes (cmd/oauthrelay's queueStats).
		cl.PublishQueue(func() (cluster.QueueStats, bool) {
			st, ok, _ := relay.QueueStats()
			return cluster.QueueStats{Depth: st.Depth, InFlight: st.InFlight, Failed: st.Failed, Oldest: st.Oldest}, ok
		})
		cl.Join()
		aopts.Cluster = cl
	}
	runCtx, stopRelay := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); relay.Run(runCtx) }()
	// After the server's Shutdown (registered below, so run first) and
	// before the fake closes.
	t.Cleanup(func() { stopRelay(); <-ran })
	srv := New(relay, m, aopts)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &world{t: t, ctx: ctx, ms: ms, relay: relay, metrics: m, srv: srv, store: store, base: base, log: buf, opts: o,
		transport: transport, cluster: cl}
}

func (w *world) account(name string) *proxy.Account {
	for _, a := range w.relay.Accounts() {
		if a.Name == name {
			return a
		}
	}
	w.t.Fatalf("no account %s", name)
	return nil
}

// do sends a request (with the admin password when the world has one) and
// returns the status and body. c nil: a client that does not follow
// redirects.
func (w *world) do(c *http.Client, method, path string, form url.Values, hdr http.Header) (*http.Response, string) {
	w.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(w.ctx, method, w.base+path, body)
	if err != nil {
		w.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if w.opts.basicAuth && req.Header.Get("Authorization") == "" {
		req.SetBasicAuth(adminUser, adminPass)
	}
	if c == nil {
		c = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if c.Transport == nil {
		c.Transport = w.transport
	}
	resp, err := c.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatal(err)
	}
	return resp, string(b)
}

func (w *world) get(path string) (int, string) {
	w.t.Helper()
	resp, body := w.do(nil, "GET", path, nil, nil)
	return resp.StatusCode, body
}

// waitState waits (bounded) until the account's token reaches status.
func (w *world) waitState(name, status string) {
	w.t.Helper()
	a := w.account(name)
	deadline := time.Now().Add(10 * time.Second)
	for a.Source.State().Status.String() != status {
		if time.Now().After(deadline) {
			w.t.Fatalf("account %s: token state %s, want %s", name, a.Source.State().Status, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

// signIn runs the Sign in of the status page with a Go client that follows
// redirects like a browser: the form POST, the fake identity provider
// (which consents at once), the callback, and back to the page.
func (w *world) signIn(account string) (int, string) {
	w.t.Helper()
	_, page := w.get("/")
	mm := csrfRE.FindStringSubmatch(page)
	if mm == nil {
		w.t.Fatalf("no Sign in form on the page:\n%s", page)
	}
	c := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if w.opts.basicAuth && strings.HasPrefix(req.URL.String(), w.base) {
			req.SetBasicAuth(adminUser, adminPass) // a browser resends cached credentials
		}
		return nil
	}}
	resp, body := w.do(c, "POST", "/signin", url.Values{"csrf": {mm[1]}, "account": {account}}, nil)
	return resp.StatusCode, body
}

// assertNoSecrets fails if body holds a secret, a password hash or a token.
func (w *world) assertNoSecrets(what, body string) {
	w.t.Helper()
	secrets := map[string]string{
		"web client secret": webSecret, "daemon client secret": daemonSecret,
		"local password hash": localHash, "local password": "erp-local-password",
		"admin password": adminPass, "mailbox password": "invoices-mailbox-password",
	}
	if rec, err := w.store.Load("invoices"); err == nil {
		secrets["refresh token"] = rec.RefreshToken
	}
	for _, name := range []string{"invoices", "alerts"} {
		a := w.account(name)
		if a.Source.State().Status.String() == "ok" {
			ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
			tok, err := a.Source.Token(ctx)
			cancel()
			if err == nil {
				secrets[name+" access token"] = tok
			}
		}
	}
	for name, s := range secrets {
		if s != "" && strings.Contains(body, s) {
			w.t.Errorf("%s shows the %s", what, name)
		}
	}
}

func TestHealthz(t *testing.T) {
	w := newWorld(t, worldOptions{})
	code, body := w.get("/healthz")
	if code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
}

func TestReadyzFollowsSignIn(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.waitState("alerts", "ok")
	w.waitState("invoices", "needs_sign_in")
	code, body := w.get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "account invoices: token needs_sign_in") ||
		strings.Contains(body, "alerts") {
		t.Fatalf("/readyz before sign-in: %d\n%s", code, body)
	}

	code, page := w.signIn("invoices")
	if code != 200 || !strings.Contains(page, `id="account-invoices" data-state="ok"`) || !strings.Contains(page, "invoices is signed in.") {
		t.Fatalf("after sign-in: %d\n%s", code, page)
	}
	w.assertNoSecrets("the page after sign-in", page)
	if rec, err := w.store.Load("invoices"); err != nil || rec.RefreshToken == "" {
		t.Fatalf("no refresh token stored: %v", err)
	}
	code, body = w.get("/readyz")
	if code != 200 || body != "ready\n" {
		t.Fatalf("/readyz after sign-in: %d\n%s", code, body)
	}
}

func TestReadyzListeners(t *testing.T) {
	w := newWorld(t, worldOptions{ready: func() error { return errors.New("smtp: not listening on 127.0.0.1:2525") }})
	code, body := w.get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "listeners: not up") {
		t.Fatalf("/readyz: %d\n%s", code, body)
	}
}

func TestStatusPage(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.waitState("alerts", "ok")
	w.waitState("invoices", "needs_sign_in")
	a := w.account("invoices")
	w.metrics.Message(a.Info(), 2048)
	w.metrics.Message(a.Info(), 1024)
	w.metrics.Login("smtp", a.Info(), "bad_credentials")

	resp, page := w.do(nil, "GET", "/", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q", csp)
	}
	for _, want := range []string{
		`id="account-invoices" data-state="bad"`, "Needs sign-in", "web (microsoft)", "authorization code",
		`id="account-alerts" data-state="ok"`, "daemon (microsoft)", "client credentials",
		"2 msg", "3.0 KiB", // invoices' messages
		"Not signed in", "Fix:", // the token error, in plain words
		invoicesBox, alertsBox,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Sign in only for the authorization code account.
	if n := strings.Count(page, `class="signin`); n != 1 {
		t.Errorf("%d Sign in buttons, want 1", n)
	}
	w.assertNoSecrets("the status page", page)
	t.Logf("token error shown: %s", w.account("invoices").Source.State().Err)
}

func TestSignInGuards(t *testing.T) {
	w := newWorld(t, worldOptions{})
	_, page := w.get("/")
	csrf := csrfRE.FindStringSubmatch(page)[1]

	resp, body := w.do(nil, "POST", "/signin", url.Values{"account": {"invoices"}}, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "did not come from this page") {
		t.Errorf("POST without token: %d", resp.StatusCode)
	}
	resp, _ = w.do(nil, "POST", "/signin", url.Values{"csrf": {csrf}, "account": {"invoices"}},
		http.Header{"Sec-Fetch-Site": {"cross-site"}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site POST: %d", resp.StatusCode)
	}
	resp, _ = w.do(nil, "GET", "/signin?account=invoices", nil, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /signin: %d", resp.StatusCode)
	}
	resp, _ = w.do(nil, "POST", "/signin", url.Values{"csrf": {csrf}, "account": {"alerts"}}, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("Sign in for a client credentials account: %d", resp.StatusCode)
	}
	resp, body = w.do(nil, "GET", "/oauth2/callback?code=x&state=forged", nil, nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "unknown or older than 10 minutes") {
		t.Errorf("callback with unknown state: %d", resp.StatusCode)
	}

	// A real start: the redirect goes to the identity provider with PKCE,
	// state and our callback.
	resp, _ = w.do(nil, "POST", "/signin", url.Values{"csrf": {csrf}, "account": {"invoices"}}, nil)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusSeeOther || err != nil || !strings.HasPrefix(loc.String(), w.ms.AuthorizeURL) {
		t.Fatalf("POST /signin: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	q := loc.Query()
	if q.Get("redirect_uri") != w.base+"/oauth2/callback" || q.Get("code_challenge_method") != "S256" ||
		q.Get("login_hint") != invoicesBox || q.Get("state") == "" {
		t.Errorf("authorize query: %v", q)
	}
	// The user declines: the page says so in plain words, and the state is
	// used up.
	decline := "/oauth2/callback?" + url.Values{"state": {q.Get("state")}, "error": {"access_denied"},
		"error_description": {"AADSTS65004: User declined to consent to access the app."}}.Encode()
	resp, body = w.do(nil, "GET", decline, nil, nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "declined") || !strings.Contains(body, "AADSTS65004") {
		t.Errorf("declined callback: %d\n%s", resp.StatusCode, body)
	}
	resp, _ = w.do(nil, "GET", decline, nil, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed callback: %d", resp.StatusCode)
	}
}

func TestMetrics(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.waitState("alerts", "ok")
	w.waitState("invoices", "needs_sign_in")
	m, inv := w.metrics, w.account("invoices")
	m.Connection("smtp", 1)
	m.Connection("smtp", 1)
	m.Connection("smtp", -1)
	m.Connection("imap", 1)
	m.Login("smtp", inv.Info(), "ok")
	m.Login("smtp", events.Account{}, "bad_credentials")
	m.Upstream("smtp", inv.Info(), "ok", 120*time.Millisecond)
	m.Upstream("imap", inv.Info(), "unavailable", 15*time.Second)
	m.Message(inv.Info(), 1000)
	m.Message(inv.Info(), 500)
	m.Transferred(events.IMAP, inv.Info(), 10, 20000)
	m.Connection("pop3", 1)
	m.Login("pop3", inv.Info(), "ok")
	m.Upstream("pop3", inv.Info(), "ok", 80*time.Millisecond)
	m.Transferred(events.POP3, inv.Info(), 7, 3000)

	resp, body := w.do(nil, "GET", "/metrics", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	want := map[string]float64{
		`oauthrelay_connections_total{proto="smtp"}`:                                            2,
		`oauthrelay_connections_active{proto="smtp"}`:                                           1,
		`oauthrelay_connections_active{proto="imap"}`:                                           1,
		`oauthrelay_sessions_total{proto="smtp"}`:                                               1,
		`oauthrelay_sessions_total{proto="imap"}`:                                               0,
		`oauthrelay_local_logins_total{proto="smtp",result="ok"}`:                               1,
		`oauthrelay_local_logins_total{proto="smtp",result="bad_credentials"}`:                  1,
		`oauthrelay_upstream_logins_total{proto="smtp",result="ok"}`:                            1,
		`oauthrelay_upstream_logins_total{proto="imap",result="unavailable"}`:                   1,
		`oauthrelay_upstream_login_duration_seconds_bucket{proto="smtp",result="ok",le="0.25"}`: 1,
		`oauthrelay_upstream_login_duration_seconds_bucket{proto="smtp",result="ok",le="0.1"}`:  0,
		`oauthrelay_messages_total{account="invoices"}`:                                         2,
		`oauthrelay_message_bytes_total{account="invoices"}`:                                    1500,
		`oauthrelay_imap_bytes_total{account="invoices",direction="out"}`:                       20000,
		`oauthrelay_pop3_bytes_total{account="invoices",direction="out"}`:                       3000,
		`oauthrelay_pop3_bytes_total{account="invoices",direction="in"}`:                        7,
		`oauthrelay_connections_active{proto="pop3"}`:                                           1,
		`oauthrelay_sessions_total{proto="pop3"}`:                                               1,
		`oauthrelay_local_logins_total{proto="pop3",result="ok"}`:                               1,
		`oauthrelay_token_state{account="alerts",state="ok"}`:                                   1,
		`oauthrelay_token_state{account="invoices",state="needs_sign_in"}`:                      1,
		`oauthrelay_token_state{account="invoices",state="ok"}`:                                 0,
		`oauthrelay_account_info{account="invoices",grant="authorization_code",provider="web"}`: 1,
	}
	for series, v := range want {
		got, ok := sample(body, series)
		if !ok {
			t.Errorf("no sample %s", series)
		} else if got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
	// The client credentials token request was counted, classed by oauth.
	if n, _ := sample(body, `oauthrelay_token_requests_total{account="alerts",result="ok"}`); n < 1 {
		t.Errorf("token requests ok = %v, want ≥ 1", n)
	}
	if _, ok := sample(body, `oauthrelay_token_requests_total{account="alerts",result="transient"}`); ok {
		t.Error("a transient token failure counted where none happened")
	}
	// invoices has no refresh token yet: its attempts are needs_sign_in.
	if n, _ := sample(body, `oauthrelay_token_requests_total{account="invoices",result="needs_sign_in"}`); n < 1 {
		t.Errorf("invoices needs_sign_in attempts = %v, want ≥ 1", n)
	}
	exp, ok := sample(body, `oauthrelay_token_expiry_timestamp_seconds{account="alerts"}`)
	if now := float64(time.Now().Unix()); !ok || exp < now+30*60 || exp > now+91*60 {
		t.Errorf("alerts token expiry %v, want 60–90 min from now", exp)
	}
	if _, ok := sample(body, `oauthrelay_token_expiry_timestamp_seconds{account="invoices"}`); ok {
		t.Error("expiry reported for an account without a token")
	}
	for _, family := range []string{"oauthrelay_token_last_success_timestamp_seconds", "oauthrelay_token_request_duration_seconds_bucket",
		"go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(body, "\n"+family) {
			t.Errorf("no family %s", family)
		}
	}
	w.assertNoSecrets("/metrics", body)
}

// sample finds a series' value in the text format.
func sample(body, series string) (float64, bool) {
	for line := range strings.SplitSeq(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return v, err == nil
		}
	}
	return 0, false
}

func TestBasicAuth(t *testing.T) {
	w := newWorld(t, worldOptions{basicAuth: true})
	for _, path := range []string{"/", "/metrics", "/oauth2/callback?state=x"} {
		for _, creds := range [][2]string{{"", ""}, {adminUser, "wrong"}, {"Ops", adminPass}, {"opsx", adminPass}} {
			hdr := http.Header{}
			if creds[0] != "" {
				r, _ := http.NewRequest("GET", "/", nil)
				r.SetBasicAuth(creds[0], creds[1])
				hdr.Set("Authorization", r.Header.Get("Authorization"))
			} else {
				hdr.Set("Authorization", "Bearer none")
			}
			resp, body := w.do(nil, "GET", path, nil, hdr)
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("GET %s as %q: %d", path, creds[0], resp.StatusCode)
			}
			if strings.Contains(body, "invoices") {
				t.Errorf("GET %s as %q shows the accounts", path, creds[0])
			}
		}
	}
	resp, _ := w.do(nil, "POST", "/signin", url.Values{"account": {"invoices"}}, http.Header{"Authorization": {"Basic b3BzOg=="}})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /signin without password: %d", resp.StatusCode)
	}
	// Probes need no password; the right one opens the pages.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, _ := w.do(nil, "GET", path, nil, http.Header{"Authorization": {"Bearer none"}})
		if resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("%s asks for a password", path)
		}
	}
	for _, path := range []string{"/", "/metrics"} {
		if code, _ := w.get(path); code != 200 {
			t.Errorf("GET %s with the password: %d", path, code)
		}
	}
	// Sign in works through basic auth (the browser resends credentials).
	if code, page := w.signIn("invoices"); code != 200 || !strings.Contains(page, `data-state="ok"`) {
		t.Errorf("sign-in with basic auth: %d\n%s", code, page)
	}
	// With a password, a name in Host is fine (a reverse proxy's).
	if resp, _ := w.do(nil, "GET", "/", nil, http.Header{"Host": {"relay.example.com"}}); resp.StatusCode != 200 {
		t.Errorf("named Host with basic auth: %d", resp.StatusCode)
	}
	if !strings.Contains(w.log.String(), "admin login failed") {
		t.Error("failed admin logins are not logged")
	}
	w.assertNoSecrets("the log", w.log.String())
}

func TestHostCheckWithoutPassword(t *testing.T) {
	w := newWorld(t, worldOptions{})
	req, _ := http.NewRequestWithContext(w.ctx, "GET", w.base+"/", nil)
	req.Host = "rebound.attacker.example:8025"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("named Host without password: %d", resp.StatusCode)
	}
	for host, ok := range map[string]bool{
		"127.0.0.1:8025": true, "localhost:8025": true, "[::1]:8025": true, "LOCALHOST": true, "10.1.2.3": true,
		"evil.example": false, "localhost.evil.example:80": false, "": false,
	} {
		if hostAllowed(host) != ok {
			t.Errorf("hostAllowed(%q) = %v", host, !ok)
		}
	}
}

func TestFlowsBounded(t *testing.T) {
	f := flows{m: map[string]*pendingFlow{}}
	f.add("old", &pendingFlow{expires: time.Now().Add(-time.Second)})
	for i := range maxFlows + 5 {
		f.add(strconv.Itoa(i), &pendingFlow{expires: time.Now().Add(flowTTL + time.Duration(i)*time.Millisecond)})
	}
	if len(f.m) != maxFlows {
		t.Errorf("%d pending flows, want %d", len(f.m), maxFlows)
	}
	if f.take("0") != nil || f.take("old") != nil {
		t.Error("the oldest and the expired flows are still there")
	}
	if f.take(strconv.Itoa(maxFlows+4)) == nil {
		t.Error("the newest flow is gone")
	}
	if f.take(strconv.Itoa(maxFlows+4)) != nil {
		t.Error("a flow can be taken twice")
	}
}

func TestWords(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{now, "just now"},
		{now.Add(30 * time.Second), "in 30 s"},
		{now.Add(-59 * time.Minute), "59 min ago"},
		{now.Add(75 * time.Minute), "in 1 h 15 min"},
		{now.Add(-72 * time.Hour), "3 days ago"},
	} {
		if got := relTime(tc.t, now); got != tc.want {
			t.Errorf("relTime(%v) = %q, want %q", tc.t.Sub(now), got, tc.want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for _, r := range []events.LoginResult{"bad_credentials", "unavailable", "needs_attention", "upstream_rejected", "other"} {
		if s := loginWords("smtp", r); !strings.Contains(s, "SMTP") {
			t.Errorf("loginWords(%s) = %q", r, s)
		}
	}
}
