package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// stepLine finds the line of an account's step in check's text report
// (ACCOUNT STEP STATUS DETAIL, columns at least two spaces apart) and
// returns its status and detail.
func stepLine(t testing.TB, out, account, step string) (status, detail string) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(account) + ` {2,}` + regexp.QuoteMeta(step) + ` {2,}(\S+) *(.*)$`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no line for %s %s in:\n%s", account, step, out)
	}
	return m[1], m[2]
}

// wantStep asserts a step's status and that its detail holds each of subs.
func wantStep(t testing.TB, out, account, step, status string, subs ...string) {
	t.Helper()
	got, detail := stepLine(t, out, account, step)
	if got != status {
		t.Errorf("%s %s: %s (%s), want %s\n%s", account, step, got, detail, status, out)
	}
	for _, s := range subs {
		if !strings.Contains(detail, s) {
			t.Errorf("%s %s: detail %q lacks %q", account, step, detail, s)
		}
	}
}

// fixOf is the fix and PowerShell printed under a failing step: the
// indented lines after its line.
func fixOf(t testing.TB, out, account, step string) string {
	t.Helper()
	stepLine(t, out, account, step)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(account) + ` {2,}` + regexp.QuoteMeta(step) + ` {2,}.*\n((?: {4,}.*\n)*)`)
	return re.FindStringSubmatch(out)[1]
}

func wantAll(t testing.TB, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output lacks %q:\n%s", sub, s)
		}
	}
}

// checkJSON runs check -json and parses its document.
func checkJSON(t testing.TB, args ...string) (result, checkReport) {
	t.Helper()
	r := runCmd(t, nil, append([]string{"check", "-json"}, args...)...)
	var rep checkReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check -json printed no JSON document: %v\n%v", err, r)
	}
	return r, rep
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
	wantAll(t, r.stdout, path+": configuration OK (3 providers, 2 accounts)", "All checks passed.")
	if !regexp.MustCompile(`(?m)^ACCOUNT\s+STEP\s+STATUS\s+DETAIL$`).MatchString(r.stdout) {
		t.Errorf("no header:\n%s", r.stdout)
	}
	for _, acc := range []string{"invoices", "sales"} {
		wantStep(t, r.stdout, acc, "token", "ok", "client_credentials")
		wantStep(t, r.stdout, acc, "consent", "ok", "SMTP.SendAsApp", "IMAP.AccessAsApp")
		wantStep(t, r.stdout, acc, "mailbox permission", "ok")
		wantStep(t, r.stdout, acc, "SMTP AUTH", "ok")
		wantStep(t, r.stdout, acc, "IMAP", "ok", "opened INBOX")
		wantStep(t, r.stdout, acc, "POP3", "ok", "STAT")
	}
	wantStep(t, r.stdout, "invoices", "consent", "ok", "POP.AccessAsApp")
	if strings.Contains(r.stdout, "send as") || strings.Contains(r.stdout, "PowerShell") {
		t.Errorf("a send-as step for a pattern, or a fix with nothing failing:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout+r.stderr, appSecret) {
		t.Error("check printed the client secret")
	}
	if m := jwtRE.FindString(r.stdout + r.stderr); m != "" {
		t.Errorf("check printed a token: %.24s...", m)
	}
}

// The order of the steps is the order of the setup.
func TestCheckStepOrder(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	a := invoices(t)
	a.allowedFrom = []string{mailbox, "ceo@contoso.com"}
	a.upstream = "auto"
	_, rep := checkJSON(t, "-config", newConfig(t, ms, cfgSpec{pop3: listenAny, accounts: []acct{a}}))
	var names []string
	for _, s := range rep.Accounts[0].Steps {
		names = append(names, s.Name)
	}
	want := "token,consent,mailbox permission,SMTP AUTH,send as ceo@contoso.com,IMAP,POP3,Graph token,Graph Mail.Send,Graph Mail.ReadWrite,Graph Sent Items"
	if strings.Join(names, ",") != want {
		t.Errorf("steps %v, want %s", names, want)
	}
}

func TestCheckSMTPAuthDisabled(t *testing.T) {
	t.Parallel()
	for _, tenant := range []bool{false, true} {
		ms := startFake(t, fakems.Options{})
		if tenant {
			ms.SetTenantSMTPAuthDisabled(true)
		} else {
			ms.SetSMTPAuthDisabled(mailbox, true)
		}
		a := invoices(t)
		a.allowedFrom = []string{mailbox, "ceo@contoso.com"}
		r := runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{a}}))
		if r.code != 1 {
			t.Fatalf("want exit 1: %v", r)
		}
		wantStep(t, r.stdout, "invoices", "token", "ok")
		wantStep(t, r.stdout, "invoices", "mailbox permission", "ok")
		wantStep(t, r.stdout, "invoices", "SMTP AUTH", "FAIL", "535 5.7.139", "SmtpClientAuthentication is disabled")
		wantStep(t, r.stdout, "invoices", "send as ceo@contoso.com", "skip", "skipped: SMTP AUTH failed")
		wantStep(t, r.stdout, "invoices", "IMAP", "ok")
		// No POP3 listener: the tenant's POP3 is not checked.
		wantStep(t, r.stdout, "invoices", "POP3", "skip", "listen.pop3 is off")
		fix := fixOf(t, r.stdout, "invoices", "SMTP AUTH")
		wantAll(t, fix, "fix: SMTP AUTH is disabled", "Set-TransportConfig -SmtpClientAuthenticationDisabled $false",
			"PowerShell:", "Connect-ExchangeOnline", "Set-CASMailbox -Identity '"+mailbox+"' -SmtpClientAuthenticationDisabled $false")
		if !strings.Contains(r.stdout, "A step failed") || strings.Contains(r.stdout, "All checks passed") {
			t.Errorf("summary:\n%s", r.stdout)
		}
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
	wantStep(t, r.stdout, "invoices", "token", "FAIL", "AADSTS7000215", "client secret is invalid")
	wantAll(t, fixOf(t, r.stdout, "invoices", "token"), "create a new client secret")
	// No token: nothing else is tried.
	for _, s := range []string{"consent", "mailbox permission", "SMTP AUTH", "IMAP"} {
		wantStep(t, r.stdout, "invoices", s, "skip", "skipped: the token step failed")
	}
	if strings.Contains(r.stdout+r.stderr, "the-secret-ID-not-its-value") {
		t.Error("check printed the (wrong) client secret")
	}
}

// Entra refuses the token for lack of consent (AADSTS65001): the token
// step gives the fix and the PowerShell that consents.
func TestCheckTokenConsentMissing(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.FailTokenRequests(100, fakems.TokenFailure{Error: "invalid_grant", AADSTS: 65001,
		Description: "The user or administrator has not consented to use the application."})
	r := runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}}))
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantStep(t, r.stdout, "invoices", "token", "FAIL", "AADSTS65001")
	wantAll(t, fixOf(t, r.stdout, "invoices", "token"), "fix: ", "$appId = '"+appID+"'",
		"'SMTP.SendAsApp','IMAP.AccessAsApp'", "New-MgServicePrincipalAppRoleAssignment")

	// The app is not known in the tenant: check client_id and tenant, or
	// make its service principal.
	ms = startFake(t, fakems.Options{})
	ms.FailTokenRequests(100, fakems.TokenFailure{Error: "unauthorized_client", AADSTS: 700016,
		Description: "Application with identifier '" + appID + "' was not found in the directory."})
	r = runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}}))
	wantStep(t, r.stdout, "invoices", "token", "FAIL", "AADSTS700016", "not found in the tenant")
	wantAll(t, fixOf(t, r.stdout, "invoices", "token"), "check client_id and tenant", "$appId = '"+appID+"'",
		"if (-not $sp) { $sp = New-MgServicePrincipal -AppId $appId }")
}

// The app lacks a consented Exchange permission: the token's roles say
// which, the fix consents it, and the login that needs it is skipped.
func TestCheckConsent(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.SetAppRoles(appID, "SMTP.SendAsApp")
	r := runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}}))
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantStep(t, r.stdout, "invoices", "consent", "FAIL", "lack IMAP.AccessAsApp", "have: SMTP.SendAsApp")
	wantAll(t, fixOf(t, r.stdout, "invoices", "consent"), "fix: grant the app the Office 365 Exchange Online application permissions IMAP.AccessAsApp",
		"Connect-MgGraph", "$appId = '"+appID+"'", "$exo = Get-MgServicePrincipal", "-in 'IMAP.AccessAsApp'",
		"New-MgServicePrincipalAppRoleAssignment")
	wantStep(t, r.stdout, "invoices", "SMTP AUTH", "ok")
	wantStep(t, r.stdout, "invoices", "IMAP", "skip", "consent failed: the token has no IMAP.AccessAsApp")

	// Without SMTP.SendAsApp Exchange refuses the SMTP login: consent is
	// the step to fix, the mailbox permission cannot be told.
	ms.SetAppRoles(appID, "IMAP.AccessAsApp")
	r = runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}}))
	wantStep(t, r.stdout, "invoices", "consent", "FAIL", "lack SMTP.SendAsApp")
	wantStep(t, r.stdout, "invoices", "mailbox permission", "skip", "no SMTP.SendAsApp", "535 5.7.3")
	wantStep(t, r.stdout, "invoices", "SMTP AUTH", "skip")
	wantStep(t, r.stdout, "invoices", "IMAP", "ok")
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
	wantStep(t, r.stdout, "nogrant", "consent", "ok")
	// SMTP: 535 5.7.3 and what to check.
	wantStep(t, r.stdout, "nogrant", "mailbox permission", "FAIL", "535 5.7.3", "Authentication unsuccessful")
	wantAll(t, fixOf(t, r.stdout, "nogrant", "mailbox permission"), "New-ServicePrincipal", "Add-MailboxPermission",
		"$appId = '"+appID+"'", "New-ServicePrincipal -AppId $appId -ObjectId $sp.Id",
		"Add-MailboxPermission -Identity '"+noGrantBox+"' -User $sp.Id -AccessRights FullAccess")
	wantStep(t, r.stdout, "nogrant", "SMTP AUTH", "skip", "mailbox permission failed")
	// IMAP: the login passes, EXAMINE says "authenticated but not connected".
	wantStep(t, r.stdout, "nogrant", "IMAP", "FAIL", "User is authenticated but not connected")
	wantAll(t, fixOf(t, r.stdout, "nogrant", "IMAP"), "cannot open the mailbox", "Add-MailboxPermission -Identity '"+noGrantBox+"'")
	// POP3: Exchange refuses the login itself.
	wantStep(t, r.stdout, "nogrant", "POP3", "FAIL", "-ERR Authentication failure")
	wantAll(t, fixOf(t, r.stdout, "nogrant", "POP3"), "POP.AccessAsApp", "PopEnabled",
		"Set-CASMailbox -Identity '"+noGrantBox+"' -PopEnabled $true", "Add-MailboxPermission -Identity '"+noGrantBox+"'")
}

// The app has no POP.AccessAsApp: consent says so and POP3 is skipped.
func TestCheckConsentPOP3(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.SetAppRoles(appID, "SMTP.SendAsApp", "IMAP.AccessAsApp")
	r := runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{pop3: listenAny, accounts: []acct{invoices(t)}}))
	if r.code != 1 {
		t.Fatalf("want exit 1: %v", r)
	}
	wantStep(t, r.stdout, "invoices", "consent", "FAIL", "lack POP.AccessAsApp")
	wantAll(t, fixOf(t, r.stdout, "invoices", "consent"), "-in 'POP.AccessAsApp'")
	wantStep(t, r.stdout, "invoices", "IMAP", "ok")
	wantStep(t, r.stdout, "invoices", "POP3", "skip", "consent failed: the token has no POP.AccessAsApp")
}

func TestCheckSendAs(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.GrantSendAs(salesBox, "orders@shop.contoso.com")
	// invoices may not send as ceo@; each concrete allowed_from is probed
	// (a pattern is not).
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
	wantStep(t, r.stdout, "invoices", "SMTP AUTH", "ok")
	wantStep(t, r.stdout, "invoices", "send as ceo@contoso.com", "FAIL", "550 5.7.60", "send as this sender")
	wantAll(t, fixOf(t, r.stdout, "invoices", "send as ceo@contoso.com"), "allowed_from",
		"Add-RecipientPermission -Identity ceo@contoso.com -Trustee "+mailbox+" -AccessRights SendAs",
		"Add-RecipientPermission -Identity 'ceo@contoso.com' -Trustee '"+mailbox+"' -AccessRights SendAs -Confirm:$false")
	wantStep(t, r.stdout, "invoices", "IMAP", "ok")
	wantStep(t, r.stdout, "sales", "send as orders@shop.contoso.com", "ok", salesBox+" may send as orders@shop.contoso.com")
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
	wantStep(t, r.stdout, "invoices", "SMTP AUTH", "ok")
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

	// An account that is not there is a usage error.
	r = runCmd(t, nil, "check", "-config", path, "nope")
	if r.code != 2 || !strings.Contains(r.stderr, `no account "nope"`) {
		t.Fatalf("unknown account: want exit 2 and `no account \"nope\"`: %v", r)
	}
}

// An invalid configuration is reported with file and line before anything
// is contacted, and exits 2; -json says so in its document.
func TestCheckInvalidConfig(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{accounts: []acct{invoices(t)}})
	writeFile(t, path, configYAML(ms, cfgSpec{stateDir: t.TempDir(), accounts: []acct{invoices(t)}})+"    bogus_key: 1\n")
	r := runCmd(t, nil, "check", "-config", path)
	if r.code != 2 || !strings.Contains(r.stderr, "bogus_key") || !regexp.MustCompile(`oauthrelay\.yaml:\d+`).MatchString(r.stderr) {
		t.Fatalf("want exit 2 and file:line: bogus_key: %v", r)
	}
	r, rep := checkJSON(t, "-config", path)
	if r.code != 2 || rep.Status != "error" || !strings.Contains(rep.Error, "bogus_key") || rep.Config != path || len(rep.Accounts) != 0 {
		t.Errorf("-json of an invalid configuration: %+v, %v", rep, r)
	}
	if ms.TokenRequests() != 0 {
		t.Errorf("%d token requests for an invalid configuration", ms.TokenRequests())
	}
}

// Exit codes and help: 0 all passed, 1 a step failed (above), 2 usage.
func TestCheckUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"check", "-bogus"}, {"check", "-config", "x", "a", "b", "c"}} {
		if r := runCmd(t, nil, args...); r.code != 2 || !strings.Contains(r.stderr, "usage: oauthrelay check") {
			t.Errorf("%v: want exit 2 and the usage: %v", args, r)
		}
	}
	r := runCmd(t, nil, "check", "-h")
	if r.code != 0 {
		t.Fatalf("check -h: %v", r)
	}
	wantAll(t, r.stdout, "-json", "token", "consent", "mailbox permission", "SMTP AUTH", "send as", "IMAP", "Graph",
		"skipped: <why>", "Exit status: 0 every step passed (warnings allowed), 1 a step failed,\n2 a usage or configuration error.")
}

// check -json: one document a monitoring system can read, every step with
// its five fields, the failing ones with their fix and PowerShell.
func TestCheckJSON(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.SetSMTPAuthDisabled(salesBox, true)
	b := acct{name: "sales", provider: "app", mailbox: salesBox, username: salesUser, hash: hashOf(t, salesPass)}
	path := newConfig(t, ms, cfgSpec{pop3: listenAny, accounts: []acct{invoices(t), b}})
	r, rep := checkJSON(t, "-config", path)
	if r.code != 1 || rep.Status != "fail" || rep.Config != path || len(rep.Accounts) != 2 {
		t.Fatalf("want exit 1, status fail, 2 accounts: %+v %v", rep, r)
	}
	inv, sales := rep.Accounts[0], rep.Accounts[1]
	if inv.Name != "invoices" || inv.Mailbox != mailbox || inv.Grant != "client_credentials" || inv.Upstream != "smtp" || inv.Status != "ok" {
		t.Errorf("invoices: %+v", inv)
	}
	for _, s := range inv.Steps {
		if s.Status != "ok" || s.Detail == "" || s.Fix != "" || s.PowerShell != "" {
			t.Errorf("invoices step %+v", s)
		}
	}
	if sales.Status != "fail" {
		t.Errorf("sales: %+v", sales)
	}
	for _, s := range sales.Steps {
		if s.Name == "SMTP AUTH" && (s.Status != "fail" || !strings.Contains(s.Detail, "5.7.139") ||
			!strings.Contains(s.Fix, "SMTP AUTH is disabled") ||
			!strings.Contains(s.PowerShell, "Set-CASMailbox -Identity '"+salesBox+"' -SmtpClientAuthenticationDisabled $false")) {
			t.Errorf("sales SMTP AUTH: %+v", s)
		}
	}
	// Every step has the five fields, even when empty.
	var raw struct {
		Accounts []struct {
			Steps []map[string]any `json:"steps"`
		} `json:"accounts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	for _, s := range raw.Accounts[0].Steps {
		for _, k := range []string{"name", "status", "detail", "fix", "powershell"} {
			if _, ok := s[k]; !ok {
				t.Errorf("step %v lacks %s", s, k)
			}
		}
	}
	if strings.Contains(r.stdout, "configuration OK") {
		t.Error("-json printed the text report too")
	}

	r, rep = checkJSON(t, "-config", path, "invoices")
	if r.code != 0 || rep.Status != "ok" || len(rep.Accounts) != 1 {
		t.Errorf("-json, all passing: %+v %v", rep, r)
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
