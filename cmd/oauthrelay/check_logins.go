package main

import (
	"context"
	"errors"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/powershell"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// The steps check proves by logging in as the relay does: mailbox
// permission, SMTP AUTH, send as, IMAP and POP3.

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
