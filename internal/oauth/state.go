package oauth

import "time"

// Status is a token source's health, for the status page, /readyz and
// metrics.
type Status int

const (
	// StatusUnknown: no token has been requested yet.
	StatusUnknown Status = iota
	// StatusOK: the last token request succeeded.
	StatusOK
	// StatusRefreshing: a token request is in flight.
	StatusRefreshing
	// StatusTransient: the last token request failed in a way that may
	// heal; the source retries with backoff.
	StatusTransient
	// StatusNeedsSignIn: the last token request failed in a way that needs
	// a person (sign in again, consent, fix the app registration).
	StatusNeedsSignIn
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefreshing:
		return "refreshing"
	case StatusTransient:
		return "transient"
	case StatusNeedsSignIn:
		return "needs_sign_in"
	}
	return "unknown"
}

// MarshalText makes Status readable in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// State is a snapshot of a token source. It holds no token.
type State struct {
	Status Status
	// Expiry of the cached access token (zero: none). A token can still be
	// valid while Status reports a failed refresh.
	Expiry time.Time
	// LastSuccess is when a token was last obtained.
	LastSuccess time.Time
	// RetryAt is when the next attempt is planned after a failure (Run's
	// backoff or the provider's Retry-After); zero when none is planned.
	RetryAt time.Time
	// Err is the last failure; nil after a success.
	Err *Error
	// Grant is the configured grant (client_credentials,
	// authorization_code, device_code, password).
	Grant string
}

// State returns a snapshot; safe for concurrent use.
func (s *Source) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{
		Expiry:      s.expiry,
		LastSuccess: s.lastSuccess,
		RetryAt:     s.retryAt,
		Err:         s.lastErr,
		Grant:       s.grant,
	}
	switch {
	case s.inFlight > 0:
		st.Status = StatusRefreshing
	case s.lastErr != nil && s.lastErr.Class == NeedsSignIn:
		st.Status = StatusNeedsSignIn
	case s.lastErr != nil:
		st.Status = StatusTransient
	case !s.lastSuccess.IsZero():
		st.Status = StatusOK
	}
	return st
}
