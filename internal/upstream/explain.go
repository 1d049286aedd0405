package upstream

import (
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// ExplainSMTP turns an upstream SMTP refusal that administrators meet into
// plain words and the fix; "" when the reply is not one we know. The texts
// follow Microsoft's documentation of these replies.
func ExplainSMTP(code int, enh smtp.EnhancedCode, msg string) string {
	e := fmt.Sprintf("%d.%d.%d", enh[0], enh[1], enh[2])
	switch {
	case e == "5.7.139" || strings.Contains(msg, "SmtpClientAuthentication is disabled"):
		return "SMTP AUTH is disabled for the tenant or the mailbox. Enable it for the mailbox: " +
			"Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false " +
			"(tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false)"
	case e == "5.7.3" || (code == 535 && strings.Contains(msg, "Authentication unsuccessful")):
		return "Exchange refused the token: for app-only access check that the service principal exists " +
			"(New-ServicePrincipal) and has FullAccess to the mailbox (Add-MailboxPermission), and that the " +
			"app has SMTP.SendAsApp with admin consent; for delegated access that the mailbox signed in is the " +
			"configured one and SMTP.Send was consented"
	case isSendAsDenied(code, enh, msg):
		return ExplainSendAs("<sender>", "<mailbox>")
	case e == "4.3.2" && strings.Contains(msg, "Concurrent connections"):
		return "Exchange allows 3 concurrent SMTP connections per mailbox; the app opened more (it retries)"
	case strings.Contains(msg, "SubmissionQuotaExceeded"):
		return "the mailbox reached Exchange's daily recipient limit (10,000 recipients a day)"
	case enh[0] == 5 && enh[1] == 2 && enh[2] >= 251 && enh[2] <= 255:
		return "Exchange throttles this sender after repeated errors; it lifts by itself"
	}
	return ""
}

// isSendAsDenied reports Exchange's refusal of a MAIL FROM the logged-in
// mailbox has no SendAs permission on.
func isSendAsDenied(code int, enh smtp.EnhancedCode, msg string) bool {
	return enh == smtp.EnhancedCode{5, 7, 60} || strings.Contains(msg, "SendAsDenied") ||
		code == 550 && strings.Contains(msg, "does not have permissions to send as")
}

// ExplainSendAs explains a send-as refusal of MAIL FROM sender by the
// mailbox that logged in (the XOAUTH2 user), naming both in the fix. A
// shared mailbox or a distribution group is sent as by a mailbox with the
// SendAs permission on it; an app-only account with send_as: sender logs in
// as the sender itself instead.
func ExplainSendAs(sender, mailbox string) string {
	return fmt.Sprintf("mailbox %s may not send as %s: grant it Send As "+
		"(Add-RecipientPermission -Identity %s -Trustee %s -AccessRights SendAs; it takes effect within an hour), "+
		"use send_as: sender for an app-only account with permission on that mailbox, or fix allowed_from",
		mailbox, sender, sender, mailbox)
}

// ExplainMail explains an upstream refusal of MAIL FROM sender on a session
// logged in as mailbox: a send-as refusal with both addresses, else as
// ExplainSMTP; "" when the reply is not one we know.
func ExplainMail(se *smtp.SMTPError, sender, mailbox string) string {
	if isSendAsDenied(se.Code, se.EnhancedCode, se.Message) {
		return ExplainSendAs(sender, mailbox)
	}
	return ExplainSMTP(se.Code, se.EnhancedCode, se.Message)
}

// ExplainIMAP does the same for an upstream IMAP reply text.
func ExplainIMAP(text string) string {
	switch {
	case strings.Contains(text, "User is authenticated but not connected"):
		return "Exchange accepted the token but cannot open the mailbox: check the mailbox address, " +
			"that the service principal exists (New-ServicePrincipal) and has FullAccess (Add-MailboxPermission)"
	case strings.Contains(text, "AUTHENTICATE failed"):
		return "Exchange refused the token: for app-only access check IMAP.AccessAsApp with admin consent, " +
			"the service principal (New-ServicePrincipal) and Add-MailboxPermission; for delegated access the " +
			"signed-in mailbox and the IMAP.AccessAsUser.All consent"
	}
	return ""
}

// ExplainPOP3 does the same for an upstream POP3 -ERR text.
func ExplainPOP3(text string) string {
	if strings.Contains(text, "Authentication failure") || strings.Contains(text, "Logon failure") {
		return "Exchange refused the token: check that POP3 is enabled for the mailbox " +
			"(Set-CASMailbox -Identity <mailbox> -PopEnabled $true); for app-only access POP.AccessAsApp with " +
			"admin consent, the service principal (New-ServicePrincipal) and Add-MailboxPermission; for delegated " +
			"access the signed-in mailbox and the POP.AccessAsUser.All consent (a grant signed in before it was " +
			"asked for needs a new sign-in)"
	}
	return ""
}
