package admin

import (
	"testing"
	"time"
)

// TestBrowserDeviceSignIn drives headless Chromium through a device code
// sign-in started from the status page: Sign in on the frontdesk row shows
// the code and the verification link; the browser follows the link to the
// fake identity platform, enters the code and approves; back on the status
// page, the row turns OK (the page reloads itself while the sign-in waits).
func TestBrowserDeviceSignIn(t *testing.T) {
	chromium, driver := lookBrowser(t)
	w := newWorld(t, worldOptions{device: true})
	w.waitState("frontdesk", "needs_sign_in")

	wd := startDriver(t, driver)
	sess := wd.newSession(t, chromium)
	sess.navigate(t, w.base+"/")
	if got := sess.text(t, "#account-frontdesk .state"); got != "Needs sign-in" {
		t.Fatalf("before sign-in the row says %q", got)
	}
	sess.click(t, "#account-frontdesk button.signin")
	code := sess.waitText(t, "#account-frontdesk .usercode")
	link := sess.attr(t, "#account-frontdesk a.verify", "href")
	if code == "" || link != w.ms.DeviceLoginURL {
		t.Fatalf("the row shows code %q and link %q (want %s)", code, link, w.ms.DeviceLoginURL)
	}
	sess.screenshot(t, "admin-status-device-code.png")

	// The user, on "another device" (here the same browser), signs in.
	sess.navigate(t, link)
	sess.sendKeys(t, "input[name=otc]", code)
	sess.sendKeys(t, "input[name=mailbox]", deskBox)
	sess.click(t, "button[value=approve]")
	// The click navigates: until the answer has loaded, "p" may still be
	// the form's own.
	const done = "Done. You can close this window."
	if got := sess.waitTextIs(t, "p", done); got != done {
		t.Fatalf("the fake identity platform says %q", got)
	}

	sess.navigate(t, w.base+"/")
	deadline := time.Now().Add(30 * time.Second)
	for {
		state, err := sess.tryText("#account-frontdesk .state")
		if err == nil && state == "OK" {
			break
		}
		if time.Now().After(deadline) {
			sess.screenshot(t, "admin-status-device-timeout.png")
			t.Fatalf("the row did not turn OK within 30 s (state %q, err %v)", state, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	sess.screenshot(t, "admin-status-device-signed-in.png")
	if _, err := w.store.Load("frontdesk"); err != nil {
		t.Errorf("no refresh token stored: %v", err)
	}
}

// waitText waits (at most 10 s) for an element matching css, which the
// page the browser is loading will have, and returns its text.
func (s *session) waitText(t *testing.T, css string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		text, err := s.tryText(css)
		if err == nil {
			return text
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10 s: %v", css, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitTextIs waits (at most 10 s) for the first element matching css to
// read want, and returns the last text it read.
func (s *session) waitTextIs(t *testing.T, css, want string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		text, err := s.tryText(css)
		if err == nil && text == want || time.Now().After(deadline) {
			return text
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// attr returns an attribute (a property, for href: the absolute URL) of
// the first element matching css.
func (s *session) attr(t *testing.T, css, name string) string {
	t.Helper()
	id, err := s.find(css)
	if err != nil {
		t.Fatal(err)
	}
	var v string
	if err := s.wd.call("GET", s.path+"/element/"+id+"/property/"+name, nil, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// sendKeys types text into the first element matching css.
func (s *session) sendKeys(t *testing.T, css, text string) {
	t.Helper()
	id, err := s.find(css)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.wd.call("POST", s.path+"/element/"+id+"/value", map[string]string{"text": text}, nil); err != nil {
		t.Fatal(err)
	}
}
