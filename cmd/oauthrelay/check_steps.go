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

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/powershell"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
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
		if errors.As(err, &oe) && oe.AADSTS == 65001 {
			s.PowerShell = c.consentScript(c.neededPerms())
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
	if c.a.AppOnly() {
		s.GrantAppRoles(powershell.VarExchange, names)
	} else {
		s.GrantDelegated(powershell.VarExchange, names)
	}
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

// probeSMTP logs in over SMTP as the relay does for the mailbox.
func (c *accountCheck) probeSMTP() error {
	ctx, cancel := context.WithTimeout(c.ctx, checkTimeout)
	defer cancel()
	return upstream.ProbeSMTP(ctx, c.a.SMTPTarget(c.a.Mailbox), c.a.Source, "")
}

// smtpSteps are the mailbox permission (from the SMTP login for app-only
// accounts), SMTP AUTH and send-as steps.
func (c *accountCheck) smtpSteps(login error) {
	a := c.a
	if !c.usesSMTP() {
		if a.ProviderRef.SMTP.Addr != "" {
			c.skip(stepSMTPAuth, "sends through Microsoft Graph (upstream: graph)")
			for _, f := range c.sendAsSenders() {
				c.skip(stepSendAs+f, "sends through Microsoft Graph, which checks Send As when it sends (ErrorSendAsDenied)")
			}
		}
		return // the IMAP login proves the mailbox permission
	}
	if p, ok := c.missing[events.SMTP]; ok {
		why := "consent failed: the token has no " + p
		if login != nil {
			why += "; Exchange refused the login (" + loginDetail(login) + ")"
		}
		c.skip(stepPermission, why)
		c.blocked = why
		return
	}
	var ue *upstream.Error
	errors.As(login, &ue)
	refused := ue != nil && ue.Kind == upstream.Refused && ue.Reply != nil
	authOff := refused && ue.Reply.EnhancedCode == smtp.EnhancedCode{5, 7, 139}
	addr := a.ProviderRef.SMTP.Addr
	switch {
	case login == nil:
		c.permissionOK("SMTP login")
		c.put(checkStep{Name: stepSMTPAuth, Status: stepOK, Detail: "logged in to " + addr + " as " + c.loginMailbox() + " with XOAUTH2"})
	case authOff:
		c.permissionOK("SMTP login, before it refused SMTP AUTH")
		c.smtpAuthOff(ue.Reply)
	case a.AppOnly():
		s := checkStep{Name: stepPermission, Status: stepFail, Detail: loginDetail(login), Fix: loginFix(login, addr)}
		if refused {
			s.PowerShell = c.permissionScript()
		}
		c.put(s)
		c.blocked = "mailbox permission failed"
	default:
		c.put(checkStep{Name: stepSMTPAuth, Status: stepFail, Detail: loginDetail(login), Fix: loginFix(login, addr)})
		c.blocked = "the SMTP login failed"
	}
	if login == nil {
		c.sendAs()
	}
	if authOff && a.Upstream == config.UpstreamAuto {
		c.blocked = "SMTP AUTH is disabled: auto sends through Microsoft Graph"
	} else if authOff {
		c.blocked = "SMTP AUTH failed"
	}
}

// permissionOK records an app-only account's mailbox permission as proven
// by a login over proto.
func (c *accountCheck) permissionOK(how string) {
	if c.a.AppOnly() {
		c.put(checkStep{Name: stepPermission, Status: stepOK,
			Detail: "Exchange accepted the app's token for " + c.a.Mailbox + " (" + how + ")"})
	}
}

// smtpAuthOff is Exchange's 535 5.7.139: SMTP AUTH is off for the mailbox
// or the tenant. For upstream auto that is a warning: the relay sends
// through Graph then.
func (c *accountCheck) smtpAuthOff(reply *smtp.SMTPError) {
	s := powershell.New(c.a.ProviderRef.Cloud)
	s.ConnectExchange()
	s.EnableSMTPAuth(c.loginMailbox())
	st := checkStep{Name: stepSMTPAuth, Status: stepFail, Detail: upstream.FormatReply(reply),
		Fix:        upstream.ExplainSMTP(reply.Code, reply.EnhancedCode, reply.Message),
		PowerShell: s.String()}
	if c.a.Upstream == config.UpstreamAuto {
		st.Status = stepWarn
		st.Detail = "SMTP AUTH disabled: auto sends through Graph (" + st.Detail + ")"
		st.Fix = "nothing to do for the relay; to send over SMTP again: " + st.Fix
	}
	c.put(st)
}

// sendAs opens a transaction with MAIL FROM each other allowed sender, on
// the login the relay would use for it: Exchange checks Send As at MAIL.
func (c *accountCheck) sendAs() {
	for _, f := range c.sendAsSenders() {
		t := c.a.SMTPTarget(f)
		ctx, cancel := context.WithTimeout(c.ctx, checkTimeout)
		err := upstream.ProbeSMTP(ctx, t, c.a.Source, f)
		cancel()
		name, who := stepSendAs+f, t.Account.Mailbox
		if err == nil {
			detail := who + " may send as " + f
			if strings.EqualFold(who, f) {
				detail = f + " logs in itself (one of the account's mailboxes, or send_as: sender) and may send"
			}
			c.put(checkStep{Name: name, Status: stepOK, Detail: detail})
			continue
		}
		s := checkStep{Name: name, Status: stepFail, Detail: loginDetail(err), Fix: loginFix(err, c.a.ProviderRef.SMTP.Addr)}
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.Reply != nil {
			s.Fix = upstream.ExplainMail(ue.Reply, f, who)
			if ue.Reply.EnhancedCode == (smtp.EnhancedCode{5, 7, 60}) || strings.Contains(ue.Reply.Message, "SendAs") {
				ps := powershell.New(c.a.ProviderRef.Cloud)
				ps.ConnectExchange()
				ps.AddSendAs(f, who)
				s.PowerShell = ps.String()
			}
		}
		c.put(s)
	}
}

// imapStep logs in over IMAP as the relay does and opens INBOX read-only:
// Exchange may accept the login and only then say "User is authenticated
// but not connected". Without SMTP it also proves an app-only account's
// mailbox permission.
func (c *accountCheck) imapStep() {
	a := c.a
	if a.ProviderRef.IMAP.Addr == "" {
		return
	}
	if p, ok := c.missing[events.IMAP]; ok {
		c.skip(stepIMAP, "consent failed: the token has no "+p)
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, checkTimeout)
	defer cancel()
	s, err := upstream.IMAP(ctx, a.Target(events.IMAP), a.Source)
	if err == nil {
		if err = s.Examine(ctx, "INBOX"); err != nil {
			s.Close()
		} else {
			err = s.Logout(ctx)
		}
	}
	addr := a.ProviderRef.IMAP.Addr
	proves := a.AppOnly() && !c.usesSMTP()
	if err == nil {
		if proves {
			c.permissionOK("IMAP login")
		}
		c.put(checkStep{Name: stepIMAP, Status: stepOK, Detail: "logged in to " + addr + " as " + a.Mailbox + " and opened INBOX"})
		return
	}
	st := checkStep{Name: stepIMAP, Status: stepFail, Detail: loginDetail(err), Fix: loginFix(err, addr)}
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Kind == upstream.Refused && a.AppOnly() {
		st.PowerShell = c.permissionScript()
	}
	if proves {
		st.Name = stepPermission
		c.put(st)
		c.skip(stepIMAP, "mailbox permission failed")
		return
	}
	c.put(st)
}

// usesPOP3: the provider has POP3 and the relay serves it.
func (c *accountCheck) usesPOP3() bool { return c.a.ProviderRef.POP3.Addr != "" && c.pop3 }

// pop3Step logs in over POP3 as the relay does and runs STAT, which shows
// the maildrop can be read, then QUIT (nothing is deleted).
func (c *accountCheck) pop3Step() {
	a := c.a
	switch {
	case a.ProviderRef.POP3.Addr == "":
		return
	case !c.pop3:
		c.skip(stepPOP3, "listen.pop3 is off: the relay serves no POP3")
		return
	}
	if p, ok := c.missing[events.POP3]; ok {
		c.skip(stepPOP3, "consent failed: the token has no "+p)
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, checkTimeout)
	defer cancel()
	s, err := upstream.POP3(ctx, a.Target(events.POP3), a.Source)
	if err == nil {
		if _, _, err = s.Stat(ctx); err != nil {
			s.Close()
		} else {
			err = s.Quit(ctx)
		}
	}
	addr := a.ProviderRef.POP3.Addr
	if err == nil {
		c.put(checkStep{Name: stepPOP3, Status: stepOK, Detail: "logged in to " + addr + " as " + a.Mailbox + " and read the maildrop (STAT)"})
		return
	}
	st := checkStep{Name: stepPOP3, Status: stepFail, Detail: loginDetail(err), Fix: loginFix(err, addr)}
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Kind == upstream.Refused {
		ps := powershell.New(a.ProviderRef.Cloud)
		if a.AppOnly() {
			ps = c.graphScript()
		}
		ps.ConnectExchange()
		ps.EnablePOP3(a.Mailbox)
		if a.AppOnly() {
			ps.NewServicePrincipal("oauthrelay " + a.Provider)
			ps.AddMailboxPermission(a.Mailbox)
		}
		st.PowerShell = ps.String()
	}
	c.put(st)
}

// explainRefusal is the explanation of an IMAP or POP3 login's refusal,
// found in its reason.
func explainRefusal(ue *upstream.Error) string {
	if ue.Proto == events.POP3 {
		return upstream.ExplainPOP3(ue.Reason)
	}
	return upstream.ExplainIMAP(ue.Reason)
}

// loginDetail is what a failed login saw: the SMTP reply with its enhanced
// code, or the reason without its explanation (which is the fix).
func loginDetail(err error) string {
	var ue *upstream.Error
	var oe *oauth.Error
	switch {
	case !errors.As(err, &ue):
		return err.Error()
	case ue.Reply != nil:
		return upstream.FormatReply(ue.Reply)
	case errors.As(ue.Err, &oe):
		return tokenStep("", oe).Detail
	case ue.Kind == upstream.Refused:
		if hint := explainRefusal(ue); hint != "" {
			return strings.TrimSuffix(ue.Reason, "; "+hint)
		}
		return ue.Reason
	case ue.Err != nil:
		return ue.Reason + ": " + ue.Err.Error()
	}
	return ue.Reason
}

// loginFix is the fix of a failed login: Exchange's reply explained, an
// IMAP refusal's explanation, a token failure's fix, or an unreachable
// server.
func loginFix(err error, addr string) string {
	var ue *upstream.Error
	var oe *oauth.Error
	switch {
	case !errors.As(err, &ue):
		return ""
	case ue.Reply != nil:
		return upstream.ExplainSMTP(ue.Reply.Code, ue.Reply.EnhancedCode, ue.Reply.Message)
	case errors.As(ue.Err, &oe):
		return oe.Fix
	case ue.Kind == upstream.Refused:
		return explainRefusal(ue)
	}
	return "the upstream " + strings.ToUpper(string(ue.Proto)) + " server " + addr +
		" could not be reached, the TLS handshake failed, or it is unavailable for now"
}
