package config

import (
	"strings"
	"testing"
)

// NormalizeAddress folds case and a trailing root dot, and refuses every
// form that could name a mailbox outside the domain it seems to be in.
func TestNormalizeAddress(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"a@contoso.com", "a@contoso.com", ""},
		{"Invoices@Contoso.COM", "invoices@contoso.com", ""},
		{"a@contoso.com.", "a@contoso.com", ""},
		{"first.last+tag@contoso.com", "first.last+tag@contoso.com", ""},
		{"a@xn--mller-kva.de", "a@xn--mller-kva.de", ""},
		{"a@contoso.com..", "", "not a host name"},
		{"a@contoso.com@evil.com", "", "more than one @"},
		{"a%evil.com@contoso.com", "", "source route"},
		{"evil.com!a@contoso.com", "", "source route"},
		{`"a@evil.com"@contoso.com`, "", "more than one @"},
		{`"a"@contoso.com`, "", "quoted local part"},
		{`a\@contoso.com`, "", `'\\'`},
		{"@contoso.com", "", "empty local part"},
		{"a@", "", "empty domain"},
		{"contoso.com", "", "no @"},
		{".a@contoso.com", "", "dot"},
		{"a.@contoso.com", "", "dot"},
		{"a..b@contoso.com", "", "dot"},
		{"a@соntoso.com", "", "not ASCII"}, // Cyrillic "со"
		{"а@contoso.com", "", "not ASCII"}, // Cyrillic "а"
		{"a＠contoso.com", "", "not ASCII"}, // fullwidth @
		{"a@müller.de", "", "not ASCII"},
		{" a@contoso.com", "", "space"},
		{"a@contoso.com\x00", "", "control"},
		{"a@contoso.com\r\nX", "", "control"},
		{"a@[192.0.2.1]", "", "not a host name"},
		{"a@contoso.com:25", "", "not a host name"},
		{"a@-contoso.com", "", "not a host name"},
		{strings.Repeat("a", 65) + "@contoso.com", "", "longer than 64"},
	} {
		got, err := NormalizeAddress(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("NormalizeAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("NormalizeAddress(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

// OpensMailbox: a pattern opens its domain (restricted by a list), an
// address account only its list; SMTPMailbox picks the upstream identity.
func TestOpensMailboxAndSMTPMailbox(t *testing.T) {
	app := &Provider{Grant: GrantClientCredentials}
	deleg := &Provider{Grant: GrantDeviceCode}
	wide := &Account{Mailbox: "*@contoso.com", ProviderRef: app, SendAs: SendAsMailbox,
		AllowedFrom: []string{"*@contoso.com", "team@groups.contoso.com"}}
	listed := &Account{Mailbox: "*@Contoso.com", Mailboxes: []string{"a@contoso.com", "B@contoso.com"}, ProviderRef: app}
	shared := &Account{Mailbox: "alice@contoso.com", Mailboxes: []string{"support@contoso.com"}, ProviderRef: deleg}
	for _, tc := range []struct {
		a     *Account
		login string
		want  string
	}{
		{wide, "Anyone@CONTOSO.com.", "anyone@contoso.com"},
		{wide, "a@sub.contoso.com", ""},
		{wide, "a@contoso.com.evil.com", ""},
		{wide, "a@evilcontoso.com", ""},
		{listed, "b@contoso.com", "b@contoso.com"},
		{listed, "c@contoso.com", ""},
		{shared, "Support@contoso.com", "support@contoso.com"},
		{shared, "alice@contoso.com", ""}, // the delegate logs in with the account's username
		{shared, "other@contoso.com", ""},
	} {
		got, ok := tc.a.OpensMailbox(tc.login)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%s.OpensMailbox(%q) = %q, %v; want %q", tc.a.Mailbox, tc.login, got, ok, tc.want)
		}
	}
	for _, tc := range []struct {
		a                 *Account
		login, from, want string
	}{
		{wide, "a@contoso.com", "B@contoso.com", "b@contoso.com"},           // one of its mailboxes sends as itself
		{wide, "a@contoso.com", "team@groups.contoso.com", "a@contoso.com"}, // send-as: the session's mailbox
		{wide, "", "team@groups.contoso.com", ""},                           // relay_from: no mailbox to send as
		{shared, "support@contoso.com", "support@contoso.com", "alice@contoso.com"},
		{&Account{Mailbox: "inv@contoso.com", ProviderRef: app, SendAs: SendAsSender}, "", "shared@contoso.com", "shared@contoso.com"},
		{&Account{Mailbox: "inv@contoso.com", ProviderRef: app, SendAs: SendAsMailbox}, "", "shared@contoso.com", "inv@contoso.com"},
	} {
		if got := tc.a.SMTPMailbox(tc.login, tc.from); got != tc.want {
			t.Errorf("%s.SMTPMailbox(%q, %q) = %q, want %q", tc.a.Mailbox, tc.login, tc.from, got, tc.want)
		}
	}
}

// Each mistake in the new keys is reported at its file, line and key.
func TestMailboxValidation(t *testing.T) {
	const hash = `"$2a$10$Z2JJfwYPewHYL9oAh66lIeDX4EX.KY/2tMTO.i.a3GtJF3iXSQLli"`
	provs := "providers:\n  p: {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s}\n" +
		"  d: {type: microsoft, tenant: contoso.com, client_id: id, grant: device_code}\n"
	for _, tc := range []struct{ name, accounts, want string }{
		{"pattern needs app-only", "  - {name: a, provider: d, mailbox: \"*@contoso.com\", password_hash: " + hash + "}\n",
			`c.yaml:5: accounts[0].mailbox: "*@contoso.com" is a pattern: it needs grant client_credentials`},
		{"pattern has no username", "  - {name: a, provider: p, mailbox: \"*@contoso.com\", username: u, password_hash: " + hash + "}\n",
			"c.yaml:5: accounts[0].username: not used with a mailbox pattern"},
		{"pattern needs a password", "  - {name: a, provider: p, mailbox: \"*@contoso.com\"}\n",
			"c.yaml:5: accounts[0].password_hash: required"},
		{"bad pattern", "  - {name: a, provider: p, mailbox: \"*@соntoso.com\", password_hash: " + hash + "}\n",
			`c.yaml:5: accounts[0].mailbox: "*@соntoso.com" is not "*@domain"`},
		{"other wildcard", "  - {name: a, provider: p, mailbox: \"inv*@contoso.com\", username: u, password_hash: " + hash + "}\n",
			`c.yaml:5: accounts[0].mailbox: "inv*@contoso.com": the only pattern is "*@domain"`},
		{"list outside domain", "  - name: a\n    provider: p\n    mailbox: \"*@contoso.com\"\n    password_hash: " + hash +
			"\n    mailboxes: [a@contoso.com, b@fabrikam.com]\n",
			`c.yaml:9: accounts[0].mailboxes[1]: "b@fabrikam.com" is not in the domain of mailbox "*@contoso.com"`},
		{"list trick", "  - name: a\n    provider: p\n    mailbox: \"*@contoso.com\"\n    password_hash: " + hash +
			"\n    mailboxes: [\"a%evil.com@contoso.com\"]\n",
			`c.yaml:9: accounts[0].mailboxes[0]: "a%evil.com@contoso.com" has '%' in the local part`},
		{"list twice", "  - name: a\n    provider: p\n    mailbox: \"*@contoso.com\"\n    password_hash: " + hash +
			"\n    mailboxes: [a@contoso.com, A@Contoso.com]\n",
			`accounts[0].mailboxes[1]: "A@Contoso.com" is listed twice`},
		{"send_as value", "  - {name: a, provider: p, mailbox: a@contoso.com, username: u, send_as: me, password_hash: " + hash + "}\n",
			`c.yaml:5: accounts[0].send_as: "me" is not a send_as (have: mailbox, sender)`},
		{"send_as sender delegated", "  - {name: a, provider: d, mailbox: a@contoso.com, username: u, send_as: sender, password_hash: " + hash + "}\n",
			"c.yaml:5: accounts[0].send_as: sender needs grant client_credentials"},
		{"send_as sender domain-wide", "  - {name: a, provider: p, mailbox: \"*@contoso.com\", send_as: sender, password_hash: " + hash + "}\n",
			"c.yaml:5: accounts[0].send_as: sender is not for a mailbox pattern"},
		{"overlap", "  - {name: a, provider: p, mailbox: \"*@contoso.com\", password_hash: " + hash + "}\n" +
			"  - {name: b, provider: p, mailbox: \"*@CONTOSO.com\", password_hash: " + hash + "}\n",
			"c.yaml:6: accounts[1].mailboxes: some mailboxes are also those of accounts[0] (a)"},
		{"username is a mailbox", "  - {name: a, provider: p, mailbox: \"*@contoso.com\", password_hash: " + hash + "}\n" +
			"  - {name: b, provider: p, mailbox: b@contoso.com, username: X@contoso.com, password_hash: " + hash + "}\n",
			`c.yaml:6: accounts[1].username: "X@contoso.com" is also a mailbox that accounts[0] (a) opens`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := parseErr(t, provs+"accounts:\n"+tc.accounts)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("the message lacks %q:\n%s", tc.want, msg)
			}
		})
	}
}

// A domain-wide account's defaults: allowed_from is its pattern (or its
// list), send_as mailbox; each mailbox has the account's limits.
func TestDomainWideDefaults(t *testing.T) {
	const hash = `"$2a$10$Z2JJfwYPewHYL9oAh66lIeDX4EX.KY/2tMTO.i.a3GtJF3iXSQLli"`
	data := "providers:\n  p: {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s}\n" +
		"accounts:\n  - {name: a, provider: p, mailbox: \"*@contoso.com\", password_hash: " + hash + ", limits: {messages_per_minute: 7}}\n" +
		"  - {name: b, provider: p, mailbox: \"*@fabrikam.com\", mailboxes: [x@fabrikam.com], password_hash: " + hash + "}\n"
	c, err := Parse("c.yaml", []byte(data), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Accounts[0], c.Accounts[1]
	if strings.Join(a.AllowedFrom, ",") != "*@contoso.com" || a.SendAs != SendAsMailbox {
		t.Errorf("a: allowed_from %v, send_as %q", a.AllowedFrom, a.SendAs)
	}
	if strings.Join(b.AllowedFrom, ",") != "x@fabrikam.com" {
		t.Errorf("b: allowed_from %v", b.AllowedFrom)
	}
	if got := c.MailboxLimits("Someone@contoso.com").MessagesPerMinute; got != 7 {
		t.Errorf("limits of a mailbox of a: %d messages a minute, want 7", got)
	}
	if got := c.MailboxLimits("y@fabrikam.com"); got != c.Limits {
		t.Errorf("a mailbox outside b's list gets %+v, want the top-level limits", got)
	}
}
