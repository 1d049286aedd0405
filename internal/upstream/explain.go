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
	case e == "5.7.60" || strings.Contains(msg, "SendAsDenied"):
		return "the mailbox may not send as this sender: grant Send As (Add-RecipientPermission <sender> " +
			"-Trustee <mailbox> -AccessRights SendAs) or fix allowed_from"
	case e == "4.3.2" && strings.Contains(msg, "Concurrent connections"):
		return "Exchange allows 3 concurrent SMTP connections per mailbox; the app opened more (it retries)"
	case strings.Contains(msg, "SubmissionQuotaExceeded"):
		return "the mailbox reached Exchange's daily recipient limit (10,000 recipients a day)"
	case enh[0] == 5 && enh[1] == 2 && enh[2] >= 251 && enh[2] <= 255:
		return "Exchange throttles this sender after repeated errors; it lifts by itself"
	}
	return ""
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
