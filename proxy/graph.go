package proxy

import (
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/graph"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// graphTimeout bounds one Graph request (an upload range of 3.75 MB
// included) in the relay's HTTP client.
const graphTimeout = 2 * time.Minute

// graphKey names a mailbox's Graph client: Graph's limits (4 concurrent
// requests, 10,000 in 10 minutes) are per app and mailbox, so every
// account that sends as the mailbox through one Graph shares one.
type graphKey struct {
	mailbox string // lower case
	url     string // the provider's graph.url
	client  string // the app (its limits are the app's)
}

func graphKeyOf(a *Account) graphKey {
	return graphKey{mailbox: strings.ToLower(a.Mailbox), url: a.ProviderRef.Graph.URL, client: a.ProviderRef.ClientID}
}

// newGraphSource is the account's second token Source, for Graph's
// scopes: the same grant, the same refresh token in the store.
func newGraphSource(ca *config.Account, opts Options, a *Account) (*oauth.Source, error) {
	return oauth.NewSource(ca, oauth.Options{
		Store:      opts.Store,
		HTTPClient: opts.HTTPClient,
		Logger:     opts.Logger,
		Scopes:     ca.ProviderRef.Graph.Scopes,
		Resource:   "graph",
		OnRequest: func(e *oauth.Error, took time.Duration) {
			opts.Observer.TokenRequest(a.Info(), tokenResult(e), took)
		},
	})
}

// GraphClient returns the Graph client of a's mailbox, making it on first
// use: HTTPS verified against the system roots and the provider's
// ca_file, the proxy from the environment, and the mailbox's pace.
func (r *Relay) GraphClient(a *Account) *graph.Client {
	k := graphKeyOf(a)
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	if c := r.graphs[k]; c != nil {
		return c
	}
	hc := &http.Client{Timeout: graphTimeout, Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{RootCAs: a.roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 15 * time.Second,
		MaxIdleConnsPerHost: graph.Concurrency,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}}
	c := graph.New(graph.Options{URL: a.ProviderRef.Graph.URL, Mailbox: a.Mailbox, HTTPClient: hc, Logger: r.log,
		Pacer: delivery.NewGraphPace(SenderClock(os.LookupEnv, r.log))})
	r.graphs[k] = c
	return c
}

// graphDelivery is a's delivery through Graph.
func (r *Relay) graphDelivery(cfg *config.Config, a *Account) *delivery.Graph {
	dir := filepath.Join(cfg.StateDir, "tmp")
	if err := securefile.MkdirAll(dir); err != nil {
		r.log.Warn("cannot create the directory for messages sent through Graph; using the system's", "dir", dir, "err", err)
		dir = ""
	}
	return delivery.NewGraph(delivery.GraphOptions{
		Account:              a.Info(),
		Client:               r.GraphClient(a),
		Tokens:               a.GraphSource,
		URL:                  a.ProviderRef.Graph.URL,
		SaveToSentItems:      a.SavesToSentItems(),
		TempDir:              dir,
		RecipientsPerMessage: a.EffectiveLimits.RecipientsPerMessage,
		Logger:               r.log,
		Observer:             r.observer,
	})
}

// AutoState reports where the upstream: auto account called name sends
// now (admin.AutoStater); ok is false for other accounts.
func (r *Relay) AutoState(name string) (delivery.AutoState, bool) {
	for _, a := range r.Accounts() {
		if a.Name == name && a.auto != nil {
			return a.auto.State(), true
		}
	}
	return delivery.AutoState{}, false
}
