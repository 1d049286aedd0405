package fakems

import (
	"testing"

	"golang.org/x/oauth2"
)

// Every error answer is counted by its code: a rotated refresh token
// redeemed again (no grace) is one invalid_grant, a good one none.
func TestTokenErrorsCounted(t *testing.T) {
	t.Parallel()
	s := newWorld(t, Options{RefreshTokenGrace: -1})
	cfg := publicConfig(s)
	ctx := ctxWithClient(t, s)
	rt := s.IssueRefreshToken(publicID, alice)
	if _, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token(); err != nil {
		t.Fatal(err)
	}
	if n := s.InvalidGrants(); n != 0 {
		t.Fatalf("InvalidGrants = %d after a good refresh", n)
	}
	for range 2 {
		_, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
		wantAADError(t, err, 400, "invalid_grant", 70008)
	}
	if n := s.InvalidGrants(); n != 2 {
		t.Fatalf("InvalidGrants = %d, want 2", n)
	}
	if got := s.TokenErrors(); len(got) != 1 {
		t.Fatalf("TokenErrors = %v, want only invalid_grant", got)
	}
}
