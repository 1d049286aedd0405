package fakems

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Permission names as Exchange Online checks them.
const (
	scopeIMAP = "IMAP.AccessAsUser.All"
	scopeSMTP = "SMTP.Send"
	scopePOP  = "POP.AccessAsUser.All"
	roleIMAP  = "IMAP.AccessAsApp"
	roleSMTP  = "SMTP.SendAsApp"
	rolePOP   = "POP.AccessAsApp"
)

// appRoles are the application permissions every app is assumed to have
// admin consent for; which mailboxes it reaches is decided by GrantApp.
var appRoles = []string{roleIMAP, roleSMTP, rolePOP}

// newAccessLocked mints an access token and remembers it. The token looks
// like an Entra JWT of realistic length, 1.6–2.8 KB (real ones are 1.5–3 KB),
// because relays must cope with AUTH lines of that size; the top stays under
// the ~4 KB go-imap accepts for a SASL response sent after a continuation.
// Its signature is random and nothing verifies it: the fake looks the token
// up instead.
func (s *Server) newAccessLocked(clientID, mbox string, aud resource, scopes, roles []string) (string, time.Duration) {
	now := time.Now()
	life := s.opts.TokenLifetime
	if life <= 0 {
		life = 60*time.Minute + time.Duration(randInt(30*60))*time.Second
	}
	claims := map[string]any{
		"aud":   string(aud),
		"iss":   "https://sts.windows.net/" + s.tenantID + "/",
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(life).Unix(),
		"appid": clientID,
		"tid":   s.tenantID,
		"uti":   randString(16),
		"ver":   "1.0",
	}
	if mbox == "" {
		claims["idtyp"] = "app"
		claims["roles"] = roles
		claims["oid"] = newGUID()
	} else {
		claims["idtyp"] = "user"
		claims["scp"] = strings.Join(scopes, " ")
		claims["upn"] = mbox
		claims["unique_name"] = mbox
		if m, ok := s.mailboxes[mbox]; ok {
			claims["oid"] = m.oid
		}
	}
	// Real tokens carry opaque blobs (aio, xms_*); this one sets the length.
	claims["aio"] = randString(480 + randInt(800))
	header := map[string]any{"typ": "JWT", "nonce": randString(32), "alg": "RS256", "x5t": randString(20), "kid": randString(20)}
	tok := jwtPart(header) + "." + jwtPart(claims) + "." + randString(256)

	s.access[tok] = &accessToken{
		clientID: clientID,
		mailbox:  mbox,
		aud:      aud,
		scopes:   slices.Clone(scopes),
		roles:    slices.Clone(roles),
		expires:  now.Add(life),
	}
	s.pruneLocked(now)
	return tok, life
}

// newRefreshLocked mints an opaque refresh token shaped like Entra's.
func (s *Server) newRefreshLocked(clientID, mbox string, scopes []string) string {
	tok := "1.AQ" + randString(700)
	s.refresh[tok] = &refreshToken{
		clientID: clientID,
		mailbox:  mbox,
		scopes:   slices.Clone(scopes),
		issued:   time.Now(),
	}
	return tok
}

// pruneLocked forgets access tokens expired for an hour, so a long benchmark
// with short lifetimes does not grow without bound.
func (s *Server) pruneLocked(now time.Time) {
	if len(s.access)%256 != 0 {
		return
	}
	for k, at := range s.access {
		if now.Sub(at.expires) > time.Hour {
			delete(s.access, k)
		}
	}
}

// idToken is an OpenID Connect ID token for the user, returned when the
// openid scope was granted. Unsigned in substance (random signature), like
// the access tokens; clients read its claims, they do not verify it.
func (s *Server) idToken(clientID string, m *mailbox) string {
	now := time.Now()
	claims := map[string]any{
		"aud":                clientID,
		"iss":                "https://login.microsoftonline.com/" + s.tenantID + "/v2.0",
		"iat":                now.Unix(),
		"nbf":                now.Unix(),
		"exp":                now.Add(time.Hour).Unix(),
		"oid":                m.oid,
		"sub":                m.oid,
		"tid":                s.tenantID,
		"preferred_username": m.address,
		"email":              m.address,
		"name":               m.address,
		"ver":                "2.0",
	}
	return jwtPart(map[string]any{"typ": "JWT", "alg": "RS256", "kid": randString(20)}) + "." + jwtPart(claims) + "." + randString(256)
}

// scopeSet is a parsed scope parameter.
type scopeSet struct {
	aud        resource // resource of the permission scopes
	perms      []string // permission names without host, e.g. "SMTP.Send"
	offline    bool     // offline_access: issue a refresh token
	openid     bool     // openid: issue an ID token
	dotDefault bool     // {resource}/.default
}

// parseDelegatedScopes checks a scope parameter for a delegated grant the way
// Entra v2 does: one resource per request; a bare permission name belongs
// to Microsoft Graph (whose tokens Exchange refuses: a classic
// misconfiguration worth reproducing).
func parseDelegatedScopes(scope string) (scopeSet, *aadError) {
	var ss scopeSet
	fields := strings.Fields(scope)
	if len(fields) == 0 {
		return ss, errMissingScope()
	}
	for _, f := range fields {
		switch f {
		case "offline_access":
			ss.offline = true
			continue
		case "openid", "profile", "email":
			ss.openid = ss.openid || f == "openid"
			continue
		}
		aud, perm, err := splitScope(f)
		if err != nil {
			return ss, err
		}
		if ss.aud != "" && ss.aud != aud {
			return ss, &aadError{400, "invalid_scope", 28000, "Provided value for the input parameter scope '" + scope + "' is not valid because it contains more than one resource. The scope " + scope + " is not valid."}
		}
		ss.aud = aud
		if perm == ".default" {
			ss.dotDefault = true
			switch aud {
			case resOutlook:
				ss.perms = append(ss.perms, scopeIMAP, scopeSMTP, scopePOP)
			case resGraph:
				ss.perms = append(ss.perms, defaultGraphPerms...)
			}
			continue
		}
		ss.perms = append(ss.perms, perm)
	}
	if ss.aud == "" {
		// Only OIDC scopes: Entra issues a Graph token (User.Read).
		ss.aud = resGraph
	}
	if ss.aud == resOutlook {
		for _, p := range ss.perms {
			switch p {
			case scopeIMAP, scopeSMTP, scopePOP, "EWS.AccessAsUser.All", "Mail.Read", "Mail.Send", "User.Read":
			default:
				return ss, &aadError{400, "invalid_scope", 70011, "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope " + scope + " is not valid. The scope format is invalid."}
			}
		}
	}
	slices.Sort(ss.perms)
	ss.perms = slices.Compact(ss.perms)
	return ss, nil
}

// splitScope splits "https://outlook.office.com/SMTP.Send" into its resource
// and permission. Exchange answers to both outlook.office.com and
// outlook.office365.com; anything without a host is Graph.
func splitScope(f string) (resource, string, *aadError) {
	rest, ok := strings.CutPrefix(f, "https://")
	if !ok {
		return resGraph, f, nil
	}
	host, perm, ok := strings.Cut(rest, "/")
	if !ok || perm == "" {
		return "", "", &aadError{400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid. The scope " + f + " is not valid."}
	}
	switch strings.ToLower(host) {
	case "outlook.office.com", "outlook.office365.com":
		return resOutlook, perm, nil
	case "graph.microsoft.com":
		return resGraph, perm, nil
	}
	return "", "", &aadError{400, "invalid_resource", 500011, "The resource principal named https://" + host + " was not found in the tenant named " + defaultTenant + ". This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."}
}

func errMissingScope() *aadError {
	return &aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."}
}

// checkBearer decides an XOAUTH2 login: the token must be one the fake
// issued, unexpired, for Exchange, carrying the permission for this protocol,
// and either delegated by user itself or app-only with FullAccess to user's
// mailbox. The reason is for the log only: Exchange tells the client nothing.
func (s *Server) checkBearer(user, token, scope, role string) (*mailbox, *accessToken, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.access[token]
	switch {
	case !ok:
		return nil, nil, "unknown token"
	case time.Now().After(at.expires):
		return nil, at, "token expired"
	case at.aud != resOutlook:
		return nil, at, fmt.Sprintf("token audience %s is not Exchange", at.aud)
	}
	m, ok := s.mailboxes[lower(user)]
	if !ok {
		return nil, at, "no mailbox " + user
	}
	if at.appOnly() {
		if !slices.Contains(at.roles, role) {
			return nil, at, "app token lacks " + role
		}
		if !s.grants[at.clientID][lower(user)] {
			return nil, at, reasonNotGranted
		}
		return m, at, ""
	}
	if at.mailbox != lower(user) && (scope == scopeSMTP || !m.fullAccess[at.mailbox]) {
		return nil, at, "token is for " + at.mailbox + ", not " + user
	}
	if !slices.Contains(at.scopes, scope) {
		return nil, at, "token lacks " + scope
	}
	return m, at, ""
}

// reasonNotGranted is checkBearer's reason for a valid app-only token whose
// app has no FullAccess to the mailbox (IMAP treats it specially).
const reasonNotGranted = "app has no FullAccess to the mailbox"

func jwtPart(v any) string {
	// Only maps of strings, numbers and string slices come here: Marshal
	// cannot fail.
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

// randString returns n random base64url characters.
func randString(n int) string {
	b := make([]byte, (n*6+7)/8)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// randInt is for lifetimes and padding, which need no secrecy.
func randInt(n int) int { return mrand.IntN(n) }

func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
