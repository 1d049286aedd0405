package oauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

func retrieveErr(status int, body string, hdr http.Header) *oauth2.RetrieveError {
	if hdr == nil {
		hdr = http.Header{}
	}
	return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status, Header: hdr}, Body: []byte(body)}
}

func aad(code string, n int) string {
	return fmt.Sprintf(`{"error":%q,"error_description":"AADSTS%d: text.\r\nTrace ID: x","error_codes":[%d]}`, code, n, n)
}

func TestClassify(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name    string
		err     error
		grant   string
		class   Class
		code    string
		aadsts  int
		reason  string // substring
		fix     string // substring
		retryAt time.Time
	}{
		{"refresh expired inactivity", retrieveErr(400, aad("invalid_grant", 700082), nil), "authorization_code", NeedsSignIn, "invalid_grant", 700082, "inactivity", "oauthrelay login", time.Time{}},
		{"refresh expired", retrieveErr(400, aad("invalid_grant", 70008), nil), "device_code", NeedsSignIn, "invalid_grant", 70008, "expired", "oauthrelay login", time.Time{}},
		{"revoked", retrieveErr(400, aad("invalid_grant", 50173), nil), "authorization_code", NeedsSignIn, "invalid_grant", 50173, "revoked", "login", time.Time{}},
		{"consent delegated", retrieveErr(400, aad("invalid_grant", 65001), nil), "authorization_code", NeedsSignIn, "invalid_grant", 65001, "consent", "admin consent", time.Time{}},
		{"consent app-only", retrieveErr(400, aad("invalid_grant", 65001), nil), "client_credentials", NeedsSignIn, "invalid_grant", 65001, "consent", "SMTP.SendAsApp", time.Time{}},
		{"mfa delegated", retrieveErr(400, aad("invalid_grant", 50076), nil), "authorization_code", NeedsSignIn, "invalid_grant", 50076, "multi-factor", "login", time.Time{}},
		{"mfa ropc", retrieveErr(400, aad("invalid_grant", 50076), nil), "password", NeedsSignIn, "invalid_grant", 50076, "cannot work with the password grant", "authorization_code or device_code", time.Time{}},
		{"mfa 50078 ropc", retrieveErr(400, aad("invalid_grant", 50078), nil), "password", NeedsSignIn, "invalid_grant", 50078, "MFA", "device_code", time.Time{}},
		{"mfa 50079", retrieveErr(400, aad("interaction_required", 50079), nil), "authorization_code", NeedsSignIn, "interaction_required", 50079, "register", "MFA", time.Time{}},
		{"conditional access", retrieveErr(400, aad("invalid_grant", 53003), nil), "authorization_code", NeedsSignIn, "invalid_grant", 53003, "Conditional Access", "Conditional Access", time.Time{}},
		{"sign-in frequency", retrieveErr(400, aad("invalid_grant", 70043), nil), "authorization_code", NeedsSignIn, "invalid_grant", 70043, "frequency", "login", time.Time{}},
		{"bad secret", retrieveErr(401, aad("invalid_client", 7000215), nil), "client_credentials", NeedsSignIn, "invalid_client", 7000215, "secret is invalid", "new client secret", time.Time{}},
		{"expired secret", retrieveErr(401, aad("invalid_client", 7000222), nil), "client_credentials", NeedsSignIn, "invalid_client", 7000222, "expired", "new client secret", time.Time{}},
		{"app not found", retrieveErr(400, aad("unauthorized_client", 700016), nil), "client_credentials", NeedsSignIn, "unauthorized_client", 700016, "not found", "client_id", time.Time{}},
		{"wrong password", retrieveErr(400, aad("invalid_grant", 50126), nil), "password", NeedsSignIn, "invalid_grant", 50126, "wrong username or password", "password", time.Time{}},
		{"public client flows", retrieveErr(401, aad("invalid_client", 7000218), nil), "device_code", NeedsSignIn, "invalid_client", 7000218, "public client flows", "Allow public client flows", time.Time{}},
		{"invalid_client plain", retrieveErr(401, `{"error":"invalid_client"}`, nil), "client_credentials", NeedsSignIn, "invalid_client", 0, "credentials", "client_id", time.Time{}},
		{"unauthorized_client plain", retrieveErr(400, `{"error":"unauthorized_client"}`, nil), "password", NeedsSignIn, "unauthorized_client", 0, "not allowed", "public client", time.Time{}},
		{"invalid_scope plain", retrieveErr(400, `{"error":"invalid_scope"}`, nil), "client_credentials", NeedsSignIn, "invalid_scope", 0, "scopes", "scopes", time.Time{}},
		{"invalid_grant plain", retrieveErr(400, `{"error":"invalid_grant"}`, nil), "authorization_code", NeedsSignIn, "invalid_grant", 0, "rejected", "login", time.Time{}},
		{"description prefix only", retrieveErr(400, `{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired"}`, nil), "authorization_code", NeedsSignIn, "invalid_grant", 700082, "inactivity", "", time.Time{}},
		{"form encoded", retrieveErr(400, "error=invalid_grant&error_description=AADSTS50173%3A+revoked", nil), "authorization_code", NeedsSignIn, "invalid_grant", 50173, "revoked", "", time.Time{}},
		{"unknown 4xx", retrieveErr(404, "<html>not found</html>", nil), "client_credentials", NeedsSignIn, "", 0, "HTTP 404", "token_url", time.Time{}},
		{"503", retrieveErr(503, "", nil), "client_credentials", Transient, "", 0, "temporarily unavailable", "", time.Time{}},
		{"500 html", retrieveErr(500, "<html>oops</html>", nil), "authorization_code", Transient, "", 0, "HTTP 500", "", time.Time{}},
		{"temporarily_unavailable 400", retrieveErr(400, aad("temporarily_unavailable", 90033), nil), "client_credentials", Transient, "temporarily_unavailable", 90033, "temporarily", "", time.Time{}},
		{"429 seconds", retrieveErr(429, "", http.Header{"Retry-After": {"20"}}), "client_credentials", Transient, "", 0, "throttling", "", now.Add(20 * time.Second)},
		{"429 date", retrieveErr(429, "", http.Header{"Retry-After": {now.Add(time.Minute).Format(http.TimeFormat)}}), "client_credentials", Transient, "", 0, "throttling", "", now.Add(time.Minute)},
		{"429 huge", retrieveErr(429, "", http.Header{"Retry-After": {"86400"}}), "client_credentials", Transient, "", 0, "throttling", "", now.Add(10 * time.Minute)},
		{"429 garbage", retrieveErr(429, "", http.Header{"Retry-After": {"soon"}}), "client_credentials", Transient, "", 0, "throttling", "", time.Time{}},
		{"timeout", fmt.Errorf("post: %w", context.DeadlineExceeded), "client_credentials", Transient, "", 0, "in time", "network", time.Time{}},
		{"network", &url.Error{Op: "Post", URL: "https://login", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, "client_credentials", Transient, "", 0, "cannot be reached", "proxy", time.Time{}},
		{"garbage 200", errors.New("oauth2: server response missing access_token"), "client_credentials", Transient, "", 0, "not a token", "", time.Time{}},
		{"eof", io.ErrUnexpectedEOF, "client_credentials", Transient, "", 0, "", "", time.Time{}},
		{"store decrypt", fmt.Errorf("x: %w", tokenstore.ErrDecrypt), "authorization_code", NeedsSignIn, "", 0, "decrypted", "key", time.Time{}},
		{"already classified", &Error{Class: NeedsSignIn, Reason: "given"}, "client_credentials", NeedsSignIn, "", 0, "given", "", time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := classify(c.err, c.grant, now)
			if e.Class != c.class || e.Code != c.code || e.AADSTS != c.aadsts {
				t.Fatalf("got class=%v code=%q aadsts=%d, want %v %q %d (%v)", e.Class, e.Code, e.AADSTS, c.class, c.code, c.aadsts, e)
			}
			if !strings.Contains(e.Reason, c.reason) || !strings.Contains(e.Fix, c.fix) {
				t.Fatalf("reason %q fix %q; want them to contain %q, %q", e.Reason, e.Fix, c.reason, c.fix)
			}
			if !e.RetryAt.Equal(c.retryAt) {
				t.Fatalf("RetryAt %v, want %v", e.RetryAt, c.retryAt)
			}
			if e.Reason == "" || e.Error() == "" {
				t.Fatal("empty reason or message")
			}
			if strings.Contains(e.Description, "Trace ID") {
				t.Fatalf("description not trimmed: %q", e.Description)
			}
			if !errors.Is(e, c.err) && c.name != "already classified" {
				t.Fatalf("Unwrap lost the cause")
			}
		})
	}
}

func TestErrorUnwrapsRetrieveError(t *testing.T) {
	var err error = classify(retrieveErr(400, aad("invalid_grant", 70008), nil), "authorization_code", time.Now())
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatal("errors.As cannot reach the *oauth2.RetrieveError")
	}
	if got := err.Error(); !strings.Contains(got, "needs sign-in") || !strings.Contains(got, "AADSTS70008") {
		t.Fatalf("Error() = %q", got)
	}
}

func TestAADSTSPrefix(t *testing.T) {
	for in, want := range map[string]int{
		"AADSTS70008: expired":   70008,
		"  AADSTS50126: bad":     50126,
		"AADSTS:":                0,
		"AADSTS123":              0,
		"AADSTSx: y":             0,
		"see AADSTS70008: later": 0,
		"AADSTS1234567890: long": 0,
		"":                       0,
	} {
		if got := aadstsPrefix(in); got != want {
			t.Errorf("aadstsPrefix(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestParseErrorBody(t *testing.T) {
	eb := parseErrorBody([]byte(`{"error":"invalid_grant","error_description":"AADSTS1: x","error_codes":[700082, 5]}`))
	if eb.Code != "invalid_grant" || eb.AADSTS != 700082 {
		t.Fatalf("%+v", eb)
	}
	// Odd types keep what they can.
	eb = parseErrorBody([]byte(`{"error":5,"error_description":"AADSTS50126: bad","error_codes":"x"}`))
	if eb.Code != "" || eb.AADSTS != 50126 {
		t.Fatalf("%+v", eb)
	}
	eb = parseErrorBody([]byte(`{"error_codes":[1e99]}`))
	if eb.AADSTS != 0 {
		t.Fatalf("%+v", eb)
	}
}

func FuzzParseErrorBody(f *testing.F) {
	f.Add([]byte(aad("invalid_grant", 700082)))
	f.Add([]byte(`{"error":"x","error_codes":[-1,99999999999999999999]}`))
	f.Add([]byte("error=invalid_grant&error_description=AADSTS70008%3A"))
	f.Add([]byte(`{"error_description":"AADSTS99999999999: x"}`))
	f.Add([]byte{0xff, '{'})
	f.Fuzz(func(t *testing.T, body []byte) {
		eb := parseErrorBody(body)
		if eb.AADSTS < 0 {
			t.Fatalf("negative AADSTS %d", eb.AADSTS)
		}
		for _, status := range []int{400, 429, 503} {
			e := classify(retrieveErr(status, string(body), http.Header{"Retry-After": {string(body)}}), "password", time.Now())
			if e.Class != Transient && e.Class != NeedsSignIn || e.Reason == "" {
				t.Fatalf("unclassified: %#v", e)
			}
			_ = e.Error()
		}
	})
}
