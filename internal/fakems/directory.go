package fakems

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// App is an app registration in the fake Entra ID tenant.
type App struct {
	ClientID string
	// Secret is the client secret; empty means the app has none.
	Secret string
	// Certificate is the public part of a certificate credential, for
	// client assertions (JWT signed with its key, header x5t#S256 or x5t).
	Certificate *x509.Certificate
	// PublicClient is "Allow public client flows": the app may use ROPC and
	// the device code flow, and redeem codes and refresh tokens without a
	// secret.
	PublicClient bool
	// RedirectURIs are the registered redirect URIs (exact match). Empty
	// accepts any http://localhost:PORT/... and http://127.0.0.1:PORT/...,
	// the loopback rule Entra applies to native clients.
	RedirectURIs []string
}

// dir is the fake's tenant and Exchange organisation: who exists, who may do
// what, and every token issued. The Server's mu guards it.
type dir struct {
	tenantID string // the tenant's GUID, as in the tokens' tid

	apps      map[string]App
	mailboxes map[string]*mailbox
	grants    map[string]map[string]bool // client ID → mailboxes with FullAccess
	// appRoles are the Exchange application permissions with admin
	// consent per client ID (SetAppRoles); absent: appRoles, the default.
	appRoles map[string][]string

	access  map[string]*accessToken
	refresh map[string]*refreshToken
	codes   map[string]*authCode
	devices map[string]*deviceAuth // by device_code
	byUser  map[string]*deviceAuth // by user_code

	// smtpAuthOffTenant is Set-TransportConfig
	// -SmtpClientAuthenticationDisabled $true.
	smtpAuthOffTenant bool

	tokenRequests int
	tokenErrors   map[string]int // OAuth error code → answers (TokenErrors)
	failLeft      int
	failure       TokenFailure
	tokenDelay    time.Duration

	messages   []Message
	msgChanged chan struct{}
	dropAfter  int64
	dropArmed  bool
	faults     map[SMTPFault]int // FailSMTP: occurrences left (< 0: every one)
}

func newDir() dir {
	return dir{
		tenantID:   newGUID(),
		apps:       map[string]App{},
		mailboxes:  map[string]*mailbox{},
		grants:     map[string]map[string]bool{},
		appRoles:   map[string][]string{},
		access:     map[string]*accessToken{},
		refresh:    map[string]*refreshToken{},
		codes:      map[string]*authCode{},
		devices:    map[string]*deviceAuth{},
		byUser:     map[string]*deviceAuth{},
		msgChanged: make(chan struct{}),
	}
}

// mailbox is an Exchange mailbox and its Entra user.
type mailbox struct {
	address  string // as added; lookups use lower(address)
	password string
	oid      string

	mfa              bool
	smtpAuthDisabled bool
	sendAs           map[string]bool // lower-case addresses it may send as
	// fullAccess are the users (lower case) with FullAccess on this
	// mailbox (a shared one): their delegated tokens open it over IMAP
	// and POP3 with user= this address, never over SMTP.
	fullAccess map[string]bool
	shared     bool // a shared mailbox: no user signs in as it

	imap *imapmemserver.User
	// inbox holds the bytes of the INBOX messages by UID, for POP3
	// (imapmemserver has no reader but its IMAP FETCH): what AppendIMAP
	// and IMAP APPEND put there.
	inbox map[imap.UID][]byte

	smtpConns int      // authenticated SMTP sessions (SMTPLimits)
	sent      limitLog // messages accepted in the last minute (SMTPLimits)
	day       limitLog // messages accepted in the last 24 hours (SMTPLimits)
}

// resource is the audience of an access token. Exchange accepts only its own.
type resource string

const (
	resOutlook resource = "https://outlook.office.com"
	resGraph   resource = "https://graph.microsoft.com"
)

// accessToken is what the fake remembers about an issued access token.
type accessToken struct {
	clientID string
	mailbox  string // lower-case; empty for app-only tokens
	aud      resource
	scopes   []string // delegated permissions (scp), e.g. "SMTP.Send"
	roles    []string // application permissions (roles)
	expires  time.Time
}

func (t *accessToken) appOnly() bool { return t.mailbox == "" }

// refreshToken is one refresh token. Rotation leaves the old token usable
// for Options.RefreshTokenGrace after rotatedAt.
type refreshToken struct {
	clientID  string
	mailbox   string
	scopes    []string // the full scope strings of the grant
	issued    time.Time
	rotatedAt time.Time // zero while current
	revoked   bool      // RevokeUser: AADSTS50173
	expired   bool      // ExpireRefreshTokens: AADSTS700082
}

// Scopes granted by IssueRefreshToken, as the relay's login would request.
var consentedScopes = []string{
	"https://outlook.office.com/IMAP.AccessAsUser.All",
	"https://outlook.office.com/POP.AccessAsUser.All",
	"https://outlook.office.com/SMTP.Send",
	"offline_access",
}

// AddApp registers an app (or replaces the registration with the same
// client ID).
func (s *Server) AddApp(a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a.RedirectURIs = slices.Clone(a.RedirectURIs)
	s.apps[a.ClientID] = a
}

// AddMailbox creates a user mailbox: an Entra user with this password (for
// ROPC) and an Exchange mailbox with INBOX and the usual folders. Adding an
// existing address only changes its password.
func (s *Server) AddMailbox(address, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.mailboxes[lower(address)]; ok {
		m.password = password
		return
	}
	u := imapmemserver.NewUser(address, password)
	for _, name := range []string{"INBOX", "Drafts", "Sent Items", "Deleted Items", "Junk Email", "Archive"} {
		// Create fails only for an existing name, and the user is new.
		_ = u.Create(name, nil)
	}
	s.mailboxes[lower(address)] = &mailbox{
		address:  address,
		password: password,
		oid:      newGUID(),
		sendAs:   map[string]bool{},
		imap:     u,
		inbox:    map[imap.UID][]byte{},
	}
}

// GrantApp gives an app app-only access to a mailbox, the Exchange side of
// client credentials: New-ServicePrincipal plus Add-MailboxPermission
// -AccessRights FullAccess. Its app-only tokens then work for IMAP and SMTP
// as that mailbox.
func (s *Server) GrantApp(clientID, mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grants[clientID] == nil {
		s.grants[clientID] = map[string]bool{}
	}
	s.grants[clientID][lower(mailbox)] = true
}

// SetAppRoles sets the Office 365 Exchange Online application permissions
// with admin consent of an app (by default SMTP.SendAsApp and
// IMAP.AccessAsApp): what its app-only tokens' roles claim carries, and
// what Exchange then lets it do. Tokens issued before keep their roles.
func (s *Server) SetAppRoles(clientID string, roles ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appRoles[clientID] = slices.Clone(roles)
}

// AddSharedMailbox creates a shared mailbox: an Exchange mailbox whose
// Entra user cannot sign in (no password, no delegated token of its own).
// Users reach it with GrantFullAccess; apps with GrantApp.
func (s *Server) AddSharedMailbox(address string) {
	s.AddMailbox(address, "")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailboxes[lower(address)].shared = true
}

// GrantFullAccess gives user FullAccess on mailbox (Add-MailboxPermission
// -Identity <mailbox> -User <user> -AccessRights FullAccess): user's
// delegated IMAP and POP3 tokens then log in with user= mailbox. SMTP does
// not follow: a delegate sends as the shared address with its own login
// and SendAs (GrantSendAs), and user= the shared address gets 535 5.7.3.
func (s *Server) GrantFullAccess(mailbox, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.mailboxes[lower(mailbox)]; ok {
		if m.fullAccess == nil {
			m.fullAccess = map[string]bool{}
		}
		m.fullAccess[lower(user)] = true
	}
}

// GrantSendAs lets mailbox send with MAIL FROM address
// (Add-RecipientPermission -AccessRights SendAs), e.g. a shared mailbox.
func (s *Server) GrantSendAs(mailbox, address string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.mailboxes[lower(mailbox)]; ok {
		m.sendAs[lower(address)] = true
	}
}

// IssueRefreshToken returns a refresh token as if the mailbox's user had
// signed in to the app and consented to IMAP, POP, SMTP and offline_access.
func (s *Server) IssueRefreshToken(clientID, mailbox string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newRefreshLocked(clientID, lower(mailbox), consentedScopes)
}

// IssueAccessToken returns an access token without a trip to the token
// endpoint: delegated (IMAP, POP and SMTP) for mailbox, or app-only when mailbox
// is empty. It does not count in TokenRequests.
func (s *Server) IssueAccessToken(clientID, mailbox string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mailbox == "" {
		tok, _ := s.newAccessLocked(clientID, "", resOutlook, nil, appRoles)
		return tok
	}
	tok, _ := s.newAccessLocked(clientID, lower(mailbox), resOutlook, []string{scopeIMAP, scopePOP, scopeSMTP}, nil)
	return tok
}

// RevokeUser revokes the user's refresh tokens, as a password reset or
// Revoke-MgUserSignInSession does: redeeming one now fails with invalid_grant
// AADSTS50173. Access tokens already issued stay valid until they expire, as
// in Entra without continuous access evaluation.
func (s *Server) RevokeUser(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		if rt.mailbox == lower(mailbox) {
			rt.revoked = true
		}
	}
}

// ExpireRefreshTokens makes the user's refresh tokens fail as expired for
// inactivity (invalid_grant AADSTS700082).
func (s *Server) ExpireRefreshTokens(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		if rt.mailbox == lower(mailbox) {
			rt.expired = true
		}
	}
}

// ExpireAccessTokens ends every access token issued for mailbox (all
// app-only tokens when mailbox is empty) now, so a test need not wait for
// the lifetime to run out.
func (s *Server) ExpireAccessTokens(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	past := time.Now().Add(-time.Second)
	for _, at := range s.access {
		if at.mailbox == lower(mailbox) {
			at.expires = past
		}
	}
}

// RequireMFA turns on per-user MFA: ROPC for this user fails with
// invalid_grant AADSTS50076. Interactive and device sign-ins still work.
func (s *Server) RequireMFA(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.mailboxes[lower(mailbox)]; ok {
		m.mfa = true
	}
}

// SetSMTPAuthDisabled is Set-CASMailbox -SmtpClientAuthenticationDisabled:
// when disabled, AUTH XOAUTH2 for the mailbox gets 535 5.7.139.
func (s *Server) SetSMTPAuthDisabled(mailbox string, disabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.mailboxes[lower(mailbox)]; ok {
		m.smtpAuthDisabled = disabled
	}
}

// SetTenantSMTPAuthDisabled is Set-TransportConfig
// -SmtpClientAuthenticationDisabled: when disabled, every AUTH XOAUTH2 gets
// 535 5.7.139 ... disabled for the Tenant (the default of tenants created
// in recent years), whatever the mailbox's own setting.
func (s *Server) SetTenantSMTPAuthDisabled(disabled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.smtpAuthOffTenant = disabled
}

// TokenFailure is an injected token-endpoint failure.
type TokenFailure struct {
	Status      int    // HTTP status; 0 means 400 (502 with Body)
	Error       string // OAuth error code, e.g. "temporarily_unavailable"
	AADSTS      int    // 0: no AADSTS prefix and no error_codes
	Description string
	// Body, when set, is sent as is (text/html) instead of the JSON error:
	// a gateway page from a proxy in between.
	Body string
	// RetryAfter sets the Retry-After header (whole seconds), as Entra does
	// with 429.
	RetryAfter time.Duration
}

// FailTokenRequests makes the next n token-endpoint requests (any grant) fail
// with f, e.g. TokenFailure{Status: 503, Error: "temporarily_unavailable"}.
func (s *Server) FailTokenRequests(n int, f TokenFailure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLeft, s.failure = n, f
}

// SetTokenDelay delays every token-endpoint answer by d (0: none), to test
// timeouts and single-flight refreshes.
func (s *Server) SetTokenDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenDelay = d
}

// TokenRequests is the number of requests the token endpoint has received,
// failed ones included. (golang.org/x/oauth2 with AuthStyleAutoDetect may
// send a failed request twice; set AuthStyleInParams when counting.)
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenRequests
}

// ApproveDevice completes a device-code sign-in as mailbox; empty mailbox
// means the only mailbox there is.
func (s *Server) ApproveDevice(userCode, mailbox string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, err := s.pendingDeviceLocked(userCode)
	if err != nil {
		return err
	}
	m, err := s.pickMailboxLocked(mailbox)
	if err != nil {
		return err
	}
	d.mailbox, d.state = lower(m.address), deviceApproved
	return nil
}

// DenyDevice declines a device-code sign-in: polling then gets
// access_denied.
func (s *Server) DenyDevice(userCode string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, err := s.pendingDeviceLocked(userCode)
	if err != nil {
		return err
	}
	d.state = deviceDenied
	return nil
}

// pickMailboxLocked finds the mailbox a sign-in is for: the named one, or
// the only one when none is named.
func (s *Server) pickMailboxLocked(address string) (*mailbox, error) {
	if address != "" {
		m, ok := s.mailboxes[lower(address)]
		if !ok {
			return nil, fmt.Errorf("fakems: no mailbox %q", address)
		}
		return m, nil
	}
	if len(s.mailboxes) != 1 {
		return nil, fmt.Errorf("fakems: %d mailboxes and none named", len(s.mailboxes))
	}
	for _, m := range s.mailboxes {
		return m, nil
	}
	return nil, errors.New("fakems: unreachable")
}

// IMAPUser returns the mailbox's in-memory IMAP store, for tests that
// inspect folders directly; nil if there is no such mailbox.
func (s *Server) IMAPUser(mailbox string) *imapmemserver.User {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.mailboxes[lower(mailbox)]; ok {
		return m.imap
	}
	return nil
}

// AppendIMAP puts a message into a folder of a mailbox, as delivery would.
// A message in INBOX is POP3's too.
func (s *Server) AppendIMAP(mailbox, folder string, msg []byte) error {
	u := s.IMAPUser(mailbox)
	if u == nil {
		return fmt.Errorf("fakems: append: no mailbox %q", mailbox)
	}
	if err := s.appendTo(mailbox, u, folder, msg, &imap.AppendOptions{Time: time.Now()}, nil); err != nil {
		return fmt.Errorf("fakems: append to %s/%s: %w", mailbox, folder, err)
	}
	return nil
}

// appendTo appends msg to folder of u, the IMAP store of mailbox, and
// remembers the bytes of an INBOX message for POP3. The append's data goes
// to *out when out is not nil.
func (s *Server) appendTo(mailbox string, u *imapmemserver.User, folder string, msg []byte, opts *imap.AppendOptions, out **imap.AppendData) error {
	data, err := u.Append(folder, &literal{bytes.NewReader(msg), int64(len(msg))}, opts)
	if err != nil {
		return err
	}
	if out != nil {
		*out = data
	}
	if strings.EqualFold(folder, "INBOX") {
		s.mu.Lock()
		if m, ok := s.mailboxes[lower(mailbox)]; ok {
			m.inbox[data.UID] = msg
		}
		s.mu.Unlock()
	}
	return nil
}

// literal is an imap.LiteralReader over bytes.
type literal struct {
	io.Reader
	size int64
}

func (l *literal) Size() int64 { return l.size }
