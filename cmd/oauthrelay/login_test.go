package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// printedToken runs `token` and returns the token it printed.
func printedToken(t testing.TB, path, account string) string {
	t.Helper()
	r := runCmd(t, nil, "token", "-config", path, account)
	if r.code != 0 {
		t.Fatalf("token %s: want exit 0: %v", account, r)
	}
	tok := strings.TrimSuffix(r.stdout, "\n")
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("token %s: stdout is not one token: %q", account, r.stdout)
	}
	return tok
}

func TestToken(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}})
	tok := printedToken(t, path, "invoices")
	sendDirect(t, ms, mailbox, tok, "sent with the printed token")
	m := delivered(t, ms, "sent with the printed token")
	if !m.AppOnly || m.ClientID != appID || m.AuthUser != mailbox {
		t.Errorf("delivered as %+v", m)
	}
}

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	good := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}})
	bad := newConfig(t, ms, cfgSpec{secret: "wrong-secret-value", accounts: []acct{invoices(t)}})

	r := runCmd(t, nil, "token", "-config", bad, "invoices")
	if r.code != 1 || r.stdout != "" {
		t.Fatalf("wrong secret: want exit 1 and nothing on stdout: %v", r)
	}
	wantAll(t, r.stderr, "AADSTS7000215", "client secret is invalid", "fix: create a new client secret")
	if strings.Contains(r.stderr, "wrong-secret-value") {
		t.Error("the client secret was printed")
	}

	ms.FailTokenRequests(10, fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable", AADSTS: 90033,
		Description: "A transient error has occurred. Please try again."})
	r = runCmd(t, nil, "token", "-config", good, "invoices")
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "token:") {
		t.Fatalf("token endpoint down: want exit 1 and an explanation: %v", r)
	}
	t.Logf("token endpoint down: %v", r)

	r = runCmd(t, nil, "token", "-config", good, "nope")
	if r.code != 1 || !strings.Contains(r.stderr, `no account "nope"`) || !strings.Contains(r.stderr, "invoices") {
		t.Fatalf("unknown account: want exit 1 naming the accounts there are: %v", r)
	}
}

var userCodeRE = regexp.MustCompile(`enter the code ([A-Za-z0-9-]+)`)

func TestLoginDeviceCode(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	dev := acct{name: "dev", provider: "device", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass)}
	path := newConfig(t, ms, cfgSpec{stateDir: stateDir, accounts: []acct{invoices(t), dev}})

	// Before the sign-in there is no refresh token: token fails with advice.
	r := runCmd(t, nil, "token", "-config", path, "dev")
	if r.code != 1 || !strings.Contains(r.stderr, "login") {
		t.Fatalf("token before login: want exit 1 pointing at login: %v", r)
	}
	t.Logf("token before login: %v", r)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out, errb syncBuffer
	done := background(ctx, nil, &out, &errb, "login", "-config", path, "dev")
	code := waitMatch(t, &out, userCodeRE, "the user code on stdout", done, &errb)[1]
	wantAll(t, out.String(), ms.DeviceLoginURL, "Sign in as "+salesBox)
	if err := ms.ApproveDevice(code, salesBox); err != nil {
		t.Fatal(err)
	}
	if c := exitCode(t, done, "login"); c != 0 {
		t.Fatalf("login: exit %d\n%s\n%s", c, out.String(), errb.String())
	}
	wantAll(t, out.String(), "Signed in: the refresh token of account dev is stored in "+stateDir)
	if m := jwtRE.FindString(out.String() + errb.String()); m != "" {
		t.Errorf("login printed a token: %.24s...", m)
	}

	// The key file was made in state_dir, private.
	if fi, err := os.Stat(filepath.Join(stateDir, tokenstore.KeyFileName)); err != nil {
		t.Errorf("key file: %v", err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key file mode %v", fi.Mode().Perm())
	}

	// A later `token` redeems the stored refresh token: a delegated token for
	// the signed-in mailbox that Exchange accepts.
	tok := printedToken(t, path, "dev")
	sendDirect(t, ms, salesBox, tok, "after device login")
	m := delivered(t, ms, "after device login")
	if m.AppOnly || m.ClientID != publicID || m.AuthUser != salesBox {
		t.Errorf("delivered as %+v", m)
	}
	// The stored refresh token is not in the state dir in clear.
	if leak := grepDir(t, stateDir, tok); leak != "" {
		t.Errorf("the access token is stored in clear in %s", leak)
	}
}

func TestLoginDeviceCodeDenied(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dev := acct{name: "dev", provider: "device", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass)}
	path := newConfig(t, ms, cfgSpec{accounts: []acct{dev}})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out, errb syncBuffer
	done := background(ctx, nil, &out, &errb, "login", "-config", path, "dev")
	code := waitMatch(t, &out, userCodeRE, "the user code on stdout", done, &errb)[1]
	if err := ms.DenyDevice(code); err != nil {
		t.Fatal(err)
	}
	if c := exitCode(t, done, "login"); c != 1 {
		t.Fatalf("declined login: want exit 1, got %d\n%s\n%s", c, out.String(), errb.String())
	}
	if strings.Contains(out.String(), "Signed in") || !strings.Contains(errb.String(), "token:") {
		t.Errorf("declined login output:\n%s\n%s", out.String(), errb.String())
	}
}

func TestLoginAuthCodeLoopback(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ac := acct{name: "browser", provider: "authcode", mailbox: mailbox, username: localUser, hash: hashOf(t, localPass)}
	path := newConfig(t, ms, cfgSpec{accounts: []acct{ac}})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// Standard input is a terminal nobody types into: login offers to paste
	// the redirected address but the redirect reaches its loopback listener.
	stdin, stdinW := io.Pipe()
	defer stdinW.Close()
	var out, errb syncBuffer
	done := background(ctx, stdin, &out, &errb, "login", "-config", path, "browser")
	urlRE := regexp.MustCompile(regexp.QuoteMeta(ms.AuthorizeURL) + `\?\S+`)
	signIn := waitMatch(t, &out, urlRE, "the sign-in address on stdout", done, &errb)[0]
	wantAll(t, out.String(), "sign in as "+mailbox, "paste the address")
	for _, p := range []string{"login_hint=", "code_challenge=", "state=", "redirect_uri=http%3A%2F%2Flocalhost%3A"} {
		if !strings.Contains(signIn, p) {
			t.Errorf("sign-in address lacks %s: %s", p, signIn)
		}
	}

	// The "browser": the fake consents at once and redirects to the login's
	// loopback listener.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, signIn, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Signed in") {
		t.Errorf("callback page: %s %s (from %s)", resp.Status, page, resp.Request.URL.Host)
	}
	if c := exitCode(t, done, "login"); c != 0 {
		t.Fatalf("login: exit %d\n%s\n%s", c, out.String(), errb.String())
	}
	wantAll(t, out.String(), "Signed in: the refresh token of account browser is stored in")

	tok := printedToken(t, path, "browser")
	sendDirect(t, ms, mailbox, tok, "after browser login")
	m := delivered(t, ms, "after browser login")
	if m.AppOnly || m.ClientID != publicID || m.AuthUser != mailbox {
		t.Errorf("delivered as %+v", m)
	}

	// login names the accounts it knows when given an unknown one.
	r := runCmd(t, nil, "login", "-config", path, "nope")
	if r.code != 1 || !strings.Contains(r.stderr, `no account "nope"`) {
		t.Errorf("login of an unknown account: %v", r)
	}
}

func TestLoginClientCredentials(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}})
	r := runCmd(t, nil, "login", "-config", path, "invoices")
	if r.code != 1 || !strings.Contains(r.stderr, "needs no sign-in") || !strings.Contains(r.stderr, "oauthrelay check") {
		t.Fatalf("want exit 1 saying no sign-in is needed: %v", r)
	}
	if ms.TokenRequests() != 0 {
		t.Errorf("%d token requests", ms.TokenRequests())
	}
}

// grepDir returns the first file under dir that contains s.
func grepDir(t testing.TB, dir, s string) string {
	t.Helper()
	found := ""
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), s) {
			found = p
		}
		return nil
	})
	return found
}

// loginDevice runs `login` for a device_code account and approves the code
// as mbox at the fake.
func loginDevice(t testing.TB, ms *fakems.Server, path, account, mbox string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out, errb syncBuffer
	done := background(ctx, nil, &out, &errb, "login", "-config", path, account)
	code := waitMatch(t, &out, userCodeRE, "the user code on stdout", done, &errb)[1]
	if err := ms.ApproveDevice(code, mbox); err != nil {
		t.Fatal(err)
	}
	if c := exitCode(t, done, "login"); c != 0 {
		t.Fatalf("login: exit %d\n%s\n%s", c, out.String(), errb.String())
	}
}

// check reports an account that was never signed in, with the way out;
// after `login` it passes.
func TestCheckBeforeAndAfterLogin(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dev := acct{name: "dev", provider: "device", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass),
		allowedFrom: []string{salesBox}}
	path := newConfig(t, ms, cfgSpec{accounts: []acct{dev}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 {
		t.Fatalf("check before login: want exit 1: %v", r)
	}
	wantStep(t, r.stdout, "dev", "token", "FAIL")
	wantAll(t, fixOf(t, r.stdout, "dev", "token"), "oauthrelay login")
	wantStep(t, r.stdout, "dev", "SMTP AUTH", "skip", "the token step failed")
	wantStep(t, r.stdout, "dev", "IMAP", "skip", "the token step failed")

	loginDevice(t, ms, path, "dev", salesBox)
	r = runCmd(t, nil, "check", "-config", path)
	if r.code != 0 {
		t.Fatalf("check after login: want exit 0: %v", r)
	}
	wantStep(t, r.stdout, "dev", "token", "ok", "device_code")
	wantStep(t, r.stdout, "dev", "consent", "ok", "SMTP.Send", "IMAP.AccessAsUser.All")
	wantStep(t, r.stdout, "dev", "SMTP AUTH", "ok")
	wantStep(t, r.stdout, "dev", "IMAP", "ok")
}

// A running relay picks up a sign-in done with `login` at the account's next
// login, without a restart (the store is the truth).
func TestServePicksUpLogin(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dev := acct{name: "dev", provider: "device", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass),
		allowedFrom: []string{salesBox}}
	path := newConfig(t, ms, cfgSpec{smtp: listenAny, accounts: []acct{dev}})
	s := startServe(t, path)

	_, err := loginSMTP(t, s.smtp, salesUser, salesPass)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("AUTH before sign-in: want 535 (needs sign-in), got %v", err)
	}
	t.Logf("AUTH before sign-in: %v", err)

	loginDevice(t, ms, path, "dev", salesBox)
	c := mustLogin(t, s.smtp, salesUser, salesPass)
	sendOn(t, c, salesBox, "after login while serving")
	c.Quit()
	if m := delivered(t, ms, "after login while serving"); m.AppOnly || m.AuthUser != salesBox {
		t.Errorf("delivered as %+v", m)
	}
}
