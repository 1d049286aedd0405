package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/powershell"
)

// providerName is the name init gives the app registration in providers.
const providerName = "m365"

// accountNames are the accounts' names: the mailboxes' local parts, made
// valid and unique.
func (a *initAnswers) accountNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, mb := range a.Mailboxes {
		local, domain, _ := strings.Cut(strings.ToLower(mb), "@")
		if local == "*" {
			local = "all-" + domain
		}
		name := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
				return r
			}
			return '-'
		}, local)
		name = strings.TrimLeft(name, ".")
		if name == "" {
			name = "account"
		}
		for base, n := name, 2; seen[name]; n++ {
			name = base + "-" + strconv.Itoa(n)
		}
		seen[name] = true
		out = append(out, name)
	}
	return out
}

// q quotes a YAML scalar.
func q(s string) string { return strconv.Quote(s) }

// configYAML is the commented configuration; hash is the bcrypt hash of
// the application's password.
func (a *initAnswers) configYAML(hash string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# yaml-language-server: $schema=/usr/share/oauthrelay/config.schema.json")
	p("# oauthrelay configuration, written by `oauthrelay init` on %s.", time.Now().Format("2006-01-02"))
	p("# Every key is described in config.example.yaml (/usr/share/doc/oauthrelay/ in the")
	p("# packages). Check it with `oauthrelay check -config FILE`; apply edits with")
	p("# `systemctl reload oauthrelay` (SIGHUP).")
	if a.StateDir != "" {
		p("")
		p("# Token store, its key and the queue.")
		p("state_dir: %s", q(a.StateDir))
	}
	p("")
	p("# What the application connects to: SMTP on 127.0.0.1:2525, IMAP on")
	p("# 127.0.0.1:1143 and POP3 on 127.0.0.1:1110 (\"off\" turns one off), no")
	p("# TLS (the connection never leaves this host); the status page on")
	p("# http://127.0.0.1:8025/.")
	p("listen:")
	p("  smtp: {addr: \"127.0.0.1:2525\"}")
	p("  imap: {addr: \"127.0.0.1:1143\"}")
	p("  pop3: {addr: \"127.0.0.1:1110\"}")
	p("  admin: {addr: \"127.0.0.1:8025\"}")
	p("")
	p("providers:")
	p("  # The app registration %s in Entra ID.", q(a.AppName))
	p("  %s:", providerName)
	p("    type: microsoft")
	p("    cloud: %s", a.Cloud)
	p("    tenant: %s", q(a.Tenant))
	p("    client_id: %s", q(a.ClientID))
	switch a.Credential {
	case "secret":
		file := a.SecretFile
		if file == "" {
			file = providerName + "-client-secret" // relative to this file's directory
		}
		p("    # The client secret, in a file only the service can read (not in this file).")
		p("    client_secret_file: %s", q(file))
	case "certificate":
		p("    # The certificate uploaded to the app registration, and its private key.")
		p("    client_certificate_file: %s", q(a.CertFile))
		p("    client_key_file: %s", q(a.KeyFile))
	}
	p("    # %s", grantWhen(a.Grant))
	p("    grant: %s", a.Grant)
	if a.TokenURL != "" || a.AuthorizeURL != "" || a.DeviceURL != "" {
		p("    # Endpoints other than the cloud's defaults.")
	}
	for _, kv := range [][2]string{{"token_url", a.TokenURL}, {"authorize_url", a.AuthorizeURL}, {"device_url", a.DeviceURL}} {
		if kv[1] != "" {
			p("    %s: %s", kv[0], q(kv[1]))
		}
	}
	if a.SMTPAddr != "" {
		p("    smtp: {addr: %s, tls: starttls}", q(a.SMTPAddr))
	}
	if a.IMAPAddr != "" {
		p("    imap: {addr: %s, tls: implicit}", q(a.IMAPAddr))
	}
	if a.GraphURL != "" {
		p("    graph: {url: %s}", q(a.GraphURL))
	}
	if a.POP3Addr != "" {
		p("    pop3: {addr: %s, tls: implicit}", q(a.POP3Addr))
	}
	if a.CAFile != "" {
		p("    ca_file: %s", q(a.CAFile))
	}
	p("")
	p("# Each account maps the application's login to a mailbox.")
	p("accounts:")
	names := a.accountNames()
	for i, mb := range a.Mailboxes {
		p("  - name: %s", names[i])
		p("    provider: %s", providerName)
		if config.IsMailboxPattern(mb) {
			p("    # Every mailbox of the domain: the application logs in with the mailbox's")
			p("    # address as its user name (no username key) and the password below.")
			p("    mailbox: %s", q(mb))
		} else {
			p("    mailbox: %s", q(mb))
			p("    username: %s", q(a.Usernames[i]))
		}
		p("    # bcrypt hash of the application's password (`oauthrelay hash-password` makes a new one).")
		p("    password_hash: %s", q(hash))
		from := append([]string{mb}, a.SendAs...)
		quoted := make([]string, len(from))
		for j, f := range from {
			quoted[j] = q(f)
		}
		p("    # MAIL FROM addresses the application may use; others need SendAs in Exchange.")
		p("    allowed_from: [%s]", strings.Join(quoted, ", "))
		if a.MailboxPassword != "" {
			p("    # The mailbox's own password (grant password), in a file only the service can read.")
			p("    password_file: %s", q(names[i]+"-mailbox-password"))
		}
		p("    # %s", choiceWhen(deliveryChoices, a.Delivery))
		p("    delivery: %s", a.Delivery)
		if a.Upstream != "" && a.Upstream != config.UpstreamSMTP {
			p("    # %s", choiceWhen(upstreamChoices, a.Upstream))
			p("    upstream: %s", a.Upstream)
		}
	}
	return b.String()
}

func grantWhen(g string) string {
	for _, c := range grantChoices {
		if c.value == g {
			return g + ": " + c.when
		}
	}
	return g
}

// choiceWhen is a choice's value with its one line on when to pick it.
func choiceWhen(choices []choice, v string) string {
	for _, c := range choices {
		if c.value == v {
			return v + ": " + c.when
		}
	}
	return v
}

// powerShell is the Entra ID (Microsoft Graph PowerShell) and Exchange
// Online PowerShell for the choices made: the API permissions and their
// consent, the service principal, mailbox access (Add-MailboxPermission,
// or RBAC for Applications with a management scope for SMTP where asked),
// SMTP AUTH on each mailbox, and SendAs for the other senders. The steps
// are internal/powershell's, which check's fixes use too.
func (a *initAnswers) powerShell() string {
	s := powershell.New(a.Cloud)
	p := s.Line
	p("# oauthrelay: Entra ID and Exchange Online setup, written by `oauthrelay init`.")
	p("#   App:       %s (client id %s)", a.AppName, a.ClientID)
	p("#   Tenant:    %s (%s cloud)", a.Tenant, a.Cloud)
	p("#   Grant:     %s", a.Grant)
	p("#   Mailboxes: %s", strings.Join(a.Mailboxes, ", "))
	if len(a.SendAs) > 0 {
		p("#   Sends as:  %s", strings.Join(a.SendAs, ", "))
	}
	p("# Run it in PowerShell 7 as an administrator who may consent to API permissions and manage")
	p("# Exchange (Global Administrator, or Privileged Role Administrator + Exchange Administrator).")
	p("# A step that was done before reports an error saying so; the others still run.")
	p("")
	p("# 1. Entra ID, with Microsoft Graph PowerShell (Install-Module Microsoft.Graph -Scope CurrentUser).")
	s.ConnectGraph(graphAdminScopes...)
	s.App(a.ClientID)
	p("# Office 365 Exchange Online, the API that owns the mail permissions.")
	s.API(powershell.VarExchange, powershell.ExchangeAppID)
	if a.Grant == config.GrantClientCredentials {
		perms := []string{"IMAP.AccessAsApp", "POP.AccessAsApp"}
		if !a.RBAC {
			perms = append([]string{"SMTP.SendAsApp"}, perms...)
		}
		p("# API permissions (application): %s, then admin consent (an app role assignment each).", strings.Join(perms, ", "))
		s.GrantAppRoles(powershell.VarExchange, perms)
	} else {
		// POP.AccessAsUser.All: the delegated default scopes ask for it.
		perms := []string{"SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All"}
		p("# API permissions (delegated): %s, then admin consent for all users.", strings.Join(perms, ", "))
		s.GrantDelegated(powershell.VarExchange, perms)
		switch {
		case a.Grant == config.GrantAuthorizationCode:
			p("# Redirect URIs: `oauthrelay login` listens on http://localhost:PORT/ (Entra ignores the port of")
			p("# localhost) and the status page's Sign in comes back to /oauth2/callback.")
			if a.Credential == "none" {
				p("Update-MgApplication -ApplicationId $app.Id -PublicClient @{ RedirectUris = @('http://localhost/', 'http://localhost:8025/oauth2/callback') }")
			} else {
				p("Update-MgApplication -ApplicationId $app.Id -Web @{ RedirectUris = @('http://localhost/', 'http://localhost:8025/oauth2/callback') }")
			}
		}
		if a.Grant == config.GrantDeviceCode || a.Grant == config.GrantPassword || a.Credential == "none" {
			p("# \"Allow public client flows\" (Authentication): device code and password sign-ins need it.")
			p("Update-MgApplication -ApplicationId $app.Id -IsFallbackPublicClient")
		}
	}
	if a.sendsThroughGraph() {
		p("# Microsoft Graph, for upstream %s: Mail.Send, and Mail.ReadWrite for messages over 3 MB (drafts", a.Upstream)
		p("# and upload sessions) and the Sent Items check after a lost answer.")
		s.API(powershell.VarGraph, powershell.GraphAppID)
		s.Grant(powershell.VarGraph, a.Grant == config.GrantClientCredentials, []string{"Mail.Send", "Mail.ReadWrite"})
	}
	p("")
	p("# 2. Exchange Online, with Exchange Online PowerShell (Install-Module ExchangeOnlineManagement).")
	s.ConnectExchange()
	if a.Grant == config.GrantClientCredentials {
		p("# Register the app's service principal in Exchange (the ObjectId of the Enterprise application).")
		s.NewServicePrincipal(a.AppName)
		if a.RBAC {
			p("# SMTP: RBAC for Applications, limited to these mailboxes by a management scope (instead of")
			p("# SMTP.SendAsApp consented for the whole tenant; grant it one way, not both). The role's name as")
			p("# Exchange lists it: Get-ManagementRole | Where-Object Name -like 'Application *'")
			s.ScopeRole("oauthrelay-"+strings.ToLower(strings.ReplaceAll(a.AppName, " ", "-")), "Application SMTP.SendAsApp", a.Mailboxes)
		}
		p("# Mailbox access for the service principal (IMAP has no RBAC role: FullAccess per mailbox).")
		for _, mb := range a.Mailboxes {
			s.AddMailboxPermission(mb)
		}
	}
	if a.Upstream != config.UpstreamGraph {
		p("# SMTP AUTH must be on for the mailbox, even with OAuth (else 535 5.7.139).")
		for _, mb := range a.Mailboxes {
			s.EnableSMTPAuth(mb)
		}
	}
	if len(a.SendAs) > 0 {
		p("# Send as the other addresses (else 550 5.7.60 / SendAsDenied).")
		for _, from := range a.SendAs {
			for _, mb := range a.Mailboxes {
				s.AddSendAs(from, mb)
			}
		}
	}
	p("")
	if a.delegated() {
		p("# 3. Sign in once per mailbox: oauthrelay login -config FILE ACCOUNT (init runs it now), or Sign in on")
		p("#    the status page.")
	} else {
		p("# 3. Prove each step: oauthrelay check -config FILE")
	}
	return s.String()
}

// graphAdminScopes are what Microsoft Graph PowerShell needs to add API
// permissions and consent to them.
var graphAdminScopes = []string{"Application.ReadWrite.All", "AppRoleAssignment.ReadWrite.All", "DelegatedPermissionGrant.ReadWrite.All"}
