package fakems

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// entraHandler routes the Entra ID v2 endpoints under /{tenant}/oauth2/v2.0/.
func (s *Server) entraHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.tenantOnly(s.handleToken))
	mux.HandleFunc("GET /{tenant}/oauth2/v2.0/authorize", s.tenantOnly(s.handleAuthorize))
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", s.tenantOnly(s.handleDeviceCode))
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/introspect", s.tenantOnly(s.handleIntrospect))
	mux.HandleFunc("GET /devicelogin", s.handleDeviceLogin)
	mux.HandleFunc("POST /devicelogin", s.handleDeviceLogin)
	return mux
}

// tenantOnly answers AADSTS90002 for a tenant the fake does not host. Like
// Entra it also takes "common" and "organizations".
func (s *Server) tenantOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t := r.PathValue("tenant")
		if !strings.EqualFold(t, s.Tenant) && t != s.tenantID && t != "common" && t != "organizations" {
			s.writeAADError(w, &aadError{400, "invalid_request", 90002, "Tenant '" + t + "' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."})
			return
		}
		h(w, r)
	}
}

// aadError is an Entra token-endpoint error.
type aadError struct {
	status int
	code   string // OAuth error, e.g. invalid_grant
	aadsts int
	desc   string
}

// writeAADError sends the error body Entra sends: the description starts
// with "AADSTSnnnnn: " and ends with trace, correlation and timestamp lines,
// and error_codes repeats the number.
func (s *Server) writeAADError(w http.ResponseWriter, e *aadError) {
	now := time.Now().UTC().Format("2006-01-02 15:04:05Z")
	trace, corr := newGUID(), newGUID()
	desc := e.desc
	if e.aadsts != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", e.aadsts, desc)
	}
	body := map[string]any{
		"error":             e.code,
		"error_description": fmt.Sprintf("%s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", desc, trace, corr, now),
		"timestamp":         now,
		"trace_id":          trace,
		"correlation_id":    corr,
	}
	if e.aadsts != 0 {
		body["error_codes"] = []int{e.aadsts}
		body["error_uri"] = fmt.Sprintf("%s/error?code=%d", s.BaseURL, e.aadsts)
	}
	status := e.status
	if status == 0 {
		status = http.StatusBadRequest
	}
	s.log.Info("entra: error", "status", status, "error", e.code, "aadsts", e.aadsts)
	s.countTokenError(e.code)
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.WriteHeader(status)
	// The client going away is not the fake's problem.
	_ = json.NewEncoder(w).Encode(v)
}

// handleToken is /oauth2/v2.0/token. Every request counts, then the injected
// delay and failure apply, whatever the grant.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.tokenRequests++
	delay := s.tokenDelay
	var fail *TokenFailure
	if s.failLeft > 0 {
		s.failLeft--
		f := s.failure
		fail = &f
	}
	s.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-s.closed:
			return
		}
	}
	if fail != nil {
		s.writeFailure(w, fail)
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeAADError(w, &aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."})
		return
	}
	grant := r.PostForm.Get("grant_type")
	s.log.Info("entra: token request", "grant_type", grant, "client_id", clientIDOf(r))
	switch grant {
	case "client_credentials":
		s.grantClientCredentials(w, r)
	case "refresh_token":
		s.grantRefresh(w, r)
	case "authorization_code":
		s.grantAuthCode(w, r)
	case "urn:ietf:params:oauth:grant-type:device_code", "device_code":
		s.grantDeviceCode(w, r)
	case "password":
		s.grantPassword(w, r)
	case "":
		s.writeAADError(w, &aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."})
	default:
		s.writeAADError(w, &aadError{400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '" + grant + "'."})
	}
}

func (s *Server) writeFailure(w http.ResponseWriter, f *TokenFailure) {
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((f.RetryAfter+time.Second-1)/time.Second)))
	}
	if f.Body != "" {
		status := f.Status
		if status == 0 {
			status = http.StatusBadGateway
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(f.Body))
		return
	}
	s.writeAADError(w, &aadError{f.Status, f.Error, f.AADSTS, f.Description})
}

// clientIDOf reads the client ID from the form or HTTP Basic auth
// (client_secret_basic, which golang.org/x/oauth2 tries first).
func clientIDOf(r *http.Request) string {
	if id := r.PostForm.Get("client_id"); id != "" {
		return id
	}
	id, _, _ := basicAuth(r)
	return id
}

// basicAuth undoes the form-encoding RFC 6749 §2.3.1 applies to client_id and
// client_secret inside the Authorization header.
func basicAuth(r *http.Request) (id, secret string, ok bool) {
	id, secret, ok = r.BasicAuth()
	if !ok {
		return "", "", false
	}
	if v, err := url.QueryUnescape(id); err == nil {
		id = v
	}
	if v, err := url.QueryUnescape(secret); err == nil {
		secret = v
	}
	return id, secret, true
}

// authClient identifies and authenticates the app. A secret or an assertion
// is checked whenever one is sent; without one, only a public client passes,
// and only if publicOK (every grant but client_credentials).
func (s *Server) authClient(r *http.Request, publicOK bool) (App, *aadError) {
	id := clientIDOf(r)
	secret := r.PostForm.Get("client_secret")
	if bid, bsecret, ok := basicAuth(r); ok && secret == "" {
		id, secret = bid, bsecret
	}
	if id == "" {
		return App{}, &aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."}
	}
	s.mu.Lock()
	app, ok := s.apps[id]
	s.mu.Unlock()
	if !ok {
		return App{}, &aadError{400, "unauthorized_client", 700016, "Application with identifier '" + id + "' was not found in the directory '" + s.Tenant + "'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."}
	}
	hasCredential := app.Secret != "" || app.Certificate != nil
	switch {
	case app.PublicClient && !hasCredential && (secret != "" || r.PostForm.Get("client_assertion") != ""):
		return App{}, &aadError{401, "invalid_client", 700025, "Client is public so neither 'client_assertion' nor 'client_secret' should be presented."}
	case secret != "":
		if app.Secret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(app.Secret)) != 1 {
			return App{}, &aadError{401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '" + id + "'."}
		}
	case r.PostForm.Get("client_assertion") != "":
		if e := s.verifyAssertion(r, app); e != nil {
			return App{}, e
		}
	case !(publicOK && app.PublicClient):
		return App{}, &aadError{401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
	}
	return app, nil
}

// tokenResponse is Entra's success body.
type tokenResponse struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope,omitempty"`
	ExpiresIn    int    `json:"expires_in"`
	ExtExpiresIn int    `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
}

// issueDelegated answers a user grant: an access token for the scopes'
// resource and, with offline_access, a refresh token that remembers the
// whole grant.
func (s *Server) issueDelegated(w http.ResponseWriter, clientID, mbox string, ss scopeSet, grantScopes []string) {
	s.mu.Lock()
	m, ok := s.mailboxes[mbox]
	if !ok {
		s.mu.Unlock()
		s.writeAADError(w, &aadError{400, "invalid_grant", 50034, "The user account " + mbox + " does not exist in the " + s.Tenant + " directory. To sign into this application, the account must be added to the directory."})
		return
	}
	at, life := s.newAccessLocked(clientID, mbox, ss.aud, ss.perms, nil)
	resp := tokenResponse{
		TokenType:    "Bearer",
		Scope:        scopeString(ss),
		ExpiresIn:    int(life / time.Second),
		ExtExpiresIn: int(life / time.Second),
		AccessToken:  at,
	}
	if ss.offline {
		resp.RefreshToken = s.newRefreshLocked(clientID, mbox, grantScopes)
	}
	if ss.openid {
		resp.IDToken = s.idToken(clientID, m)
	}
	s.mu.Unlock()
	s.log.Info("entra: issued delegated token", "client_id", clientID, "mailbox", mbox, "scope", resp.Scope, "refresh", resp.RefreshToken != "")
	writeJSON(w, http.StatusOK, resp)
}

// scopeString is the scope field of a response: permissions with their
// resource, as Entra echoes them.
func scopeString(ss scopeSet) string {
	var out []string
	for _, p := range ss.perms {
		if ss.aud == resGraph {
			out = append(out, p)
			continue
		}
		out = append(out, string(ss.aud)+"/"+p)
	}
	if ss.openid {
		out = append(out, "openid", "profile", "email")
	}
	return strings.Join(out, " ")
}

// handleIntrospect is an RFC 7662 endpoint, which Entra does not have, so
// that Dovecot's oauth2 passdb can use the fake as its token authority. It
// answers {"active":true,"username":"<mailbox>"} for a valid delegated
// token. An app-only token names no user and Dovecot sends only the token,
// so its username is the mailbox the app was granted if there is exactly
// one, and is left out otherwise.
func (s *Server) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	token := r.PostForm.Get("token")
	s.mu.Lock()
	at, ok := s.access[token]
	active := ok && time.Now().Before(at.expires)
	resp := map[string]any{"active": active}
	if active {
		resp["client_id"] = at.clientID
		resp["token_type"] = "Bearer"
		resp["exp"] = at.expires.Unix()
		resp["aud"] = string(at.aud)
		if at.appOnly() {
			resp["scope"] = strings.Join(at.roles, " ")
			if g := s.grants[at.clientID]; len(g) == 1 {
				for mb := range g {
					resp["username"] = s.mailboxes[mb].addressOr(mb)
				}
			}
		} else {
			resp["scope"] = strings.Join(at.scopes, " ")
			resp["username"] = s.mailboxes[at.mailbox].addressOr(at.mailbox)
		}
	}
	s.mu.Unlock()
	s.log.Info("entra: introspection", "active", active)
	writeJSON(w, http.StatusOK, resp)
}

// addressOr is the mailbox's address as added, or def for a mailbox that
// does not exist (nil).
func (m *mailbox) addressOr(def string) string {
	if m == nil {
		return def
	}
	return m.address
}

var deviceLoginPage = template.Must(template.New("devicelogin").Parse(`<!DOCTYPE html>
<title>Enter code - fake Microsoft 365</title>
<h1>Enter code</h1>
{{if .Msg}}<p>{{.Msg}}</p>{{end}}
<form method="post">
<p><label>Code <input name="otc" value="{{.Code}}"></label></p>
<p><label>Mailbox (empty: the only one) <input name="mailbox"></label></p>
<p><button name="action" value="approve">Approve</button> <button name="action" value="deny">Deny</button></p>
</form>
`))

// handleDeviceLogin is the verification_uri page, so a person running
// `oauthrelay demo` can approve a device code in a browser.
func (s *Server) handleDeviceLogin(w http.ResponseWriter, r *http.Request) {
	data := struct{ Code, Msg string }{Code: r.FormValue("otc")}
	if r.Method == http.MethodPost {
		var err error
		if r.FormValue("action") == "deny" {
			err = s.DenyDevice(data.Code)
		} else {
			err = s.ApproveDevice(data.Code, r.FormValue("mailbox"))
		}
		data.Msg = "Done. You can close this window."
		if err != nil {
			data.Msg = err.Error()
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = deviceLoginPage.Execute(w, data)
}
