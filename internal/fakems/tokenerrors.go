package fakems

// countTokenError counts one error answer of the Entra endpoints.
func (s *Server) countTokenError(code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokenErrors == nil {
		s.tokenErrors = map[string]int{}
	}
	s.tokenErrors[code]++
}

// TokenErrors returns how many error answers the Entra endpoints (token,
// device code) gave, by OAuth error code ("invalid_grant", ...), injected
// failures (FailTokenRequests) included: what a test of concurrent
// refreshes asserts on.
func (s *Server) TokenErrors() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.tokenErrors))
	for k, v := range s.tokenErrors {
		m[k] = v
	}
	return m
}

// InvalidGrants is TokenErrors()["invalid_grant"]: refresh tokens (or
// codes) redeemed after they died, revoked or expired.
func (s *Server) InvalidGrants() int { return s.TokenErrors()["invalid_grant"] }
