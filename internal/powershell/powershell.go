// Package powershell writes the Entra ID (Microsoft Graph PowerShell) and
// Exchange Online PowerShell an administrator runs for the relay, with the
// real names filled in: API permissions and their consent, the service
// principal, mailbox access, SMTP AUTH, Send As, RBAC for Applications.
// `oauthrelay init` writes a whole setup script from these steps and
// `oauthrelay check` hands out the ones a failing step needs, so both say
// exactly the same commands.
//
// Out of scope: running anything. Names reach a command quoted as
// PowerShell string literals; addresses in double-quoted filters must hold
// no quote, backtick or $ (the config's address checks refuse them).
package powershell

import (
	"fmt"
	"strings"

	"github.com/oauthrelay/oauthrelay/config"
)

// Application ids of the APIs whose permissions the relay's app needs.
const (
	// ExchangeAppID is "Office 365 Exchange Online": SMTP.SendAsApp,
	// IMAP.AccessAsApp, POP.AccessAsApp, SMTP.Send, IMAP.AccessAsUser.All,
	// POP.AccessAsUser.All.
	ExchangeAppID = "00000002-0000-0ff1-ce00-000000000000"
	// GraphAppID is "Microsoft Graph": Mail.Send, Mail.ReadWrite, Mail.Read.
	GraphAppID = "00000003-0000-0000-c000-000000000000"
)

// The PowerShell variables the steps share: the app registration, its
// service principal, and the APIs' service principals.
const (
	VarExchange = "$exo"
	VarGraph    = "$graph"
)

// Script is a PowerShell script being written, one command a line.
type Script struct {
	cloud string
	b     strings.Builder
}

// New starts a script for a cloud (config.CloudGlobal, CloudUSGov,
// CloudChina; "" is global).
func New(cloud string) *Script { return &Script{cloud: cloud} }

// String is the script so far.
func (s *Script) String() string { return s.b.String() }

// Line adds a line (a command or a comment of the caller's).
func (s *Script) Line(format string, args ...any) { fmt.Fprintf(&s.b, format+"\n", args...) }

// Comment adds a comment line.
func (s *Script) Comment(format string, args ...any) { s.Line("# "+format, args...) }

// Quote quotes a PowerShell string literal.
func Quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// List quotes items as a PowerShell list ('a','b').
func List(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = Quote(s)
	}
	return strings.Join(q, ",")
}

// MailboxFilter is the OPATH filter (Get-Mailbox -Filter, a management
// scope's -RecipientRestrictionFilter) of a mailbox or a "*@domain"
// pattern, for a double-quoted PowerShell string.
func MailboxFilter(mb string) string {
	if config.IsMailboxPattern(mb) {
		return "PrimarySmtpAddress -like '" + mb + "'"
	}
	return "PrimarySmtpAddress -eq '" + mb + "'"
}

// ConnectGraph signs in to Microsoft Graph PowerShell with the scopes the
// following commands need.
func (s *Script) ConnectGraph(scopes ...string) {
	env := ""
	switch s.cloud {
	case config.CloudUSGov:
		env = " -Environment USGov"
	case config.CloudChina:
		env = " -Environment China"
	}
	s.Line("Connect-MgGraph%s -Scopes %s", env, List(scopes))
}

// ConnectExchange signs in to Exchange Online PowerShell.
func (s *Script) ConnectExchange() {
	env := ""
	switch s.cloud {
	case config.CloudUSGov:
		env = " -ExchangeEnvironmentName O365USGovGCCHigh"
	case config.CloudChina:
		env = " -ExchangeEnvironmentName O365China"
	}
	s.Line("Connect-ExchangeOnline%s", env)
}

// App sets $appId, $app (the app registration) and $sp (its service
// principal, the Enterprise application, made when missing).
func (s *Script) App(clientID string) {
	s.Line("$appId = %s", Quote(clientID))
	s.Line("$app = Get-MgApplication -Filter \"appId eq '$appId'\"")
	s.Comment("The app's service principal (its Enterprise application): made if missing.")
	s.Line("$sp = Get-MgServicePrincipal -Filter \"appId eq '$appId'\"")
	s.Line("if (-not $sp) { $sp = New-MgServicePrincipal -AppId $appId }")
}

// API sets variable (VarExchange, VarGraph) to the service principal of the
// API with application id appID.
func (s *Script) API(variable, appID string) {
	s.Line("%s = Get-MgServicePrincipal -Filter \"appId eq '%s'\"", variable, appID)
}

// GrantAppRoles adds application permissions of api (a variable API set)
// to the app registration and gives them admin consent: an app role
// assignment each. It needs App.
func (s *Script) GrantAppRoles(api string, perms []string) {
	s.Line("$perms = %s.AppRoles | Where-Object { $_.Value -in %s }", api, List(perms))
	s.requiredAccess(api, "Role")
	s.Line("foreach ($r in $perms) { New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $sp.Id -PrincipalId $sp.Id -ResourceId %s.Id -AppRoleId $r.Id }", api)
}

// Grant adds and consents perms of api as the grant uses them: application
// permissions for an app-only grant (GrantAppRoles), delegated ones
// otherwise (GrantDelegated).
func (s *Script) Grant(api string, appOnly bool, perms []string) {
	if appOnly {
		s.GrantAppRoles(api, perms)
	} else {
		s.GrantDelegated(api, perms)
	}
}

// GrantDelegated adds delegated permissions of api to the app registration
// and gives them admin consent for all users. It needs App.
func (s *Script) GrantDelegated(api string, perms []string) {
	s.Line("$perms = %s.Oauth2PermissionScopes | Where-Object { $_.Value -in %s }", api, List(perms))
	s.requiredAccess(api, "Scope")
	s.Line("New-MgOauth2PermissionGrant -ClientId $sp.Id -ConsentType AllPrincipals -ResourceId %s.Id -Scope %s", api, Quote(strings.Join(perms, " ")))
}

// requiredAccess lists $perms of api as the app registration's API
// permissions of that API, keeping its other APIs'.
func (s *Script) requiredAccess(api, kind string) {
	s.Line("$rra = @($app.RequiredResourceAccess | Where-Object { $_.ResourceAppId -ne %s.AppId })", api)
	s.Line("$rra += @{ ResourceAppId = %s.AppId; ResourceAccess = @($perms | ForEach-Object { @{ Id = $_.Id; Type = '%s' } }) }", api, kind)
	s.Line("Update-MgApplication -ApplicationId $app.Id -RequiredResourceAccess $rra")
}

// NewServicePrincipal registers the app's service principal ($sp, from
// App) in Exchange.
func (s *Script) NewServicePrincipal(displayName string) {
	s.Line("New-ServicePrincipal -AppId $appId -ObjectId $sp.Id -DisplayName %s", Quote(displayName))
}

// AddMailboxPermission gives the service principal FullAccess to a mailbox,
// or to every mailbox of a "*@domain" pattern.
func (s *Script) AddMailboxPermission(mb string) {
	if config.IsMailboxPattern(mb) {
		s.Comment("Every mailbox of %s (run it again for mailboxes added later):", strings.TrimPrefix(mb, "*@"))
		s.Line("Get-Mailbox -ResultSize Unlimited -Filter \"%s\" | ForEach-Object { Add-MailboxPermission -Identity $_.Identity -User $sp.Id -AccessRights FullAccess }", MailboxFilter(mb))
		return
	}
	s.Line("Add-MailboxPermission -Identity %s -User $sp.Id -AccessRights FullAccess", Quote(mb))
}

// EnableSMTPAuth turns SMTP AUTH on for a mailbox, or every mailbox of a
// pattern (Exchange answers 535 5.7.139 while it is off, OAuth or not).
func (s *Script) EnableSMTPAuth(mb string) {
	if config.IsMailboxPattern(mb) {
		s.Line("Get-Mailbox -ResultSize Unlimited -Filter \"%s\" | Set-CASMailbox -SmtpClientAuthenticationDisabled $false", MailboxFilter(mb))
		return
	}
	s.Line("Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false", Quote(mb))
}

// EnablePOP3 turns POP3 on for a mailbox (Exchange refuses the login while
// it is off).
func (s *Script) EnablePOP3(mb string) {
	if config.IsMailboxPattern(mb) {
		s.Line("Get-Mailbox -ResultSize Unlimited -Filter \"%s\" | Set-CASMailbox -PopEnabled $true", MailboxFilter(mb))
		return
	}
	s.Line("Set-CASMailbox -Identity %s -PopEnabled $true", Quote(mb))
}

// EnableSMTPAuthTenant turns the tenant's SMTP AUTH switch on (a mailbox's
// own setting, when set, still wins).
func (s *Script) EnableSMTPAuthTenant() {
	s.Line("Set-TransportConfig -SmtpClientAuthenticationDisabled $false")
}

// AddSendAs lets mailbox send as from (550 5.7.60 / SendAsDenied
// otherwise). For a pattern the trustee is each of its mailboxes that
// sends as from, which only the administrator knows: a commented template.
func (s *Script) AddSendAs(from, mb string) {
	if config.IsMailboxPattern(mb) {
		s.Comment("... and for each mailbox of %s that sends as %s:", strings.TrimPrefix(mb, "*@"), from)
		s.Comment("Add-RecipientPermission -Identity %s -Trustee <mailbox> -AccessRights SendAs -Confirm:$false", Quote(from))
		return
	}
	s.Line("Add-RecipientPermission -Identity %s -Trustee %s -AccessRights SendAs -Confirm:$false", Quote(from), Quote(mb))
}

// ScopeRole limits a role of RBAC for Applications to mailboxes: a
// management scope named scope and the service principal's role assignment
// in it (instead of the permission consented for the whole tenant).
func (s *Script) ScopeRole(scope, role string, mailboxes []string) {
	filters := make([]string, len(mailboxes))
	for i, mb := range mailboxes {
		filters[i] = MailboxFilter(mb)
	}
	s.Line("New-ManagementScope -Name %s -RecipientRestrictionFilter \"%s\"", Quote(scope), strings.Join(filters, " -or "))
	s.Line("New-ManagementRoleAssignment -App $sp.Id -Role %s -CustomResourceScope %s", Quote(role), Quote(scope))
	if len(mailboxes) > 0 && !config.IsMailboxPattern(mailboxes[0]) {
		s.Line("Test-ServicePrincipalAuthorization -Identity $sp.Id -Resource %s", Quote(mailboxes[0]))
	}
}
