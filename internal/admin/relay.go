package admin

import (
	"log/slog"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// Relay is what the admin server reads of the running relay: the
// configuration in force and each account's token source. *proxy.Relay
// implements it; admin does not import proxy (dependencies point from the
// front ends to internal/, never back).
type Relay interface {
	// Config returns the configuration in force.
	Config() *config.Config
	// Source returns the token source of the account called name, nil if
	// there is none.
	Source(name string) *oauth.Source
	// Logger is the relay's logger.
	Logger() *slog.Logger
	// EachSender calls f with a snapshot of every mailbox's Sender (its
	// pool and limits), named by the mailbox and the provider's SMTP
	// server address (a mailbox reached through two servers has one
	// Sender for each), in a stable order. It is a callback rather than
	// a slice of an admin type because proxy cannot import admin (admin's
	// tests import proxy).
	EachSender(f func(mailbox, server string, st delivery.Stats))
	// QueueStats sums up the spool of delivery: queue; ok is false when
	// no account queues (no spool is open). err reports envelopes that
	// could not be read; st holds the others.
	QueueStats() (st spool.Stats, ok bool, err error)
}

// account is a configured account with its token source.
type account struct {
	*config.Account
	Source *oauth.Source
}

// accounts returns the accounts in force, in configuration order.
func accounts(r Relay) []account {
	cfg := r.Config()
	out := make([]account, 0, len(cfg.Accounts))
	for _, ca := range cfg.Accounts {
		if src := r.Source(ca.Name); src != nil {
			out = append(out, account{Account: ca, Source: src})
		}
	}
	return out
}
