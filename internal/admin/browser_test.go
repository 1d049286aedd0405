package admin

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// TestBrowserSignIn drives headless Chromium (Debian's chromium and
// chromium-driver) through the W3C WebDriver protocol: open the status page,
// click Sign in, let the fake identity platform consent and redirect back
// through /oauth2/callback, and see the account's row turn OK. Screenshots
// go to $ARTIFACTS_DIR when set, else to a temporary directory; the test log
// names them.
func TestBrowserSignIn(t *testing.T) {
	chromium, driver := lookBrowser(t)
	w := newWorld(t, worldOptions{})
	w.waitState("invoices", "needs_sign_in")

	wd := startDriver(t, driver)
	sess := wd.newSession(t, chromium)
	sess.navigate(t, w.base+"/")
	if got := sess.text(t, "#account-invoices .state"); got != "Needs sign-in" {
		t.Fatalf("before sign-in the row says %q", got)
	}
	sess.screenshot(t, "admin-status-before-sign-in.png")

	sess.click(t, "#account-invoices button.signin")
	deadline := time.Now().Add(30 * time.Second)
	for {
		state, err := sess.tryText("#account-invoices .state")
		if err == nil && state == "OK" {
			break
		}
		if time.Now().After(deadline) {
			sess.screenshot(t, "admin-status-timeout.png")
			t.Fatalf("the row did not turn OK within 30 s (state %q, err %v, page %s)", state, err, sess.url(t))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if u := sess.url(t); u != w.base+"/?signed_in=invoices" {
		t.Errorf("the browser ended at %s", u)
	}
	if got := sess.text(t, ".notice"); got != "invoices is signed in." {
		t.Errorf("notice %q", got)
	}
	sess.screenshot(t, "admin-status-signed-in.png")
	if code, _ := w.get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after the browser sign-in: %d", code)
	}
}

// lookBrowser finds chromium and chromedriver, or skips the test (fails it
// under CI, where they must be installed).
func lookBrowser(t *testing.T) (chromium, driver string) {
	t.Helper()
	var missing []string
	find := func(names ...string) string {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		missing = append(missing, names[0])
		return ""
	}
	chromium = find("chromium", "chromium-browser")
	driver = find("chromedriver")
	if len(missing) > 0 {
		msg := "not installed: " + strings.Join(missing, ", ") + " (apt-get install chromium chromium-driver)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return chromium, driver
}

// webDriver is a chromedriver process and its address.
type webDriver struct {
	base string
	c    *http.Client
}

func startDriver(t *testing.T, path string) *webDriver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	log := &testutil.Buf{}
	cmd := exec.Command(path, "--port="+strconv.Itoa(port), "--allowed-ips=127.0.0.1")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("chromedriver output:\n%s", log.String())
		}
	})
	wd := &webDriver{base: fmt.Sprintf("http://127.0.0.1:%d", port), c: &http.Client{Timeout: time.Minute}}
	deadline := time.Now().Add(15 * time.Second)
	for {
		var st struct {
			Ready bool `json:"ready"`
		}
		if err := wd.call("GET", "/status", nil, &st); err == nil && st.Ready {
			return wd
		}
		if time.Now().After(deadline) {
			t.Fatalf("chromedriver not ready after 15 s:\n%s", log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// call sends a WebDriver command and decodes its "value" into out.
func (wd *webDriver) call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, wd.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := wd.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s %s: HTTP %d: %w", method, path, resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		json.Unmarshal(env.Value, &e)
		return fmt.Errorf("%s %s: %s: %s", method, path, e.Error, firstLineOf(e.Message))
	}
	if out != nil {
		return json.Unmarshal(env.Value, out)
	}
	return nil
}

func firstLineOf(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// session is one browser.
type session struct {
	wd   *webDriver
	id   string
	path string // /session/{id}
}

func (wd *webDriver) newSession(t *testing.T, chromium string) *session {
	t.Helper()
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName": "chrome",
		"goog:chromeOptions": map[string]any{
			"binary": chromium,
			"args": []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
				"--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1400,700",
				"--user-data-dir=" + t.TempDir()},
		},
	}}}
	var out struct {
		SessionID string `json:"sessionId"`
	}
	if err := wd.call("POST", "/session", caps, &out); err != nil {
		t.Fatal(err)
	}
	s := &session{wd: wd, id: out.SessionID, path: "/session/" + out.SessionID}
	t.Cleanup(func() { wd.call("DELETE", s.path, nil, nil) })
	return s
}

func (s *session) navigate(t *testing.T, url string) {
	t.Helper()
	if err := s.wd.call("POST", s.path+"/url", map[string]string{"url": url}, nil); err != nil {
		t.Fatal(err)
	}
}

// resize sets the browser window's size.
func (s *session) resize(t *testing.T, width, height int) {
	t.Helper()
	if err := s.wd.call("POST", s.path+"/window/rect", map[string]int{"width": width, "height": height}, nil); err != nil {
		t.Fatal(err)
	}
}

func (s *session) url(t *testing.T) string {
	t.Helper()
	var u string
	if err := s.wd.call("GET", s.path+"/url", nil, &u); err != nil {
		t.Fatal(err)
	}
	return u
}

// elementKey is the W3C web element identifier.
const elementKey = "element-6066-11e4-a52e-4f735466cecf"

func (s *session) find(css string) (string, error) {
	var el map[string]string
	if err := s.wd.call("POST", s.path+"/element", map[string]string{"using": "css selector", "value": css}, &el); err != nil {
		return "", err
	}
	return el[elementKey], nil
}

func (s *session) tryText(css string) (string, error) {
	id, err := s.find(css)
	if err != nil {
		return "", err
	}
	var text string
	err = s.wd.call("GET", s.path+"/element/"+id+"/text", nil, &text)
	return text, err
}

func (s *session) text(t *testing.T, css string) string {
	t.Helper()
	text, err := s.tryText(css)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

func (s *session) click(t *testing.T, css string) {
	t.Helper()
	id, err := s.find(css)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.wd.call("POST", s.path+"/element/"+id+"/click", map[string]any{}, nil); err != nil {
		t.Fatal(err)
	}
}

// screenshot saves a PNG of the window to $ARTIFACTS_DIR or a temporary
// directory.
func (s *session) screenshot(t *testing.T, name string) {
	t.Helper()
	var b64 string
	if err := s.wd.call("GET", s.path+"/screenshot", nil, &b64); err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	png, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Errorf("artifacts: %v", err)
		return
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
}

// TestBrowserMessageLog renders the delivery sections in headless Chromium
// after real traffic (a direct message, a queued one, one cut off during
// DATA and deferred) and takes a screenshot of the page with its message
// log; the search box finds the invoice.
func TestBrowserMessageLog(t *testing.T) {
	chromium, driver := lookBrowser(t)
	w := newWorld(t, worldOptions{queueAlerts: true})
	w.waitState("alerts", "ok")
	if code, body := w.signIn("invoices"); code != http.StatusOK {
		t.Fatalf("sign-in: %d %s", code, body)
	}
	w.waitState("invoices", "ok")
	for _, id := range []string{"invoice-4710", "invoice-4711"} {
		w.send("invoices", invoicesBox, []string{"customer@example.net", "accounts@example.net"}, invoiceMessage(id))
	}
	w.send("alerts", alertsBox, []string{"oncall@example.net"}, invoiceMessage("alert-1"))
	w.waitLog("alerts", "delivered", 1)
	w.ms.DropNextDataAfter(10)
	w.send("alerts", alertsBox, []string{"oncall@example.net"}, invoiceMessage("alert-2"))
	w.waitLog("alerts", "deferred", 1)

	wd := startDriver(t, driver)
	sess := wd.newSession(t, chromium)
	sess.resize(t, 1400, 1300)
	sess.navigate(t, w.base+"/#delivery")
	if got := sess.text(t, "#delivery-alerts dd.depth"); !strings.HasPrefix(got, "1 msg") {
		t.Errorf("alerts queue depth reads %q", got)
	}
	if got := sess.text(t, "#delivery-invoices tr.msg td.msgid"); got != "<invoice-4711@contoso.com>" {
		t.Errorf("the newest invoices message reads %q", got)
	}
	sess.screenshot(t, "admin-status-message-log.png")

	sess.navigate(t, w.base+"/?q=4711#delivery")
	if got := sess.text(t, "#delivery-invoices .lognote"); got != `1 of the last 2 messages match "4711"` {
		t.Errorf("the search says %q", got)
	}
}

// TestBrowserInstances renders the Instances section in headless Chromium
// for a relay sharing its store with another instance that has a backlog,
// and takes a screenshot of it.
func TestBrowserInstances(t *testing.T) {
	chromium, driver := lookBrowser(t)
	r := testutil.StartRedis(t)
	w := newWorld(t, worldOptions{queueAlerts: true, cluster: r})
	w.waitState("alerts", "ok")
	b := joinAs(t, r, "relay-b", &cluster.QueueStats{Depth: 5, InFlight: 1, Oldest: time.Now().Add(-3 * time.Minute)})
	t.Cleanup(func() { b.Close() })
	w.waitPage(t, "both instances", `id="instance-relay-a"`, `id="instance-relay-b"`)

	wd := startDriver(t, driver)
	sess := wd.newSession(t, chromium)
	sess.resize(t, 1400, 900)
	sess.navigate(t, w.base+"/#instances")
	if got := sess.text(t, "#instance-relay-b td.depth"); got != "5" {
		t.Errorf("relay-b's queue reads %q", got)
	}
	if got := sess.text(t, "#instance-relay-a .state"); got != "healthy" {
		t.Errorf("relay-a reads %q", got)
	}
	sess.screenshot(t, "admin-status-instances.png")
}
