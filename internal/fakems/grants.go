package fakems

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// grantClientCredentials issues an app-only token. Entra requires the
// "{resource}/.default" form; what the token may reach is decided by
// Exchange (GrantApp), not here.
func (s *Server) grantClientCredentials(w http.ResponseWriter, r *http.Request) {
	app, e := s.authClient(r, false)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	scope := strings.TrimSpace(r.PostForm.Get("scope"))
	if scope == "" {
		s.writeAADError(w, errMissingScope())
		return
	}
	if strings.Contains(scope, " ") || !strings.HasSuffix(scope, "/.default") {
		s.writeAADError(w, &aadError{400, "invalid_scope", 1002012, "The provided value for scope " + scope + " is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."})
		return
	}
	aud, _, e := splitScope(scope)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	var roles []string
	switch aud {
	case resOutlook:
		roles = s.exchangeRoles(app.ClientID)
	case resGraph:
		roles = s.graphRoles(app.ClientID)
	}
	s.mu.Lock()
	at, life := s.newAccessLocked(app.ClientID, "", aud, nil, roles)
	s.mu.Unlock()
	s.log.Info("entra: issued app-only token", "client_id", app.ClientID, "aud", aud)
	writeJSON(w, http.StatusOK, tokenResponse{
		TokenType:    "Bearer",
		ExpiresIn:    int(life / time.Second),
		ExtExpiresIn: int(life / time.Second),
		AccessToken:  at,
	})
}

// exchangeRoles are the Exchange application roles an app-only token of
// the app carries (SetAppRoles).
func (s *Server) exchangeRoles(clientID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.appRoles[clientID]; ok {
		return slices.Clone(r)
	}
	return slices.Clone(appRoles)
}

// grantRefresh redeems a refresh token and rotates it: the answer carries a
// new refresh token, and the old one keeps working only for the grace
// period.
func (s *Server) grantRefresh(w http.ResponseWriter, r *http.Request) {
	app, e := s.authClient(r, true)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	token := r.PostForm.Get("refresh_token")
	if token == "" {
		s.writeAADError(w, &aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'refresh_token'."})
		return
	}

	s.mu.Lock()
	rt, ok := s.refresh[token]
	var grantScopes []string
	var mbox string
	now := time.Now()
	switch {
	case !ok:
		e = &aadError{400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."}
	case rt.clientID != app.ClientID:
		e = &aadError{400, "invalid_grant", 70000, "Provided grant is invalid or malformed. The refresh token was issued to a different client."}
	case rt.revoked:
		e = &aadError{400, "invalid_grant", 50173, fmt.Sprintf("The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '%s' and the TokensValidFrom date (before which tokens are not valid) for this user is '%s'.", rt.issued.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339))}
	case rt.expired:
		e = &aadError{400, "invalid_grant", 700082, fmt.Sprintf("The refresh token has expired due to inactivity. The token was issued on %s and was inactive for 90.00:00:00.", rt.issued.UTC().Format(time.RFC3339Nano))}
	case !rt.rotatedAt.IsZero() && (s.opts.RefreshTokenGrace < 0 || now.Sub(rt.rotatedAt) > s.opts.RefreshTokenGrace):
		e = &aadError{400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."}
	default:
		if rt.rotatedAt.IsZero() {
			rt.rotatedAt = now
		}
		grantScopes, mbox = rt.scopes, rt.mailbox
	}
	s.mu.Unlock()
	if e != nil {
		s.writeAADError(w, e)
		return
	}

	// Without a scope parameter (golang.org/x/oauth2 sends none on refresh)
	// the grant's scopes apply again.
	scope := r.PostForm.Get("scope")
	if strings.TrimSpace(scope) == "" {
		scope = strings.Join(grantScopes, " ")
	}
	ss, e := parseDelegatedScopes(scope)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	ss.offline = true // a refresh always yields the next refresh token
	s.issueDelegated(w, app.ClientID, mbox, ss, grantScopes)
}

// grantPassword is ROPC: the user's password, no MFA, and a public client
// (or a confidential one with its secret, as Entra allows).
func (s *Server) grantPassword(w http.ResponseWriter, r *http.Request) {
	app, e := s.authClient(r, true)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	ss, e := parseDelegatedScopes(r.PostForm.Get("scope"))
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	user, pass := r.PostForm.Get("username"), r.PostForm.Get("password")
	s.mu.Lock()
	m, ok := s.mailboxes[lower(user)]
	switch {
	case !ok || pass == "" || subtle.ConstantTimeCompare([]byte(pass), []byte(m.password)) != 1:
		e = &aadError{400, "invalid_grant", 50126, "Error validating credentials due to invalid username or password."}
	case m.mfa:
		e = &aadError{400, "invalid_grant", 50076, "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '" + string(ss.aud) + "'."}
	}
	s.mu.Unlock()
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	s.issueDelegated(w, app.ClientID, lower(user), ss, strings.Fields(r.PostForm.Get("scope")))
}

// authCode is an authorization code between the authorize redirect and the
// token exchange.
type authCode struct {
	clientID    string
	redirectURI string
	mailbox     string
	scope       string
	challenge   string
	method      string
	expires     time.Time
	redeemed    bool
}

// handleAuthorize is the interactive sign-in, minus the interaction: the user
// named by login_hint (or the only mailbox) signs in and consents at once,
// and the browser is redirected with a code. Errors Entra shows on its own
// page (unknown app, unregistered redirect URI) are a 400 page here; the
// others go back to the redirect URI as error and error_description.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	clientID, redirect := q.Get("client_id"), q.Get("redirect_uri")
	s.mu.Lock()
	app, ok := s.apps[clientID]
	s.mu.Unlock()
	if !ok {
		http.Error(w, "AADSTS700016: Application with identifier '"+clientID+"' was not found in the directory '"+s.Tenant+"'.", http.StatusBadRequest)
		return
	}
	if !redirectAllowed(app, redirect) {
		http.Error(w, "AADSTS50011: The redirect URI '"+redirect+"' specified in the request does not match the redirect URIs configured for the application '"+clientID+"'.", http.StatusBadRequest)
		return
	}
	back := func(v url.Values) {
		if st := q.Get("state"); st != "" {
			v.Set("state", st)
		}
		u, _ := url.Parse(redirect) // parsed in redirectAllowed
		qq := u.Query()
		for k, vs := range v {
			qq[k] = vs
		}
		u.RawQuery = qq.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	fail := func(e *aadError) {
		s.log.Info("entra: authorize error", "error", e.code, "aadsts", e.aadsts)
		back(url.Values{"error": {e.code}, "error_description": {fmt.Sprintf("AADSTS%d: %s", e.aadsts, e.desc)}})
	}
	if q.Get("response_type") != "code" {
		fail(&aadError{400, "unsupported_response_type", 700054, "response_type '" + q.Get("response_type") + "' is not enabled for the application."})
		return
	}
	if _, e := parseDelegatedScopes(q.Get("scope")); e != nil {
		fail(e)
		return
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	if challenge != "" && method == "" {
		method = "plain"
	}
	if challenge != "" && method != "S256" && method != "plain" {
		fail(&aadError{400, "invalid_request", 501491, "Invalid size of Code_Challenge parameter."})
		return
	}
	s.mu.Lock()
	m, err := s.pickMailboxLocked(q.Get("login_hint"))
	var code string
	if err == nil {
		code = "1.AQ" + randString(500)
		s.codes[code] = &authCode{
			clientID:    clientID,
			redirectURI: redirect,
			mailbox:     lower(m.address),
			scope:       q.Get("scope"),
			challenge:   challenge,
			method:      method,
			expires:     time.Now().Add(10 * time.Minute),
		}
	}
	s.mu.Unlock()
	if err != nil {
		fail(&aadError{400, "login_required", 50058, "A silent sign-in request was sent but no user is signed in. (fakems: " + err.Error() + "; pass login_hint)"})
		return
	}
	s.log.Info("entra: authorized", "client_id", clientID, "mailbox", m.address)
	back(url.Values{"code": {code}, "session_state": {newGUID()}})
}

// redirectAllowed applies the app's redirect URIs, or Entra's loopback rule
// for native apps (any port) when none are registered.
func redirectAllowed(app App, redirect string) bool {
	u, err := url.Parse(redirect)
	if err != nil || redirect == "" {
		return false
	}
	if len(app.RedirectURIs) > 0 {
		return slices.Contains(app.RedirectURIs, redirect)
	}
	return u.Scheme == "http" && (u.Hostname() == "localhost" || u.Hostname() == "127.0.0.1")
}

// grantAuthCode redeems a code once, checking redirect_uri and the PKCE
// verifier.
func (s *Server) grantAuthCode(w http.ResponseWriter, r *http.Request) {
	app, e := s.authClient(r, true)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	f := r.PostForm
	s.mu.Lock()
	c, ok := s.codes[f.Get("code")]
	switch {
	case !ok:
		e = &aadError{400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."}
	case c.redeemed:
		e = &aadError{400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."}
	case time.Now().After(c.expires):
		e = &aadError{400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."}
	case c.clientID != app.ClientID:
		e = &aadError{400, "invalid_grant", 70000, "Provided grant is invalid or malformed. The code was issued to a different client."}
	case c.redirectURI != f.Get("redirect_uri"):
		e = &aadError{400, "invalid_grant", 500112, "The reply address '" + f.Get("redirect_uri") + "' does not match the reply address '" + c.redirectURI + "' provided when requesting Authorization code."}
	case c.challenge != "" && !pkceOK(c.challenge, c.method, f.Get("code_verifier")):
		e = &aadError{400, "invalid_grant", 50148, "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE."}
	default:
		c.redeemed = true
	}
	var scope, mbox string
	if e == nil {
		scope, mbox = c.scope, c.mailbox
	}
	s.mu.Unlock()
	s.finishDelegated(w, e, app.ClientID, mbox, scope)
}

// finishDelegated answers a delegated grant whose checks gave e (nil: they
// passed) with the tokens for mailbox and scope.
func (s *Server) finishDelegated(w http.ResponseWriter, e *aadError, clientID, mbox, scope string) {
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	ss, e := parseDelegatedScopes(scope)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	s.issueDelegated(w, clientID, mbox, ss, strings.Fields(scope))
}

// pkceOK checks a code_verifier against the challenge (RFC 7636 §4.6).
func pkceOK(challenge, method, verifier string) bool {
	if verifier == "" {
		return false
	}
	if method == "S256" {
		sum := sha256.Sum256([]byte(verifier))
		verifier = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return subtle.ConstantTimeCompare([]byte(verifier), []byte(challenge)) == 1
}
