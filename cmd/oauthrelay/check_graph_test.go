package main

import (
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// check against a Graph account missing each permission in turn: the
// GRAPH column fails and each missing permission is named with its fix.
func TestCheckGraphPermissions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		perms []string // nil: the fake's default (Mail.Send, Mail.ReadWrite)
		want  []string // lines of the report
		ok    bool
	}{
		{"all", nil, nil, true},
		{"no Mail.Send", []string{"Mail.ReadWrite"}, []string{"invoices Graph Mail.Send: 403 ErrorAccessDenied", "New-ManagementRoleAssignment"}, false},
		{"no Mail.ReadWrite", []string{"Mail.Send"}, []string{
			"invoices Graph Mail.ReadWrite (messages over 3 MB): 403 ErrorAccessDenied", "grant the app the Microsoft Graph permission Mail.ReadWrite",
			"invoices Graph Sent Items (no duplicates after a timeout): 403 ErrorAccessDenied", "may send it twice"}, false},
		{"Mail.Read only for Sent Items", []string{"Mail.Send", "Mail.Read"}, []string{"invoices Graph Mail.ReadWrite"}, false},
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
			f := row(t, r.stdout, "invoices")
			wantAll(t, r.stdout, "ACCOUNT", "GRAPH")
			if tc.ok {
				if r.code != 0 || f[len(f)-1] != "ok" || !strings.Contains(r.stdout, "skipped (sends through Graph)") {
					t.Fatalf("want exit 0, GRAPH ok, SMTP skipped: %v", r)
				}
				return
			}
			if r.code != 1 || f[len(f)-1] != "FAILED" {
				t.Fatalf("want exit 1, GRAPH FAILED: %v", r)
			}
			wantAll(t, r.stdout, tc.want...)
			if tc.name == "Mail.Read only for Sent Items" && strings.Contains(r.stdout, "Sent Items (no duplicates") {
				t.Errorf("Sent Items reported though Mail.Read is granted:\n%s", r.stdout)
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
	wantAll(t, r.stdout, "SMTP AUTH disabled: auto sends through Graph", "All checks passed.")
}

// oauthrelay demo -graph: the fake tenant refuses SMTP AUTH, the demo
// account (upstream: auto) moves to Graph and the message arrives there.
func TestDemoGraph(t *testing.T) {
	wantAll(t, runDemoOnce(t, "-graph"), "the relay answered: 250 2.0.0 OK", "queued by Microsoft Graph", "535 5.7.139",
		"the fake Graph took it by sendMail (app-only token: true", "| Subject: oauthrelay demo", "| Subject: Order 1001")
}
