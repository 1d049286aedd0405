package admin

import (
	"net/http"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// Results of oauthrelay_token_requests_total besides "ok", named after
// oauth's error classes.
const (
	resultTransient   = "transient"
	resultNeedsSignIn = "needs_sign_in"
)

// InstrumentHTTPClient returns a copy of c (nil: oauth.DefaultHTTPClient())
// whose requests are counted and timed in oauthrelay_token_requests_total
// and oauthrelay_token_request_duration_seconds. Give it to the relay
// (proxy.Options.HTTPClient) and to the admin Server (Options.HTTPClient):
// oauth uses that client only for the identity provider.
//
// The class is read from the HTTP exchange alone, which is close to but not
// exactly oauth's classification: a network error, 429 or 5xx is transient,
// any other status from 400 up is needs_sign_in. (oauth classifies a 400
// temporarily_unavailable as transient; this counts it as needs_sign_in.)
func (m *Metrics) InstrumentHTTPClient(c *http.Client) *http.Client {
	if c == nil {
		c = oauth.DefaultHTTPClient()
	}
	cc := *c
	next := cc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	cc.Transport = &countingTransport{next: next, m: m}
	return &cc
}

type countingTransport struct {
	next http.RoundTripper
	m    *Metrics
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	result := "ok"
	switch {
	case err != nil, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		result = resultTransient
	case resp.StatusCode >= 400:
		result = resultNeedsSignIn
	}
	t.m.tokenReqs.WithLabelValues(result).Inc()
	t.m.tokenTime.WithLabelValues(result).Observe(time.Since(start).Seconds())
	return resp, err
}
