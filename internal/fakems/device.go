package fakems

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// deviceCodeLifetime is Entra's expires_in for device codes.
const deviceCodeLifetime = 15 * time.Minute

type deviceState int

const (
	devicePending deviceState = iota
	deviceApproved
	deviceDenied
	deviceRedeemed
)

// deviceAuth is one device-code sign-in (RFC 8628).
type deviceAuth struct {
	clientID string
	scope    string
	userCode string
	expires  time.Time
	lastPoll time.Time
	state    deviceState
	mailbox  string // set by ApproveDevice
}

// handleDeviceCode starts a device-code sign-in. Whether the app may use the
// flow (public client) is checked when polling, as Entra does.
func (s *Server) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.writeAADError(w, &aadError{400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."})
		return
	}
	clientID := clientIDOf(r)
	s.mu.Lock()
	_, ok := s.apps[clientID]
	s.mu.Unlock()
	if !ok {
		s.writeAADError(w, &aadError{400, "unauthorized_client", 700016, "Application with identifier '" + clientID + "' was not found in the directory '" + s.Tenant + "'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."})
		return
	}
	scope := r.PostForm.Get("scope")
	if _, e := parseDelegatedScopes(scope); e != nil {
		s.writeAADError(w, e)
		return
	}
	d := &deviceAuth{
		clientID: clientID,
		scope:    scope,
		userCode: newUserCode(),
		expires:  time.Now().Add(deviceCodeLifetime),
	}
	deviceCode := "DAQABIQEAAAB" + randString(180)
	s.mu.Lock()
	s.devices[deviceCode] = d
	s.byUser[d.userCode] = d
	s.mu.Unlock()
	s.log.Info("entra: device code issued", "client_id", clientID, "user_code", d.userCode)
	writeJSON(w, http.StatusOK, map[string]any{
		"user_code":        d.userCode,
		"device_code":      deviceCode,
		"verification_uri": s.DeviceLoginURL,
		"expires_in":       int(deviceCodeLifetime / time.Second),
		"interval":         s.opts.DeviceCodeInterval,
		"message":          fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.", s.DeviceLoginURL, d.userCode),
	})
}

// grantDeviceCode is the polling side: authorization_pending until the code
// is approved or denied, slow_down for a client polling at less than half
// the interval (a margin so a client on schedule never gets it), and
// expired_token after 15 minutes.
func (s *Server) grantDeviceCode(w http.ResponseWriter, r *http.Request) {
	app, e := s.authClient(r, true)
	if e != nil {
		s.writeAADError(w, e)
		return
	}
	now := time.Now()
	s.mu.Lock()
	d, ok := s.devices[r.PostForm.Get("device_code")]
	var scope, mbox string
	switch {
	case !ok || d.clientID != app.ClientID || d.state == deviceRedeemed:
		e = &aadError{400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."}
	case now.After(d.expires):
		e = &aadError{400, "expired_token", 70020, "The provided value for the input parameter 'device_code' is not valid. This device code has expired."}
	case d.state == deviceDenied:
		e = &aadError{400, "access_denied", 70000, "The user has declined the authentication request."}
	case d.state == devicePending && !d.lastPoll.IsZero() && now.Sub(d.lastPoll) < time.Duration(s.opts.DeviceCodeInterval)*time.Second/2:
		e = &aadError{400, "slow_down", 0, "OAuth 2.0 device flow error. Polling too fast."}
	case d.state == devicePending:
		e = &aadError{400, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling."}
	default:
		d.state = deviceRedeemed
		scope, mbox = d.scope, d.mailbox
	}
	if ok {
		d.lastPoll = now
	}
	s.mu.Unlock()
	s.finishDelegated(w, e, app.ClientID, mbox, scope)
}

func (s *Server) pendingDeviceLocked(userCode string) (*deviceAuth, error) {
	d, ok := s.byUser[strings.ToUpper(strings.TrimSpace(userCode))]
	if !ok {
		return nil, fmt.Errorf("fakems: no device code %q", userCode)
	}
	if d.state != devicePending || time.Now().After(d.expires) {
		return nil, fmt.Errorf("fakems: device code %q is no longer pending", userCode)
	}
	return d, nil
}

// newUserCode returns a 9-character code like Entra's ("GQ7SQ2HUN"),
// without the easily confused 0, O, 1 and I.
func newUserCode() string {
	const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 9)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
