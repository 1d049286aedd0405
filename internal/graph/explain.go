package graph

import (
	"net/http"
	"strings"
)

// Explain turns a Graph refusal into plain words: what happened and what
// an administrator does about it (the permission, the PowerShell). The
// words follow Microsoft's documentation of these errors; fix is "" when
// there is nothing to do but wait.
func Explain(e *Error) (reason, fix string) {
	draftStep := e.Op == "create draft" || e.Op == "add attachment" || e.Op == "create upload session" || e.Op == "upload"
	switch {
	case e.Code == "ErrorSendAsDenied":
		return "Microsoft Graph refused: the mailbox may not send as this sender (ErrorSendAsDenied)",
			"grant Send As: Add-RecipientPermission -Identity <sender> -Trustee <mailbox> -AccessRights SendAs, or fix allowed_from"
	case e.Code == "ErrorAccessDenied" && e.Op == "search Sent Items":
		return "the app may not read Sent Items (no Mail.Read): after a timeout or a 504 the relay cannot tell whether a message went out, and may send it twice",
			"grant the app the Microsoft Graph permission Mail.Read or Mail.ReadWrite (application, with admin consent; delegated: consent to it)"
	case e.Code == "ErrorAccessDenied" && draftStep:
		return "Microsoft Graph refused to create the draft a message over 3 MB needs (ErrorAccessDenied: no Mail.ReadWrite)",
			"grant the app the Microsoft Graph permission Mail.ReadWrite (application, with admin consent; delegated: consent to Mail.ReadWrite), " +
				"or scope it with RBAC for Applications: New-ManagementRoleAssignment -App <app id> -Role \"Application Mail.ReadWrite\" -CustomResourceScope <scope>"
	case e.Code == "ErrorAccessDenied":
		return "Microsoft Graph refused: the app may not send as this mailbox (ErrorAccessDenied: Mail.Send missing, or the mailbox is outside the app's RBAC scope)",
			"grant the app the Microsoft Graph permission Mail.Send (application, with admin consent; delegated: consent to Mail.Send); " +
				"with RBAC for Applications: New-ManagementScope -Name <scope> -RecipientRestrictionFilter \"PrimarySmtpAddress -eq '<mailbox>'\" and " +
				"New-ManagementRoleAssignment -App <app id> -Role \"Application Mail.Send\" -CustomResourceScope <scope>; check with Test-ServicePrincipalAuthorization"
	case e.Code == "MailboxNotEnabledForRESTAPI":
		return "Microsoft Graph cannot reach this mailbox: it is inactive, soft-deleted or on-premises (MailboxNotEnabledForRESTAPI)",
			"use a mailbox hosted in Exchange Online with a license, or send over SMTP (upstream: smtp)"
	case e.Code == "ErrorInvalidUser" || e.Code == "ResourceNotFound" || e.Status == http.StatusNotFound && !draftStep:
		return "Microsoft Graph does not know this mailbox (" + e.Code + ")", "check the account's mailbox address"
	case e.Status == http.StatusRequestEntityTooLarge:
		return "the message is too large for Microsoft Graph (" + e.Code + ")", "attachments may be up to 150 MB; the rest of the message at most 3 MB"
	case e.Status == http.StatusUnauthorized:
		return "Microsoft Graph refused the token (" + e.Code + ")",
			"the token must be for Microsoft Graph: check the provider's graph.scopes (https://graph.microsoft.com/.default app-only) and graph.url"
	case e.Status == http.StatusTooManyRequests:
		return "Microsoft Graph is throttling this mailbox (" + e.Code + ")", ""
	case e.Status >= 500 || e.Status == 0:
		return "Microsoft Graph is not available for now", ""
	}
	return "Microsoft Graph refused the message (" + strings.TrimSpace(e.Code) + ")", ""
}
