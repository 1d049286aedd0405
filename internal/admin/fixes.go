package admin

import (
	"errors"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// The "How to fix" section of the status page: one entry per kind of
// failure, which a failing account's row links to (#fix-ID). The row says
// what failed in its own words (the token source's reason and fix); the
// entry says what to do in full, with the PowerShell where Exchange needs
// it, so an administrator need not search for it.

// fix is one entry of the section.
type fix struct {
	ID, Title string
	Steps     []string
	// PowerShell is run in Exchange Online PowerShell (Connect-ExchangeOnline).
	PowerShell string
}

// The IDs the rows link to.
const (
	fixSignIn      = "sign-in"
	fixConsent     = "consent"
	fixSecret      = "secret"
	fixApp         = "app"
	fixAccess      = "conditional-access"
	fixPassword    = "mailbox-password"
	fixMailbox     = "mailbox-access"
	fixUnreachable = "unreachable"
	fixAppPassword = "app-password"
)

var fixes = []fix{
	{ID: fixSignIn, Title: "The account needs a new sign-in",
		Steps: []string{
			"The refresh token expired (90 days unused), was revoked (password change, an administrator) or never existed, or a policy asks for MFA again.",
			"Press Sign in in the account's row (authorization code and device code accounts), or run `oauthrelay login -config FILE ACCOUNT` as the user the relay runs as.",
		}},
	{ID: fixConsent, Title: "The app has no consent for the mail permissions",
		Steps: []string{
			"Entra admin center → App registrations → the app → API permissions: add Office 365 Exchange Online's SMTP.SendAsApp and IMAP.AccessAsApp (application permissions, for client credentials) or SMTP.Send and IMAP.AccessAsUser.All (delegated), then Grant admin consent.",
		}},
	{ID: fixSecret, Title: "The client secret is wrong or expired",
		Steps: []string{
			"Entra admin center → App registrations → the app → Certificates & secrets → New client secret. Copy its Value (not its Secret ID).",
			"Put it in the file client_secret_file names (or the variable client_secret refers to), then reload: `systemctl reload oauthrelay` (SIGHUP).",
		}},
	{ID: fixApp, Title: "The app or its service principal is not found in the tenant",
		Steps: []string{
			"Check tenant and client_id in the configuration against the app registration's Overview page.",
			"Since 2026 every app needs a service principal in the tenant; for Exchange, register it:",
		},
		PowerShell: "New-ServicePrincipal -AppId <client id> -ObjectId <enterprise app object id>"},
	{ID: fixAccess, Title: "Conditional Access blocks the sign-in",
		Steps: []string{
			"Entra admin center → Sign-in logs: find the relay's sign-in and the policy that blocked it; exclude the app (workload identity) or the relay's address, or satisfy the policy.",
		}},
	{ID: fixPassword, Title: "The mailbox password is wrong (grant password)",
		Steps: []string{
			"Set the mailbox's current password in password or password_file, then reload. ROPC cannot work when the account needs MFA: use device_code or client_credentials instead.",
		}},
	{ID: fixMailbox, Title: "Exchange refuses the login with the token",
		Steps: []string{
			"535 5.7.139: SMTP AUTH is disabled for the mailbox or the tenant; it must be on even with OAuth.",
			"535 5.7.3 or \"User is authenticated but not connected\" (client credentials): the service principal has no access to the mailbox.",
			"550 5.7.60 or SendAsDenied: the mailbox may not send as the MAIL FROM address.",
		},
		PowerShell: "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false\n" +
			"New-ServicePrincipal -AppId <client id> -ObjectId <enterprise app object id>\n" +
			"Add-MailboxPermission -Identity <mailbox> -User <service principal id> -AccessRights FullAccess\n" +
			"Add-RecipientPermission -Identity <sender address> -Trustee <mailbox> -AccessRights SendAs"},
	{ID: fixUnreachable, Title: "The identity provider or Exchange cannot be reached",
		Steps: []string{
			"A temporary failure: the relay retries and the apps were told to retry. If it lasts, check DNS, the firewall or proxy towards login.microsoftonline.com and smtp.office365.com:587 / outlook.office365.com:993, and /readyz.",
		}},
	{ID: fixAppPassword, Title: "The application logged in with a wrong password",
		Steps: []string{
			"Set the application's password to the one whose bcrypt hash is the account's password_hash, or make a new hash with `oauthrelay hash-password` and reload.",
		}},
}

// fixFor is the entry for a token failure of an account with grant: by
// AADSTS code where Entra gave one, else by class.
func fixFor(err error, grant string) string {
	var e *oauth.Error
	if !errors.As(err, &e) {
		return ""
	}
	switch e.AADSTS {
	case 65001:
		return fixConsent
	case 7000215, 7000222:
		return fixSecret
	case 700016:
		return fixApp
	case 53003:
		return fixAccess
	case 50126:
		return fixPassword
	}
	switch {
	case e.Class == oauth.Transient:
		return fixUnreachable
	case grant == config.GrantClientCredentials:
		return fixApp // no sign-in to redo: the registration is wrong
	case grant == config.GrantPassword:
		return fixPassword
	}
	return fixSignIn
}
