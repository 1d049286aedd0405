package admin

import (
	"time"

	"github.com/oauthrelay/oauthrelay/proxy"
)

// TokenRequest implements proxy.Observer: one request to the identity
// provider for a's token, classed by oauth (ok, transient, needs_sign_in).
func (m *Metrics) TokenRequest(a *proxy.Account, result string, took time.Duration) {
	m.tokenReqs.WithLabelValues(a.Name, result).Inc()
	m.tokenTime.WithLabelValues(result).Observe(took.Seconds())
}
