package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/powershell"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// The steps' names, in the order an administrator sets them up.
const (
	stepToken      = "token"
	stepConsent    = "consent"
	stepPermission = "mailbox permission"
	stepSMTPAuth   = "SMTP AUTH"
	stepSendAs     = "send as " // + the address
	stepIMAP       = "IMAP"
	stepPOP3       = "POP3"
)

// accountCheck proves one account's steps. Every step of the plan ends up
// in the report: one that was not run is skipped, with why (blocked).
type accountCheck struct {
	ctx   context.Context
	relay *proxy.Relay
	a     *proxy.Account
	pop3  bool // the relay serves POP3 (listen.pop3 is on)

	plan    []string
	done    map[string]checkStep
	blocked string // why the steps not run could not run
	// missing are the permissions the consent step found missing, by
	// protocol.
	missing map[events.Proto]string
}

// put records a step, the placeholders of its fix (the explanations'
// texts are shared with the log) filled in with the account's names.
func (c *accountCheck) put(s checkStep) {
	mb := c.loginMailbox()
	if mb == "" {
		mb = c.a.Mailbox
	}
	s.Fix = strings.NewReplacer("<mailbox>", mb, "<app id>", c.a.ProviderRef.ClientID).Replace(s.Fix)
	c.done[s.Name] = s
}

// skip records a step that cannot run, and why.
func (c *accountCheck) skip(name, why string) {
	c.put(checkStep{Name: name, Status: stepSkip, Detail: why})
}

// steps is the report: the plan's steps in order.
func (c *accountCheck) steps() []checkStep {
	out := make([]checkStep, 0, len(c.plan))
	for _, n := range c.plan {
		s, ok := c.done[n]
		if !ok {
			s = checkStep{Name: n, Status: stepSkip, Detail: c.blocked}
		}
		out = append(out, s)
	}
	return out
}

// usesSMTP: the account sends over SMTP (upstream smtp, or auto while
// Exchange takes SMTP AUTH).
func (c *accountCheck) usesSMTP() bool {
	return c.a.ProviderRef.SMTP.Addr != "" && c.a.Upstream != config.UpstreamGraph
}

// loginMailbox is the mailbox that logs in over SMTP for the account's
// own mail: the mailbox, or a delegate for a shared one.
func (c *accountCheck) loginMailbox() string {
	return c.a.SMTPTarget(c.a.Mailbox).Account.Mailbox
}

// sendAsSenders are the addresses other than the login mailbox that a
// message may come from (the allowed_from addresses, and a shared mailbox
// checked with check ACCOUNT MAILBOX): each is sent as (or, app-only with
// send_as: sender or one of the account's mailboxes, logs in itself).
func (c *accountCheck) sendAsSenders() []string {
	from := c.a.AllowedFrom
	if c.a.Base() != c.a && c.a.AllowsSender(c.a.Mailbox) {
		from = append([]string{c.a.Mailbox}, from...)
	}
	login := c.loginMailbox()
	var out []string
	for _, f := range from {
		f = strings.ToLower(f)
		if strings.Contains(f, "*") || f == "<>" || strings.EqualFold(f, login) || slices.Contains(out, f) {
			continue
		}
		out = append(out, f)
	}
	return out
}

// makePlan lists the steps that apply to the account.
func (c *accountCheck) makePlan() {
	a := c.a
	c.plan = []string{stepToken}
	if a.ProviderRef.Type == config.TypeMicrosoft && !a.PasswordPassthrough {
		c.plan = append(c.plan, stepConsent)
	}
	if a.AppOnly() {
		c.plan = append(c.plan, stepPermission)
	}
	if a.ProviderRef.SMTP.Addr != "" {
		c.plan = append(c.plan, stepSMTPAuth)
		for _, f := range c.sendAsSenders() {
			c.plan = append(c.plan, stepSendAs+f)
		}
	}
	if a.ProviderRef.IMAP.Addr != "" {
		c.plan = append(c.plan, stepIMAP)
	}
	if a.ProviderRef.POP3.Addr != "" {
		c.plan = append(c.plan, stepPOP3)
	}
	if a.GraphSource != nil {
		c.plan = append(c.plan, graphSteps...)
	}
}

// run proves the steps in order; a step whose premise failed is skipped.
func (c *accountCheck) run() {
	c.done, c.missing = map[string]checkStep{}, map[events.Proto]string{}
	c.makePlan()
	a := c.a
	if a.PasswordPassthrough {
		c.blocked = "password passthrough: the relay logs in with the application's own password"
		return
	}
	tok, ok := c.token()
	if !ok {
		c.blocked = "the token step failed"
		return
	}
	if a.DomainWide() {
		c.consent(tok, nil)
		c.blocked = "domain-wide: name a mailbox: check -config FILE " + a.Name + " MAILBOX"
		return
	}
	var smtpLogin error
	if c.usesSMTP() {
		smtpLogin = c.probeSMTP()
	}
	c.consent(tok, smtpLogin)
	c.smtpSteps(smtpLogin)
	c.imapStep()
	c.pop3Step()
	if a.GraphSource != nil {
		c.graph()
	}
}

// token gets the account's access token: the grant works.
func (c *accountCheck) token() (string, bool) {
	ctx, cancel := context.WithTimeout(c.ctx, checkTimeout)
	defer cancel()
	tok, err := c.a.Source.Token(ctx)
	if err != nil {
		s := tokenStep(stepToken, err)
		var oe *oauth.Error
		switch {
		case !errors.As(err, &oe):
		case oe.AADSTS == 65001:
			s.PowerShell = c.consentScript(c.neededPerms())
		case oe.AADSTS == 700016:
			// The app has no service principal in this tenant (or the
			// client_id or tenant is wrong): App makes it.
			s.PowerShell = c.graphScript().String()
		}
		c.put(s)
		return "", false
	}
	detail := "got an access token (grant " + c.a.ProviderRef.Grant + ")"
	if cl, ok := parseClaims(tok); ok && cl.Exp > 0 {
		detail += ", valid for " + strings.TrimSuffix(time.Until(time.Unix(cl.Exp, 0)).Round(time.Minute).String(), "0s")
	}
	c.put(checkStep{Name: stepToken, Status: stepOK, Detail: detail})
	return tok, true
}

// tokenStep is a failed token request: the AADSTS code, its reason and
// the fix (internal/oauth's table).
func tokenStep(name string, err error) checkStep {
	s := checkStep{Name: name, Status: stepFail, Detail: err.Error()}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		s.Detail, s.Fix = oe.Reason, oe.Fix
		if oe.AADSTS != 0 {
			s.Detail = fmt.Sprintf("AADSTS%d: %s", oe.AADSTS, oe.Reason)
		}
	}
	return s
}

// tokenClaims are the claims of an Entra access token check reads.
type tokenClaims struct {
	Roles []string `json:"roles"` // app-only: application permissions
	Scp   string   `json:"scp"`   // delegated: space-separated scopes
	Exp   int64    `json:"exp"`
}

// parseClaims reads a JWT's claims without verifying it (the upstream
// does that): what the token says it may do. false: not a JWT.
func parseClaims(tok string) (tokenClaims, bool) {
	var cl tokenClaims
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return cl, false
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil || json.Unmarshal(b, &cl) != nil {
		return cl, false
	}
	return cl, true
}

// perm is an Exchange permission the account needs, for a protocol.
type perm struct {
	name  string
	proto events.Proto
}

// neededPerms are the Office 365 Exchange Online permissions the
// account's protocols need: application permissions app-only, delegated
// ones otherwise.
func (c *accountCheck) neededPerms() []perm {
	app := c.a.AppOnly()
	pick := func(appPerm, delegated string) string {
		if app {
			return appPerm
		}
		return delegated
	}
	var out []perm
	if c.usesSMTP() {
		out = append(out, perm{pick("SMTP.SendAsApp", "SMTP.Send"), events.SMTP})
	}
	if c.a.ProviderRef.IMAP.Addr != "" {
		out = append(out, perm{pick("IMAP.AccessAsApp", "IMAP.AccessAsUser.All"), events.IMAP})
	}
	if c.usesPOP3() {
		out = append(out, perm{pick("POP.AccessAsApp", "POP.AccessAsUser.All"), events.POP3})
	}
	return out
}

// consent reads what the token's roles (app-only) or scopes (delegated)
// say the app's service principal was consented, against what the
// account's protocols need. smtpLogin is the SMTP login's outcome: an
// app-only token without SMTP.SendAsApp still logs in where RBAC for
// Applications grants it.
func (c *accountCheck) consent(tok string, smtpLogin error) {
	if !slices.Contains(c.plan, stepConsent) {
		return
	}
	cl, ok := parseClaims(tok)
	if !ok {
		c.skip(stepConsent, "the access token is not a JWT: the logins below show what it may do")
		return
	}
	have := map[string]bool{}
	kind := "roles"
	for _, r := range cl.Roles {
		have[r] = true
	}
	if !c.a.AppOnly() {
		kind = "scopes"
		for _, s := range strings.Fields(cl.Scp) {
			have[s[strings.LastIndexByte(s, '/')+1:]] = true
		}
	}
	var got, missing []string
	var notes []string
	for _, p := range c.neededPerms() {
		switch {
		case have[p.name]:
			got = append(got, p.name)
		case p.proto == events.SMTP && c.a.AppOnly() && smtpLogin == nil && c.usesSMTP() && !c.a.DomainWide():
			notes = append(notes, p.name+" by RBAC for Applications (not in the token; Exchange accepted the login)")
		default:
			missing = append(missing, p.name)
			c.missing[p.proto] = p.name
		}
	}
	if len(missing) == 0 {
		detail := "the token's " + kind + " hold " + strings.Join(append(got, notes...), ", ")
		if len(got)+len(notes) == 0 {
			detail = "no Exchange permission needed"
		}
		c.put(checkStep{Name: stepConsent, Status: stepOK, Detail: detail})
		return
	}
	var fix string
	if c.a.AppOnly() {
		fix = "grant the app the Office 365 Exchange Online application permissions " + strings.Join(missing, ", ") +
			" and admin consent (Entra admin center → App registrations → the app → API permissions → Add a permission → " +
			"APIs my organization uses → Office 365 Exchange Online → Application permissions, then Grant admin consent); " +
			"new tokens carry them within minutes"
	} else {
		fix = "grant the app the Office 365 Exchange Online delegated permissions " + strings.Join(missing, ", ") +
			" with admin consent, then sign the account in again (oauthrelay login, or Sign in on the status page) so its token carries them"
	}
	names := make([]perm, 0, len(missing))
	for _, p := range c.neededPerms() {
		if slices.Contains(missing, p.name) {
			names = append(names, p)
		}
	}
	c.put(checkStep{Name: stepConsent, Status: stepFail,
		Detail:     fmt.Sprintf("the token's %s lack %s (have: %s)", kind, strings.Join(missing, ", "), strings.Join(sortedKeys(have), " ")),
		Fix:        fix,
		PowerShell: c.consentScript(names)})
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	if len(out) == 0 {
		return []string{"none"}
	}
	return out
}

// consentScript adds and consents the Exchange permissions perms (init's
// steps).
func (c *accountCheck) consentScript(perms []perm) string {
	if len(perms) == 0 {
		return ""
	}
	names := make([]string, len(perms))
	for i, p := range perms {
		names[i] = p.name
	}
	s := c.graphScript()
	s.API(powershell.VarExchange, powershell.ExchangeAppID)
	s.Grant(powershell.VarExchange, c.a.AppOnly(), names)
	return s.String()
}

// graphScript starts a script signed in to Microsoft Graph PowerShell with
// the app ($appId, $app, $sp) found.
func (c *accountCheck) graphScript() *powershell.Script {
	s := powershell.New(c.a.ProviderRef.Cloud)
	s.ConnectGraph(graphAdminScopes...)
	s.App(c.a.ProviderRef.ClientID)
	return s
}

// permissionScript registers the app's service principal in Exchange and
// gives it FullAccess to the mailbox (init's steps).
func (c *accountCheck) permissionScript() string {
	s := c.graphScript()
	s.ConnectExchange()
	s.NewServicePrincipal("oauthrelay " + c.a.Provider)
	s.AddMailboxPermission(c.a.Mailbox)
	return s.String()
}
