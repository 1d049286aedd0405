package main

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// runLogin signs an account in once, for the grants that keep a refresh
// token: authorization code (browser; the redirect arrives on a loopback
// listener or is pasted back) and device code (a code to enter on another
// device). The refresh token goes to the encrypted store (and with
// cluster: to the shared store, for every instance); a running relay picks
// it up at its next login or on SIGHUP.
//
// -replace deletes a stored token first (with cluster: the shared one
// too): the way out when the store was written with another key (a lost
// OAUTHRELAY_KEY), which the store otherwise refuses to overwrite.
func runLogin(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	replace := false
	if i := slices.Index(args, "-replace"); i >= 0 {
		replace = true
		args = slices.Delete(slices.Clone(args), i, i+1)
	}
	cfg, acct, err := loadAccount("login", args, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	local, err := openStoreAlways(cfg, log)
	if err != nil {
		return err
	}
	// With cluster: the sign-in goes to the shared store as well, where
	// every instance picks it up (oauth.ClusterStore).
	var store interface {
		oauth.Store
		Delete(account string) error
	} = local
	cl, err := commandCluster(cfg, log)
	if err != nil {
		return err
	}
	if cl != nil {
		defer cl.Close()
		store = oauth.NewClusterStore(local, cl.Tokens(), log)
	}
	if replace {
		if err := store.Delete(acct.Name); err != nil {
			return err
		}
	}
	opts := oauth.Options{Store: store}
	switch g := acct.ProviderRef.Grant; g {
	case "authorization_code":
		err = oauth.LoginAuthCode(ctx, acct, opts, oauth.LoginAuthCodeOptions{Out: stdout, Paste: stdin})
	case "device_code":
		err = oauth.LoginDevice(ctx, acct, opts, stdout)
	default:
		return fmt.Errorf("account %s uses the %s grant, which needs no sign-in: run `oauthrelay check` to test it", acct.Name, g)
	}
	if err != nil {
		return explainTokenError(err)
	}
	fmt.Fprintf(stdout, "Signed in: the refresh token of account %s is stored in %s.\n", acct.Name, cfg.StateDir)
	if cl != nil {
		fmt.Fprintf(stdout, "With cluster: it is shared with the other instances through %s (when it was reachable: see the log).\n", cfg.Cluster.Store)
	}
	return nil
}
