package admin

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

var (
	userCodeRE = regexp.MustCompile(`class="usercode">([A-Z0-9]+)<`)
	verifyRE   = regexp.MustCompile(`class="verify" href="([^"]+)"`)
)

// rowOf returns the status page's table row of account name.
func rowOf(t *testing.T, page, name string) string {
	t.Helper()
	_, rest, ok := strings.Cut(page, `<tr id="account-`+name+`"`)
	if !ok {
		t.Fatalf("no row for %s:\n%s", name, page)
	}
	row, _, _ := strings.Cut(rest, "</tr>")
	return row
}

// TestDeviceSignIn: Sign in on a device code account's row (a CSRF-checked
// POST) shows the provider's code and link in the row and reloads the page
// quickly; a second click shows the same code; once the user approves the
// code at the fake identity platform, the row turns OK and the refresh
// token is in the store.
func TestDeviceSignIn(t *testing.T) {
	w := newWorld(t, worldOptions{device: true})
	w.waitState("frontdesk", "needs_sign_in")
	_, page := w.get("/")
	if !strings.Contains(rowOf(t, page, "frontdesk"), `class="signin urgent"`) {
		t.Fatalf("no urgent Sign in button on frontdesk's row:\n%s", rowOf(t, page, "frontdesk"))
	}
	if !strings.Contains(page, `content="60"`) {
		t.Error("the page reloads faster than every 60 s with no sign-in pending")
	}

	// Without the page's token: refused, and no code asked for.
	resp, _ := w.do(nil, "POST", "/signin", url.Values{"account": {"frontdesk"}}, nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST /signin without the CSRF token: %d", resp.StatusCode)
	}
	resp, _ = w.do(nil, "POST", "/signin", url.Values{"account": {"frontdesk"}, "csrf": {csrfRE.FindStringSubmatch(page)[1]}},
		http.Header{"Sec-Fetch-Site": {"cross-site"}})
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a cross-site POST /signin: %d", resp.StatusCode)
	}
	if _, ok := w.srv.devices.pending("frontdesk"); ok {
		t.Fatal("a refused POST started a sign-in")
	}

	code := w.startDevice(page)
	_, page = w.get("/?device=frontdesk")
	if !strings.Contains(page, "Sign-in for frontdesk started") || !strings.Contains(page, deskBox) {
		t.Errorf("no notice for the device sign-in")
	}
	if !strings.Contains(page, `content="3"`) {
		t.Error("the page does not reload quickly while a sign-in is pending")
	}
	if again := w.startDevice(page); again != code {
		t.Errorf("a second click gave the code %s, the first %s", again, code)
	}

	if err := w.ms.ApproveDevice(code, deskBox); err != nil {
		t.Fatal(err)
	}
	w.waitState("frontdesk", "ok")
	deadline := time.Now().Add(10 * time.Second)
	for w.srv.devices.any() {
		if time.Now().After(deadline) {
			t.Fatal("the sign-in is still pending 10 s after the token was received")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, page = w.get("/")
	row := rowOf(t, page, "frontdesk")
	if !strings.Contains(row, `data-state="ok"`) || strings.Contains(row, "usercode") {
		t.Errorf("after sign-in the row is not OK, or still shows the code:\n%s", row)
	}
	if rec, err := w.store.Load("frontdesk"); err != nil || rec.RefreshToken == "" {
		t.Errorf("no refresh token stored: %v", err)
	}
	w.assertNoSecrets("status page", page)
}

// startDevice presses Sign in on frontdesk's row and returns the code the
// row then shows (with the fake's verification link).
func (w *world) startDevice(page string) string {
	w.t.Helper()
	resp, _ := w.do(nil, "POST", "/signin", url.Values{"account": {"frontdesk"}, "csrf": {csrfRE.FindStringSubmatch(page)[1]}}, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/?device=frontdesk" {
		w.t.Fatalf("POST /signin: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page = w.get("/")
	row := rowOf(w.t, page, "frontdesk")
	m, link := userCodeRE.FindStringSubmatch(row), verifyRE.FindStringSubmatch(row)
	if m == nil || link == nil || link[1] != w.ms.DeviceLoginURL {
		w.t.Fatalf("the row shows no code or not the link %s:\n%s", w.ms.DeviceLoginURL, row)
	}
	return m[1]
}

// TestDeviceSignInStops: a sign-in nobody finishes is cancelled when the
// server stops (goleak in TestMain finds its goroutine otherwise).
func TestDeviceSignInStops(t *testing.T) {
	w := newWorld(t, worldOptions{device: true})
	w.waitState("frontdesk", "needs_sign_in")
	_, page := w.get("/")
	w.startDevice(page)
}

// TestFixLinks: a failing row links to its entry in the page's How to fix
// section, which holds the PowerShell where Exchange needs some.
func TestFixLinks(t *testing.T) {
	w := newWorld(t, worldOptions{})
	w.waitState("invoices", "needs_sign_in")
	w.waitState("alerts", "ok")
	_, page := w.get("/")
	if row := rowOf(t, page, "invoices"); !strings.Contains(row, `href="#fix-sign-in"`) {
		t.Errorf("invoices needs sign-in but links to no fix:\n%s", row)
	}
	if row := rowOf(t, page, "alerts"); strings.Contains(row, "fixlink") {
		t.Errorf("alerts is OK but links to a fix:\n%s", row)
	}
	for _, f := range fixes {
		if !strings.Contains(page, `id="fix-`+f.ID+`"`) {
			t.Errorf("the page has no entry %s", f.ID)
		}
	}
	if !strings.Contains(page, "Set-CASMailbox -Identity &lt;mailbox&gt; -SmtpClientAuthenticationDisabled $false") {
		t.Error("the fixes lack the Set-CASMailbox line")
	}
	// An upstream refusal links to the mailbox access entry.
	w.metrics.Upstream(events.SMTP, events.Account{Name: "alerts"}, events.UpstreamRejected, time.Millisecond)
	_, page = w.get("/")
	if row := rowOf(t, page, "alerts"); !strings.Contains(row, `href="#fix-mailbox-access"`) {
		t.Errorf("an upstream refusal links to no fix:\n%s", row)
	}
}

// TestAdminTLS: with cert_file and key_file the pages are HTTPS (a plain
// HTTP request is refused), and the authorization code sign-in's redirect
// comes back to the https callback.
func TestAdminTLS(t *testing.T) {
	cert := testutil.NewLocalCert(t)
	w := newWorld(t, worldOptions{tls: cert})
	if !strings.HasPrefix(w.base, "https://") {
		t.Fatal(w.base)
	}
	if code, body := w.get("/"); code != http.StatusOK || !strings.Contains(body, "oauthrelay") {
		t.Fatalf("GET / over HTTPS: %d", code)
	}
	plain := "http://" + strings.TrimPrefix(w.base, "https://") + "/"
	resp, err := http.Get(plain)
	if err != nil {
		t.Fatalf("plain HTTP: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain HTTP to the HTTPS listener: %d", resp.StatusCode)
	}
	if code, body := w.signIn("invoices"); code != http.StatusOK || !strings.Contains(body, "invoices is signed in.") {
		t.Fatalf("sign-in over HTTPS: %d", code)
	}
	w.waitState("invoices", "ok")
}
