package oauth

// advice is what an Entra ID error number means for the relay.
type advice struct {
	class  Class
	reason string
	fix    string
}

const (
	fixLogin      = "sign in again: run `oauthrelay login -config FILE ACCOUNT` (or use the status page)"
	fixConsent    = "grant admin consent for the app's permissions in Entra ID (Enterprise applications > Permissions), then sign in again"
	fixSecret     = "create a new client secret in the app registration (Certificates & secrets) and update the configuration"
	fixMFAForROPC = "MFA cannot work with the password grant; use grant: authorization_code or device_code"
	fixCA         = "ask the Entra ID administrator to exclude this sign-in from the Conditional Access policy (see the sign-in logs), or use another grant"
)

// aadstsTable maps Entra ID error numbers (error_codes, or the "AADSTSnnnn:"
// prefix of error_description) to advice. Numbers not listed fall back to
// the OAuth error code.
var aadstsTable = map[int]advice{
	70008:   {NeedsSignIn, "the refresh token expired (unused too long, or past its maximum age)", fixLogin},
	700082:  {NeedsSignIn, "the refresh token expired after 90 days of inactivity", fixLogin},
	50173:   {NeedsSignIn, "the grant was revoked (password changed or sessions revoked by an administrator)", fixLogin},
	65001:   {NeedsSignIn, "consent for the app's permissions is missing", fixConsent},
	65004:   {NeedsSignIn, "the user declined consent", fixLogin},
	50076:   {NeedsSignIn, "multi-factor authentication is required", fixLogin},
	50078:   {NeedsSignIn, "the multi-factor authentication has expired", fixLogin},
	50079:   {NeedsSignIn, "the user must register for multi-factor authentication", "the user must register MFA, then sign in again: run `oauthrelay login -config FILE ACCOUNT`"},
	53003:   {NeedsSignIn, "access is blocked by a Conditional Access policy", fixCA},
	53000:   {NeedsSignIn, "Conditional Access requires a compliant device", fixCA},
	70043:   {NeedsSignIn, "a sign-in frequency policy requires signing in again", fixLogin},
	7000215: {NeedsSignIn, "the client secret is invalid (the secret's ID may have been used instead of its value)", fixSecret},
	7000222: {NeedsSignIn, "the client secret has expired", fixSecret},
	700016:  {NeedsSignIn, "the app (client_id) is not found in the tenant", "check client_id and tenant; the app may not be consented in this tenant yet"},
	50126:   {NeedsSignIn, "wrong username or password", "check the mailbox password"},
	700025:  {NeedsSignIn, "the app is a public client, so no client secret or certificate may be sent", "remove the client secret from the provider configuration, or turn off 'Allow public client flows'"},
	7000218: {NeedsSignIn, "the app expects a client secret or certificate: public client flows are not enabled", "enable 'Allow public client flows' in the app registration (Authentication), or configure a client secret"},
	70011:   {NeedsSignIn, "the requested scope is not valid", "check scopes in the provider configuration"},
	500011:  {NeedsSignIn, "the resource (Exchange Online) was not found in the tenant", "check the scopes and the cloud (global, usgov, china) of the provider"},
	50034:   {NeedsSignIn, "the user account does not exist in the tenant", "check the mailbox address and the tenant"},
	50053:   {NeedsSignIn, "the account is locked (too many failed sign-ins)", "wait for the lockout to end and check the password the app uses"},
	50055:   {NeedsSignIn, "the password has expired", "change the mailbox password, then update the configuration"},
	50057:   {NeedsSignIn, "the user account is disabled", "enable the account in Entra ID"},
	50158:   {NeedsSignIn, "an external security challenge was not satisfied", fixLogin},
	7000112: {NeedsSignIn, "the application is disabled", "enable the app in Entra ID (Enterprise applications > Properties)"},
	700024:  {NeedsSignIn, "the client assertion is not within its valid time range", "check this server's clock (NTP)"},
	700027:  {NeedsSignIn, "the client assertion's signature was not accepted", "upload the certificate (public part) to the app registration and check client_key_file matches it"},
	90002:   {NeedsSignIn, "the tenant was not found", "check tenant in the provider configuration"},
	900023:  {NeedsSignIn, "the tenant is neither a valid tenant id nor a domain", "check tenant in the provider configuration"},
	50059:   {NeedsSignIn, "no tenant was given for an app-only sign-in", "set tenant to the tenant id or domain (not common or organizations)"},
	50011:   {NeedsSignIn, "the redirect URI is not registered for the app", "add the redirect URI to the app registration (Authentication)"},
	54005:   {NeedsSignIn, "the authorization code was already redeemed", "run the sign-in again"},
	70000:   {NeedsSignIn, "the grant is invalid (e.g. scopes that were not consented)", fixLogin},
	70019:   {NeedsSignIn, "the sign-in code expired before sign-in finished", "run `oauthrelay login` again and finish within 15 minutes"},
}

// aadstsAdvice returns the advice for code, adjusted for the grant: with the
// password grant MFA and Conditional Access can only be solved by another
// grant, and a wrong password means the configured password is wrong.
func aadstsAdvice(code int, grant string) (advice, bool) {
	a, ok := aadstsTable[code]
	if !ok {
		return advice{}, false
	}
	if grant == grantPassword {
		switch code {
		case 50076, 50078, 50079, 50158:
			a.reason = "multi-factor authentication is required, and MFA cannot work with the password grant"
			a.fix = fixMFAForROPC
		case 53003, 53000:
			a.fix = fixCA + " (the password grant cannot satisfy device or MFA conditions; use authorization_code or device_code)"
		case 70008, 700082, 50173, 70043:
			a.fix = "check the mailbox password in the configuration"
		}
	}
	if grant == grantClientCredentials && code == 65001 {
		a.fix = "grant admin consent for the application permissions (IMAP.AccessAsApp, SMTP.SendAsApp) in Entra ID"
	}
	return a, true
}
