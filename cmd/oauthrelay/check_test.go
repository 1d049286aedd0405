package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// row finds the table row of an account in check's output and returns its
// columns (ACCOUNT GRANT TOKEN SMTP IMAP POP3).
func row(t testing.TB, out, account string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && f[0] == account {
			return f
		}
	}
	t.Fatalf("no table row for %s in:\n%s", account, out)
	return nil
}

func wantRow(t testing.TB, out, account, token, smtp, imap string) {
	t.Helper()
	f := row(t, out, account)
	if f[2] != token || f[3] != smtp || f[4] != imap {
		t.Errorf("%s: TOKEN/SMTP/IMAP = %s/%s/%s, want %s/%s/%s\n%s", account, f[2], f[3], f[4], token, smtp, imap, out)
	}
}

func wantAll(t testing.TB, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output lacks %q:\n%s", sub, s)
		}
	}
}

func TestCheckAllOK(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	a := invoices(t)
	b := acct{name: "sales", provider: "app", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass),
		allowedFrom: []string{salesBox, "*@sales.contoso.com"}}
	path := newConfig(t, ms, cfgSpec{pop3: listenAny, accounts: []acct{a, b}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 0 {
		t.Fatalf("want exit 0: %v", r)
	}
	wantAll(t, r.stdout, path+": configuration OK (3 providers, 2 accounts)", "ACCOUNT", "GRANT", "TOKEN", "SMTP", "IMAP",
		"All checks passed.")
	if !regexp.MustCompile(`(?m)^ACCOUNT\s+GRANT\s+TOKEN\s+SMTP\s+IMAP\s+POP3\s*$`).MatchString(r.stdout) {
		t.Errorf("no table header:\n%s", r.stdout)
	}
	wantRow(t, r.stdout, "invoices", "ok", "ok", "ok")
	wantRow(t, r.stdout, "sales", "ok", "ok", "ok")
	for _, a := range []string{"invoices", "sales"} {
		if f := row(t, r.stdout, a); f[5] != "ok" {
			t.Errorf("%s: POP3 = %s, want ok", a, f[5])
		}
	}
	if f := row(t, r.stdout, "invoices"); f[1] != "client_credentials" {
		t.Errorf("GRANT = %s", f[1])
	}
	if strings.Contains(r.stdout+r.stderr, appSecret) {
		t.Error("check printed the client secret")
	}
	if m := jwtRE.FindString(r.stdout + r.stderr); m != "" {
		t.Errorf("check printed a token: %.24s...", m)
	}
}

func TestCheckSMTPAuthDisabled(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.SetSMTPAuthDisabled(mailbox, true)
	path := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantRow(t, r.stdout, "invoices", "ok", "FAILED", "ok")
	// No POP3 listener: the tenant's POP3 is not checked.
	if f := row(t, r.stdout, "invoices"); f[5] != "skipped" || !strings.Contains(r.stdout, "skipped (listen.pop3 is off)") {
		t.Errorf("POP3 = %s, want skipped (listen.pop3 is off)", f[5])
	}
	wantAll(t, r.stdout, "invoices SMTP:", "535", "SmtpClientAuthentication is disabled", "Set-CASMailbox", "SmtpClientAuthenticationDisabled $false")
	if strings.Contains(r.stdout, "All checks passed") {
		t.Error("says all checks passed")
	}
}

func TestCheckWrongSecret(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{secret: "the-secret-ID-not-its-value", accounts: []acct{invoices(t)}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	// No token: SMTP and IMAP are not tried.
	wantRow(t, r.stdout, "invoices", "FAILED", "-", "-")
	wantAll(t, r.stdout, "invoices token:", "AADSTS7000215", "client secret is invalid",
		"create a new client secret") // the fix
	if strings.Contains(r.stdout+r.stderr, "the-secret-ID-not-its-value") {
		t.Error("check printed the (wrong) client secret")
	}
}

func TestCheckNotGranted(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{IMAPNotConnected: true})
	a := acct{name: "nogrant", provider: "app", mailbox: noGrantBox, username: "ng", hash: hashOf(t, "x"),
		allowedFrom: []string{noGrantBox}}
	path := newConfig(t, ms, cfgSpec{pop3: listenAny, accounts: []acct{a}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantRow(t, r.stdout, "nogrant", "ok", "FAILED", "FAILED")
	// SMTP: 535 5.7.3 and what to check.
	wantAll(t, r.stdout, "nogrant SMTP:", "535", "Authentication unsuccessful", "New-ServicePrincipal")
	// IMAP: the login passes, SELECT says "authenticated but not connected".
	i := strings.Index(r.stdout, "nogrant IMAP:")
	if i < 0 {
		t.Fatalf("no IMAP explanation:\n%s", r.stdout)
	}
	wantAll(t, r.stdout[i:], "User is authenticated but not connected", "cannot open the mailbox", "Add-MailboxPermission")
	// POP3: Exchange refuses the login itself.
	if f := row(t, r.stdout, "nogrant"); f[5] != "FAILED" {
		t.Errorf("POP3 = %s, want FAILED", f[5])
	}
	i = strings.Index(r.stdout, "nogrant POP3:")
	if i < 0 {
		t.Fatalf("no POP3 explanation:\n%s", r.stdout)
	}
	wantAll(t, r.stdout[i:], "-ERR Authentication failure", "POP.AccessAsApp", "PopEnabled")
}

func TestCheckSendAs(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.GrantSendAs(salesBox, "orders@shop.contoso.com")
	// invoices may not send as ceo@; the first concrete allowed_from is probed
	// (a pattern is skipped).
	a := invoices(t)
	a.allowedFrom = []string{"*@contoso.com", "ceo@contoso.com"}
	// sales has Send As on orders@: the probe passes.
	b := acct{name: "sales", provider: "app", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass),
		allowedFrom: []string{"orders@shop.contoso.com"}}
	path := newConfig(t, ms, cfgSpec{accounts: []acct{a, b}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantRow(t, r.stdout, "invoices", "ok", "FAILED", "ok")
	wantRow(t, r.stdout, "sales", "ok", "ok", "ok")
	wantAll(t, r.stdout, "invoices SMTP:", "550", "send as this sender", "allowed_from",
		"Add-RecipientPermission -Identity ceo@contoso.com -Trustee "+mailbox+" -AccessRights SendAs")
	if strings.Contains(r.stdout, "sales SMTP:") {
		t.Errorf("sales reported as failed:\n%s", r.stdout)
	}
}

func TestCheckOneAccount(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	bad := acct{name: "nogrant", provider: "app", mailbox: noGrantBox, username: "ng", hash: hashOf(t, "x"),
		allowedFrom: []string{noGrantBox}}
	path := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t), bad}})

	r := runCmd(t, nil, "check", "-config", path, "invoices")
	if r.code != 0 {
		t.Fatalf("check invoices: want exit 0 (the broken account is not checked): %v", r)
	}
	wantRow(t, r.stdout, "invoices", "ok", "ok", "ok")
	if strings.Contains(r.stdout, "nogrant") {
		t.Errorf("the other account was checked:\n%s", r.stdout)
	}

	r = runCmd(t, nil, "check", "-config", path, "nogrant")
	if r.code != 1 {
		t.Fatalf("check nogrant: want exit 1: %v", r)
	}
	if strings.Contains(r.stdout, "invoices") {
		t.Errorf("the other account was checked:\n%s", r.stdout)
	}

	r = runCmd(t, nil, "check", "-config", path, "nope")
	if r.code != 1 || !strings.Contains(r.stderr, `no account "nope"`) {
		t.Fatalf("unknown account: want exit 1 and `no account \"nope\"`: %v", r)
	}
}

// An invalid configuration is reported with file and line before anything
// is contacted.
func TestCheckInvalidConfig(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}})
	writeFile(t, path, configYAML(ms, cfgSpec{stateDir: t.TempDir(), accounts: []acct{invoices(t)}})+"    bogus_key: 1\n")
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 || !strings.Contains(r.stderr, "bogus_key") || !regexp.MustCompile(`oauthrelay\.yaml:\d+`).MatchString(r.stderr) {
		t.Fatalf("want exit 1 and file:line: bogus_key: %v", r)
	}
	if ms.TokenRequests() != 0 {
		t.Errorf("%d token requests for an invalid configuration", ms.TokenRequests())
	}
}

// check prints the upstream's reply with its enhanced status code (5.7.139,
// 5.7.3, 5.7.60): the code Microsoft's documentation and every support
// article key on.
func TestCheckReportsEnhancedCodes(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.SetSMTPAuthDisabled(salesBox, true)
	a := invoices(t)
	a.allowedFrom = []string{"ceo@contoso.com"}
	b := acct{name: "sales", provider: "app", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass)}
	c := acct{name: "nogrant", provider: "app", mailbox: noGrantBox, username: "ng", hash: hashOf(t, "x")}
	path := newConfig(t, ms, cfgSpec{accounts: []acct{a, b, c}})
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantAll(t, r.stdout, "535 5.7.139", "535 5.7.3", "550 5.7.60")
}
