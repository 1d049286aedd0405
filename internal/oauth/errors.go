package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// Class says what a caller can do about a failure.
type Class int

const (
	// Transient failures (network, timeouts, HTTP 5xx and 429,
	// temporarily_unavailable) may succeed when retried: SMTP 454 4.7.0,
	// IMAP NO [UNAVAILABLE].
	Transient Class = iota + 1
	// NeedsSignIn failures will not fix themselves: a person has to sign in
	// again, consent, or fix the app registration or the configuration.
	// SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED].
	NeedsSignIn
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case NeedsSignIn:
		return "needs sign-in"
	}
	return "unknown"
}

// MarshalText makes Class readable in JSON (status page).
func (c Class) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Error is every failure of this package that is about getting a token. The
// fields are safe to show to an administrator: they never hold a token, a
// secret or a password.
type Error struct {
	Class Class
	// Code is the OAuth error code (RFC 6749 §5.2), e.g. invalid_grant.
	Code string
	// AADSTS is Entra ID's error number (0 when absent).
	AADSTS int
	// Description is the identity provider's error_description.
	Description string
	// Reason says in plain words what went wrong.
	Reason string
	// Fix says what the administrator should do.
	Fix string
	// RetryAt is when the identity provider asked us to come back
	// (Retry-After); zero when it did not say.
	RetryAt time.Time
	// Err is the underlying error.
	Err error
	// quiet: no token request was made and the failure was already
	// logged (a refresh token known dead, a refresh deferred while the
	// shared store is away): neither logged again nor counted.
	quiet bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("oauth: ")
	b.WriteString(e.Class.String())
	b.WriteString(": ")
	b.WriteString(e.Reason)
	switch {
	case e.Code != "" && e.AADSTS != 0:
		fmt.Fprintf(&b, " (%s, AADSTS%d)", e.Code, e.AADSTS)
	case e.Code != "":
		fmt.Fprintf(&b, " (%s)", e.Code)
	case e.AADSTS != 0:
		fmt.Fprintf(&b, " (AADSTS%d)", e.AADSTS)
	}
	if e.Err != nil && e.Code == "" {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// errorBody is the parsed error response of a token or device endpoint.
type errorBody struct {
	Code        string
	Description string
	AADSTS      int
}

// parseErrorBody reads an RFC 6749 §5.2 error body (JSON, or form encoded as
// some servers send) plus Entra's error_codes. It accepts any input (it is
// fuzzed) and keeps whatever it can understand.
func parseErrorBody(body []byte) errorBody {
	var eb errorBody
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) == nil {
		var s string
		if json.Unmarshal(m["error"], &s) == nil {
			eb.Code = s
		}
		s = ""
		if json.Unmarshal(m["error_description"], &s) == nil {
			eb.Description = s
		}
		var codes []json.Number
		if json.Unmarshal(m["error_codes"], &codes) == nil && len(codes) > 0 {
			if n, err := strconv.ParseInt(codes[0].String(), 10, 32); err == nil && n > 0 {
				eb.AADSTS = int(n)
			}
		}
	} else if vals, err := url.ParseQuery(string(body)); err == nil {
		eb.Code = vals.Get("error")
		eb.Description = vals.Get("error_description")
	}
	if eb.AADSTS == 0 {
		eb.AADSTS = aadstsPrefix(eb.Description)
	}
	return eb
}

// aadstsPrefix reads the "AADSTS70008:" prefix of an Entra error_description.
func aadstsPrefix(desc string) int {
	rest, ok := strings.CutPrefix(strings.TrimSpace(desc), "AADSTS")
	if !ok {
		return 0
	}
	end := 0
	for end < len(rest) && end < 9 && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	if end == 0 || end == len(rest) || rest[end] != ':' {
		return 0
	}
	n, _ := strconv.Atoi(rest[:end])
	return n
}

// firstLine keeps an error_description short: Entra appends trace and
// correlation ids and a timestamp on further lines.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	const max = 300
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// grant names used by the classifier to pick the right advice.
const (
	grantClientCredentials = "client_credentials"
	grantAuthCode          = "authorization_code"
	grantDeviceCode        = "device_code"
	grantPassword          = "password"
)

// classify turns any error from a token request into an *Error. grant is the
// configured grant (the advice differs: MFA cannot work with ROPC, a dead
// refresh token needs `oauthrelay login`). now resolves Retry-After.
func classify(err error, grant string, now time.Time) *Error {
	if err == nil {
		return nil
	}
	var oe *Error
	if errors.As(err, &oe) {
		return oe
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return classifyResponse(re, grant, now)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Class: Transient, Reason: "the token endpoint did not answer in time", Fix: "check the network path (proxy, firewall, DNS) to the identity provider", Err: err}
	case errors.Is(err, context.Canceled):
		return &Error{Class: Transient, Reason: "the token request was cancelled", Err: err}
	case errors.Is(err, tokenstore.ErrDecrypt):
		return &Error{Class: NeedsSignIn, Reason: "the stored refresh token cannot be decrypted with the current key", Fix: "restore the key that wrote it (OAUTHRELAY_KEY or state_dir/key), or sign in again with `oauthrelay login`", Err: err}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return &Error{Class: Transient, Reason: "the token endpoint cannot be reached", Fix: "check the network path (proxy, firewall, DNS, TLS inspection) to the identity provider", Err: err}
	}
	// A 200 answer without an access token, a body that is not JSON (a
	// captive portal or a proxy's error page): most likely temporary.
	return &Error{Class: Transient, Reason: "the token endpoint gave an answer that is not a token", Err: err}
}

func classifyResponse(re *oauth2.RetrieveError, grant string, now time.Time) *Error {
	eb := parseErrorBody(re.Body)
	if eb.Code == "" {
		eb.Code = re.ErrorCode
	}
	if eb.Description == "" {
		eb.Description = re.ErrorDescription
	}
	if eb.AADSTS == 0 {
		eb.AADSTS = aadstsPrefix(eb.Description)
	}
	status := 0
	var retryAt time.Time
	if re.Response != nil {
		status = re.Response.StatusCode
		retryAt = parseRetryAfter(re.Response.Header.Get("Retry-After"), now)
	}
	return classifyBody(eb, status, retryAt, grant, re)
}

// classifyBody decides the class and the advice from the HTTP status, the
// OAuth error code and the AADSTS number. It also serves errors that arrive
// on the authorization redirect (status 0).
func classifyBody(eb errorBody, status int, retryAt time.Time, grant string, cause error) *Error {
	e := &Error{Code: eb.Code, AADSTS: eb.AADSTS, Description: firstLine(eb.Description), RetryAt: retryAt, Err: cause}
	switch {
	case status == http.StatusTooManyRequests:
		e.Class, e.Reason, e.Fix = Transient, "the identity provider is throttling token requests (HTTP 429)", "none: the relay waits and retries"
		return e
	case status >= 500 || eb.Code == "temporarily_unavailable" || eb.Code == "server_error":
		e.Class, e.Reason, e.Fix = Transient, fmt.Sprintf("the identity provider is temporarily unavailable (HTTP %d)", status), "none: the relay retries"
		if status < 500 {
			e.Reason = "the identity provider is temporarily unavailable"
		}
		return e
	}
	e.Class = NeedsSignIn
	// The sign-in outcome codes of RFC 8628 and RFC 6749 §4.1.2.1 say more
	// than the AADSTS number Entra attaches to them.
	outcome := eb.Code == "access_denied" || eb.Code == "authorization_declined" || eb.Code == "expired_token" || eb.Code == "bad_verification_code"
	if a, ok := aadstsAdvice(eb.AADSTS, grant); ok && !outcome {
		e.Class, e.Reason, e.Fix = a.class, a.reason, a.fix
		return e
	}
	switch eb.Code {
	case "invalid_grant":
		e.Reason = "the grant was rejected (expired, revoked or not valid for this app)"
		e.Fix = signInFix(grant)
	case "invalid_client":
		e.Reason = "the app's credentials were rejected"
		e.Fix = "check client_id, the client secret or certificate, and the tenant"
	case "unauthorized_client":
		e.Reason = "the app registration is not allowed to use this grant"
		e.Fix = "check the grant type and, for device_code and password, enable public client flows in the app registration"
	case "invalid_scope":
		e.Reason = "the requested scopes are not valid for this app"
		e.Fix = "check scopes in the provider configuration"
	case "access_denied", "authorization_declined":
		e.Reason = "the user or an administrator declined the sign-in"
		e.Fix = signInFix(grant)
	case "expired_token":
		e.Reason = "the sign-in code expired before sign-in finished"
		e.Fix = "run `oauthrelay login` again and finish within 15 minutes"
	case "bad_verification_code":
		e.Reason = "the device code was not recognised"
		e.Fix = "run `oauthrelay login` again"
	case "interaction_required", "consent_required", "login_required":
		e.Reason = "the identity provider needs the user to sign in interactively"
		e.Fix = signInFix(grant)
	case "":
		e.Reason = fmt.Sprintf("the token endpoint refused the request (HTTP %d)", status)
		e.Fix = "check the provider configuration (token_url, client_id, tenant)"
	default:
		e.Reason = "the token request was refused"
		e.Fix = "check the provider configuration; the description has the details"
	}
	return e
}

func signInFix(grant string) string {
	switch grant {
	case grantPassword:
		return "check the mailbox password and that the account can sign in without MFA"
	case grantClientCredentials:
		return "check the app registration, its application permissions and admin consent"
	}
	return "sign in again: run `oauthrelay login -config FILE ACCOUNT` (or use the status page)"
}

// parseRetryAfter reads Retry-After as seconds or an HTTP date (RFC 9110
// §10.2.3). Absurd values are capped: a broken proxy must not park an account
// for a day.
func parseRetryAfter(v string, now time.Time) time.Time {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}
	}
	const max = 10 * time.Minute
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return time.Time{}
		}
		if n > int64(max/time.Second) {
			n = int64(max / time.Second)
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
		if d <= 0 {
			return time.Time{}
		}
	} else {
		return time.Time{}
	}
	return now.Add(min(d, max))
}
