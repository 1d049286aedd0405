package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthrelay/oauthrelay/config"
)

// deviceCodeLifetime is assumed when the provider gives no expires_in
// (Entra: 900 s).
const deviceCodeLifetime = 15 * time.Minute

// LoginDevice runs a device code sign-in (RFC 8628) for acct (grant
// device_code) and saves the refresh token in opts.Store: it prints the
// provider's message (where to go, which code to enter) to out and waits
// (DeviceFlow.Wait) until the user has signed in, declined, or the code
// expired.
func LoginDevice(ctx context.Context, acct *config.Account, opts Options, out io.Writer) error {
	if out == nil {
		out = io.Discard
	}
	f, err := StartDevice(ctx, acct, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s\nSign in as %s.\n", f.Message, acct.Mailbox)
	return f.Wait(ctx)
}

// DeviceFlow is a device code sign-in between the code being issued and the
// user signing in: what to show the user, and Wait to finish it. The status
// page shows the code and link and waits in the background; `oauthrelay
// login` prints them and waits in the foreground.
type DeviceFlow struct {
	// UserCode and VerificationURI are what the user enters where; Message
	// is the provider's own sentence saying so (or one made of them).
	UserCode, VerificationURI, Message string
	// Expiry is when the code stops working (Entra: 15 minutes).
	Expiry time.Time

	src *Source
	da  *oauth2.DeviceAuthResponse
}

// StartDevice asks the provider for a device code for acct (grant
// device_code); nothing is stored until Wait succeeds.
func StartDevice(ctx context.Context, acct *config.Account, opts Options) (*DeviceFlow, error) {
	src, err := NewSource(acct, opts)
	if err != nil {
		return nil, err
	}
	if src.grant != grantDeviceCode {
		return nil, fmt.Errorf("oauth: account %s uses grant %s, not device_code", acct.Name, src.grant)
	}
	if src.prov.DeviceURL == "" {
		return nil, fmt.Errorf("oauth: provider %s has no device_url", src.prov.Name)
	}
	da, msg, e := src.deviceAuth(ctx)
	if e != nil {
		src.logFailure(e)
		return nil, e
	}
	if msg == "" {
		msg = fmt.Sprintf("To sign in, open %s and enter the code %s.", da.VerificationURI, da.UserCode)
	}
	return &DeviceFlow{UserCode: da.UserCode, VerificationURI: da.VerificationURI, Message: msg, Expiry: da.Expiry,
		src: src, da: da}, nil
}

// Wait polls the token endpoint at the provider's interval until the user
// has signed in (the refresh token is then saved in the store), declined,
// or the code expired, or ctx ends. authorization_pending and slow_down
// (+5 s) are handled by x/oauth2; a transient failure while polling does
// not end the sign-in.
func (f *DeviceFlow) Wait(ctx context.Context) error {
	src, da := f.src, f.da
	cfg := oauth2.Config{
		ClientID: src.prov.ClientID,
		Scopes:   src.prov.Scopes,
		Endpoint: oauth2.Endpoint{
			DeviceAuthURL: src.prov.DeviceURL,
			TokenURL:      src.prov.TokenURL,
			AuthStyle:     oauth2.AuthStyleInParams,
		},
	}
	hctx := context.WithValue(ctx, oauth2.HTTPClient, src.client)
	for {
		tok, err := cfg.DeviceAccessToken(hctx, da)
		if err == nil {
			return src.saveSignIn(tok)
		}
		if ctx.Err() != nil {
			return classify(ctx.Err(), grantDeviceCode, src.now())
		}
		if errors.Is(err, context.DeadlineExceeded) || !time.Now().Before(da.Expiry) {
			// DeviceAccessToken stops polling at the code's expiry.
			return &Error{Class: NeedsSignIn, Code: "expired_token", Reason: "the sign-in code expired before sign-in finished", Fix: "sign in again (`oauthrelay login`, or Sign in on the status page) and finish within 15 minutes", Err: err}
		}
		e := classify(err, grantDeviceCode, src.now())
		if e.Class != Transient {
			src.logFailure(e)
			return e
		}
		src.log.Warn("device sign-in: polling failed, retrying", slog.String("reason", e.Reason))
		wait := time.Duration(max(da.Interval, 1)) * time.Second
		if !e.RetryAt.IsZero() {
			wait = max(wait, time.Until(e.RetryAt))
		}
		select {
		case <-ctx.Done():
			return classify(ctx.Err(), grantDeviceCode, src.now())
		case <-time.After(wait):
		}
	}
}

// deviceAuth asks for a device code. It does the POST itself rather than via
// oauth2.Config.DeviceAuth, which drops Entra's "message" (the localised
// instructions the user should see).
func (s *Source) deviceAuth(ctx context.Context) (*oauth2.DeviceAuthResponse, string, *Error) {
	form := url.Values{"client_id": {s.prov.ClientID}}
	if len(s.prov.Scopes) > 0 {
		form.Set("scope", strings.Join(s.prov.Scopes, " "))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.prov.DeviceURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, "", &Error{Class: NeedsSignIn, Reason: "invalid device_url", Fix: "check device_url", Err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, "", classify(err, grantDeviceCode, s.now())
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, "", classify(err, grantDeviceCode, s.now())
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		eb := parseErrorBody(body)
		re := &oauth2.RetrieveError{Response: resp, Body: body, ErrorCode: eb.Code, ErrorDescription: eb.Description}
		return nil, "", classify(re, grantDeviceCode, s.now())
	}
	var dr struct {
		DeviceCode      string          `json:"device_code"`
		UserCode        string          `json:"user_code"`
		VerificationURI string          `json:"verification_uri"`
		VerificationURL string          `json:"verification_url"`
		ExpiresIn       json.RawMessage `json:"expires_in"`
		Interval        json.RawMessage `json:"interval"`
		Message         string          `json:"message"`
	}
	if err := json.Unmarshal(body, &dr); err != nil || dr.DeviceCode == "" {
		if err == nil {
			err = errors.New("no device_code")
		}
		return nil, "", &Error{Class: Transient, Reason: "the device code endpoint gave an answer that is not a device code", Err: err}
	}
	da := &oauth2.DeviceAuthResponse{
		DeviceCode:      dr.DeviceCode,
		UserCode:        dr.UserCode,
		VerificationURI: dr.VerificationURI,
		Interval:        lenientInt(dr.Interval),
	}
	if da.VerificationURI == "" {
		da.VerificationURI = dr.VerificationURL
	}
	life := time.Duration(lenientInt(dr.ExpiresIn)) * time.Second
	if life <= 0 {
		life = deviceCodeLifetime
	}
	// Real clock: DeviceAccessToken turns Expiry into a context deadline.
	da.Expiry = start.Add(life)
	return da, dr.Message, nil
}

// lenientInt reads a JSON number or a numeric string (Entra v1 sends strings).
func lenientInt(raw json.RawMessage) int64 {
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		if i, err := n.Int64(); err == nil {
			return i
		}
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i
		}
	}
	return 0
}
