package oauth

import (
	"context"
	"net/http"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

var graphDelegated = []string{"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite", "offline_access"}

// graphStatus is Graph's answer to a Sent Items search with tok.
func graphStatus(t *testing.T, ms *fakems.Server, tok string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", ms.GraphURL+"/v1.0/users/"+msMailbox+"/mailFolders/sentitems/messages", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := ms.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestFakeMSSecondResource: one delegated refresh token redeemed by two
// Sources, for Exchange and for Graph. Without grace a rotated-away token
// dies at once, so every success proves each Source redeemed the one the
// other had just saved; each token works only on its own resource.
func TestFakeMSSecondResource(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1})
	store := openStore(t, t.TempDir(), 1)
	rt := w.ms.IssueRefreshToken(appSecret, msMailbox)
	if err := store.Save("invoices", tokenstore.Record{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
	acct := w.account(appSecret, grantAuthCode)
	mail := mustSource(t, acct, w.opts(t, store))
	o := w.opts(t, store)
	o.Scopes, o.Resource = graphDelegated, "graph"
	graph := mustSource(t, acct, o)
	for i := range 3 {
		mt, err := mail.Token(context.Background())
		if err != nil {
			t.Fatalf("round %d, mail: %v", i, err)
		}
		gt, err := graph.Token(context.Background())
		if err != nil {
			t.Fatalf("round %d, graph: %v", i, err)
		}
		if st := graphStatus(t, w.ms, gt); st != http.StatusOK {
			t.Fatalf("Graph token refused by Graph: %d", st)
		}
		if st := graphStatus(t, w.ms, mt); st != http.StatusUnauthorized {
			t.Fatalf("Exchange token on Graph: %d, want 401", st)
		}
		mail.Invalidate()
		graph.Invalidate()
	}
}

// TestFakeMSGraphAppOnly: client credentials with Graph's .default.
func TestFakeMSGraphAppOnly(t *testing.T) {
	t.Parallel()
	w := newMSWorld(t, fakems.Options{})
	o := w.opts(t, nil)
	o.Scopes = []string{"https://graph.microsoft.com/.default"}
	s := mustSource(t, w.account(appSecret, grantClientCredentials), o)
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st := graphStatus(t, w.ms, tok); st != http.StatusOK {
		t.Fatalf("Graph: %d", st)
	}
}
