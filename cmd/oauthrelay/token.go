package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// runToken prints a fresh access token for one account, for scripts (for
// example to try it with curl or openssl s_client).
func runToken(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	cfg, acct, err := loadAccount("token", args, stderr)
	if err != nil {
		return err
	}
	if acct.PasswordPassthrough {
		return errors.New("account " + acct.Name + " uses password_passthrough: its token needs the app's password, which only a login provides")
	}
	log := newLogger(cfg.Log, stderr)
	store, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	cl, err := commandCluster(cfg, log)
	if err != nil {
		return err
	}
	if cl != nil {
		defer cl.Close()
	}
	src, err := oauth.NewSource(acct, oauth.Options{Store: shareTokens(store, cl, log)})
	if err != nil {
		return err
	}
	tok, err := src.Token(ctx)
	if err != nil {
		return explainTokenError(err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// loadAccount parses "-config FILE ACCOUNT" and finds the account.
func loadAccount(name string, args []string, stderr io.Writer) (*config.Config, *config.Account, error) {
	path, rest, err := configFlag(name, args, stderr)
	if err != nil {
		return nil, nil, err
	}
	if len(rest) != 1 {
		return nil, nil, errUsage
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	acct := cfg.Account(rest[0])
	if acct == nil {
		var names []string
		for _, a := range cfg.Accounts {
			names = append(names, a.Name)
		}
		return nil, nil, fmt.Errorf("%s: no account %q (have: %v)", path, rest[0], names)
	}
	return cfg, acct, nil
}

// explainTokenError adds the plain-words reason and the fix.
func explainTokenError(err error) error {
	var oe *oauth.Error
	if errors.As(err, &oe) {
		msg := oe.Reason
		if oe.AADSTS != 0 {
			msg = fmt.Sprintf("AADSTS%d: %s", oe.AADSTS, msg)
		}
		switch {
		case oe.Class == oauth.Transient:
			msg += "\n  this is temporary: try again later"
		case oe.Fix != "":
			msg += "\n  fix: " + oe.Fix
		}
		return fmt.Errorf("token: %s (%s)", msg, oe.Class)
	}
	return fmt.Errorf("token: %w", err)
}
