package admin

import (
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
)

// TokenRequest implements events.Observer: one request to the identity
// provider for a's token, classed by oauth (ok, transient, needs_sign_in).
func (m *Metrics) TokenRequest(a events.Account, result events.TokenResult, took time.Duration) {
	m.tokenReqs.WithLabelValues(a.Name, string(result)).Inc()
	m.tokenTime.WithLabelValues(string(result)).Observe(took.Seconds())
}
