package main

import (
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// check against a Graph account missing each permission in turn: its
// Graph step fails, naming the missing permission with its fix and the
// PowerShell that grants it.
func TestCheckGraphPermissions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		perms []string            // nil: the fake's default (Mail.Send, Mail.ReadWrite)
		fail  map[string][]string // failing step → its fix contains
	}{
		{"all", nil, nil},
		{"no Mail.Send", []string{"Mail.ReadWrite"}, map[string][]string{
			"Graph Mail.Send": {"New-ManagementRoleAssignment", "-in 'Mail.Send'", "$graph = Get-MgServicePrincipal -Filter \"appId eq '00000003-0000-0000-c000-000000000000'\""}}},
		{"no Mail.ReadWrite", []string{"Mail.Send"}, map[string][]string{
			"Graph Mail.ReadWrite": {"grant the app the Microsoft Graph permission Mail.ReadWrite", "-in 'Mail.ReadWrite'"},
			"Graph Sent Items":     {"-in 'Mail.Read'"}}},
		{"Mail.Read only for Sent Items", []string{"Mail.Send", "Mail.Read"}, map[string][]string{
			"Graph Mail.ReadWrite": {"Mail.ReadWrite"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ms := startFake(t, fakems.Options{})
			if tc.perms != nil {
				ms.SetGraphPermissions(appID, tc.perms...)
			}
			a := invoices(t)
			a.upstream = "graph"
			r := runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{a}}))
			wantStep(t, r.stdout, "invoices", "SMTP AUTH", "skip", "sends through Microsoft Graph")
			wantStep(t, r.stdout, "invoices", "IMAP", "ok")
			wantStep(t, r.stdout, "invoices", "mailbox permission", "ok", "IMAP")
			wantStep(t, r.stdout, "invoices", "Graph token", "ok")
			if want := map[bool]int{true: 0, false: 1}[tc.fail == nil]; r.code != want {
				t.Fatalf("want exit %d: %v", want, r)
			}
			for _, step := range []string{"Graph Mail.Send", "Graph Mail.ReadWrite", "Graph Sent Items"} {
				fix, failing := tc.fail[step]
				if !failing {
					wantStep(t, r.stdout, "invoices", step, "ok")
					continue
				}
				wantStep(t, r.stdout, "invoices", step, "FAIL", "403 ErrorAccessDenied")
				wantAll(t, fixOf(t, r.stdout, "invoices", step), append(fix, "$appId = '"+appID+"'")...)
			}
		})
	}
}

// upstream auto in a tenant with SMTP AUTH off: SMTP's 5.7.139 is what
// auto expects, Graph works, check passes.
func TestCheckGraphAuto(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.SetTenantSMTPAuthDisabled(true)
	a := invoices(t)
	a.upstream = "auto"
	r := runCmd(t, nil, "check", "-config", newConfig(t, ms, cfgSpec{accounts: []acct{a}}))
	if r.code != 0 {
		t.Fatalf("want exit 0: %v", r)
	}
	wantStep(t, r.stdout, "invoices", "SMTP AUTH", "WARN", "SMTP AUTH disabled: auto sends through Graph", "535 5.7.139")
	wantAll(t, fixOf(t, r.stdout, "invoices", "SMTP AUTH"), "nothing to do for the relay", "Set-CASMailbox -Identity '"+mailbox+"'")
	wantStep(t, r.stdout, "invoices", "Graph Mail.Send", "ok")
	wantAll(t, r.stdout, "All checks passed, with warnings.")
}

// oauthrelay demo -graph: the fake tenant refuses SMTP AUTH, the demo
// account (upstream: auto) moves to Graph and the message arrives there.
func TestDemoGraph(t *testing.T) {
	wantAll(t, runDemoOnce(t, "-graph"), "the relay answered: 250 2.0.0 OK", "queued by Microsoft Graph", "535 5.7.139",
		"the fake Graph took it by sendMail (app-only token: true", "| Subject: oauthrelay demo", "| Subject: Order 1001")
}
