package main

import (
	"log/slog"
	"os"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// shareTokens makes store (this instance's token files) share delegated
// grants' refresh and access tokens with the other instances through cl
// (see oauth.ClusterStore). Without a store (only client credentials) or
// a cluster, store is returned as it is.
func shareTokens(store oauth.Store, cl *cluster.Store, log *slog.Logger) oauth.Store {
	local, ok := store.(oauth.LocalStore)
	if !ok || cl == nil {
		return store
	}
	return oauth.NewClusterStore(local, cl.Tokens(), log)
}

// clusterOf is the shared store among a relay's shared limits (nil: none).
func clusterOf(shared []delivery.SharedLimits) *cluster.Store {
	for _, s := range shared {
		if cl, ok := s.(*cluster.Store); ok {
			return cl
		}
	}
	return nil
}

// commandCluster opens the shared store for a command that redeems or
// writes tokens once (login, token, check) when cluster: is configured:
// without joining, as the command is no instance the others count. With
// cluster: off it returns nil. The store's Close must be called.
func commandCluster(cfg *config.Config, log *slog.Logger) (*cluster.Store, error) {
	if !cfg.Cluster.Enabled() {
		return nil, nil
	}
	return openSharedStore(cfg.Cluster, log, clusterOptions(os.LookupEnv, log))
}
