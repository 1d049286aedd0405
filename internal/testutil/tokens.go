package testutil

import (
	"context"
	"net/http"
	"sync"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// GraphTokens are app-only Microsoft Graph tokens for tests that need
// Graph's and not the relay's oauth.Source: x/oauth2's client credentials
// against tokenURL (the fake's), cached until they expire. It counts
// Invalidate calls.
type GraphTokens struct {
	mu          sync.Mutex
	ts          oauth2.TokenSource
	invalidated int
}

// NewGraphTokens returns the token source of the app clientID.
func NewGraphTokens(tokenURL, clientID, secret string, hc *http.Client) *GraphTokens {
	cfg := clientcredentials.Config{ClientID: clientID, ClientSecret: secret, TokenURL: tokenURL,
		Scopes: []string{"https://graph.microsoft.com/.default"}, AuthStyle: oauth2.AuthStyleInParams}
	return &GraphTokens{ts: cfg.TokenSource(context.WithValue(context.Background(), oauth2.HTTPClient, hc))}
}

// Token returns a Graph access token.
func (g *GraphTokens) Token(context.Context) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, err := g.ts.Token()
	if err != nil {
		return "", err
	}
	return t.AccessToken, nil
}

// Invalidate counts a token the caller saw refused.
func (g *GraphTokens) Invalidate() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.invalidated++
}
