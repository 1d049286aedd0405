package main

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// listenAny is a listener on a free loopback port; the bound addresses are
// read from the "oauthrelay started" log line, so no port is guessed.
const listenAny = `{addr: "127.0.0.1:0"}`

// served is a running `serve`.
type served struct {
	smtp, imap, admin string
	stderr            *syncBuffer
	done              <-chan int
	stop              context.CancelFunc
}

var startedRE = regexp.MustCompile(`oauthrelay started.*`)

// addrIn finds `name=ADDR` (text) or `"name":"ADDR"` (json) in line.
func addrIn(line, name string) string {
	m := regexp.MustCompile(`"?` + name + `"?[=:]"?(127\.0\.0\.1:\d+|off)`).FindStringSubmatch(line)
	if m == nil || m[1] == "off" {
		return ""
	}
	return m[1]
}

// startServe runs `serve -config path` in-process until the test ends.
func startServe(t testing.TB, path string) *served {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{stderr: &syncBuffer{}, stop: cancel}
	s.done = background(ctx, nil, io.Discard, s.stderr, "serve", "-config", path)
	line := waitMatch(t, s.stderr, startedRE, "serve to start", s.done, s.stderr)[0]
	s.smtp, s.imap, s.admin = addrIn(line, "smtp"), addrIn(line, "imap"), addrIn(line, "admin")
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-s.done:
			if code != 0 {
				t.Errorf("serve exited %d:\n%s", code, s.stderr.String())
			}
		case <-time.After(waitTimeout):
			t.Errorf("serve did not stop within %v:\n%s", waitTimeout, s.stderr.String())
		}
		if t.Failed() {
			t.Logf("serve log:\n%s", s.stderr.String())
		}
	})
	return s
}

// dialSMTP connects to the relay and says EHLO; tlsc non-nil means
// STARTTLS.
func dialSMTP(t testing.TB, addr string, tlsc *tls.Config) *smtp.Client {
	t.Helper()
	var (
		c   *smtp.Client
		err error
	)
	if tlsc != nil {
		c, err = smtp.DialStartTLS(addr, tlsc)
	} else {
		c, err = smtp.Dial(addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

// loginSMTP returns a client logged in with AUTH PLAIN, or the AUTH error.
func loginSMTP(t testing.TB, addr, user, pass string) (*smtp.Client, error) {
	t.Helper()
	c := dialSMTP(t, addr, nil)
	if err := c.Auth(gosasl.NewPlainClient("", user, pass)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func mustLogin(t testing.TB, addr, user, pass string) *smtp.Client {
	t.Helper()
	c, err := loginSMTP(t, addr, user, pass)
	if err != nil {
		t.Fatalf("AUTH PLAIN %s: %v", user, err)
	}
	return c
}

// wantAuthRefused checks that user/pass is refused with 535.
func wantAuthRefused(t testing.TB, addr, user, pass string) {
	t.Helper()
	_, err := loginSMTP(t, addr, user, pass)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("AUTH %s with a wrong password: want 535, got %v", user, err)
	}
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServe(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{smtp: listenAny, imap: listenAny, admin: listenAny, accounts: []acct{invoices(t)}})
	s := startServe(t, path)
	if s.smtp == "" || s.imap == "" || s.admin == "" {
		t.Fatalf("listeners not in the start line:\n%s", s.stderr.String())
	}

	// SMTP: AUTH PLAIN, a message, delivered upstream with XOAUTH2.
	c := mustLogin(t, s.smtp, localUser, localPass)
	sendOn(t, c, mailbox, "through serve")
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	m := delivered(t, ms, "through serve")
	if m.AuthUser != mailbox || !m.AppOnly || m.From != mailbox || len(m.To) != 1 || m.To[0] != recipient {
		t.Errorf("delivered as %+v", m)
	}

	// IMAP: LOGIN, SELECT, FETCH through the relay.
	if err := ms.AppendIMAP(mailbox, "INBOX", []byte("From: a@example.net\r\nSubject: inbound 1\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	ic, err := imapclient.DialInsecure(s.imap, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login(localUser, localPass).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN: %v", err)
	}
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT INBOX: %v %+v", err, sel)
	}
	msgs, err := ic.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].Envelope.Subject != "inbound 1" {
		t.Fatalf("FETCH: %v %+v", err, msgs)
	}
	if err := ic.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}

	// Admin: health and metrics.
	if code, body := httpGet(t, "http://"+s.admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := httpGet(t, "http://"+s.admin+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	code, metrics := httpGet(t, "http://"+s.admin+"/metrics")
	if code != http.StatusOK || !regexp.MustCompile(`(?m)^oauthrelay_messages_total\{[^}]*account="invoices"[^}]*\} 1$`).MatchString(metrics) {
		t.Errorf("/metrics: %d, no oauthrelay_messages_total{account=\"invoices\"} 1:\n%s", code, grepLines(metrics, "oauthrelay_"))
	}

	// Stop: exit 0 (checked by the cleanup) after "shutting down".
	s.stop()
	waitFor(t, waitTimeout, "shutting down in the log", func() bool { return strings.Contains(s.stderr.String(), "shutting down") })
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// raceEnabled is set by race_test.go when the tests run with -race; the
// binary is then built with -race as well, which reuses the test build's
// cached packages.
var raceEnabled bool

// buildBinary builds oauthrelay into a temporary directory.
func buildBinary(t testing.TB) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
		if _, err := os.Stat(goTool); err != nil {
			t.Skip("no go tool to build the binary")
		}
	}
	bin := filepath.Join(t.TempDir(), "oauthrelay")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool, append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
