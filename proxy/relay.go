// Package proxy holds what the SMTP, IMAP and POP3 front ends share: the accounts
// of the current configuration with their token sources, local
// authentication (bcrypt, per-address throttling), upstream dialling with
// verified TLS, and the classification of login failures that each protocol
// turns into its own reply. The protocol sessions live in proxy/smtp,
// proxy/imap and proxy/pop3 (the last two on proxy/preauth); the listeners
// are started by cmd/oauthrelay.
//
// A Relay is the one value holding this state (no globals). Reload swaps the
// account set atomically: sessions that already logged in keep the *Account
// they got, new logins see the new configuration.
package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/graph"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// Options are a Relay's dependencies. Nil fields have the documented default.
type Options struct {
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Store holds refresh tokens; nil works only for client credentials.
	Store oauth.Store
	// HTTPClient is used for token requests; nil: oauth's default.
	HTTPClient *http.Client
	// Dialer dials upstream servers; nil: a net.Dialer with a 15 s timeout.
	Dialer *net.Dialer
	// Observer is told about logins and relayed mail (metrics, status
	// page); nil: nothing is recorded.
	Observer Observer
	// Shared, when set (cluster in the configuration), counts every
	// mailbox's connections and pace with the other relay instances.
	Shared delivery.SharedLimits
}

// Relay is the shared state of all sessions.
type Relay struct {
	opts     Options
	log      *slog.Logger
	observer Observer
	throttle *Throttle

	mu sync.Mutex // serialises Reload
	// running: Run has started the accounts' background work (guarded
	// by mu); a reload starts the new accounts' too.
	running bool
	current atomic.Pointer[snapshot]
	// refreshers counts the accounts' background token refreshers, so
	// Run returns only when all of them have.
	refreshers sync.WaitGroup

	// deliveryMu guards the mailboxes' senders and the spool (see
	// delivery.go), which outlive a reload.
	deliveryMu sync.Mutex
	senders    map[senderKey]*delivery.Sender
	spool      *spool.Spool
	// graphs are the mailboxes' Graph clients (graph.go).
	graphs map[graphKey]*graph.Client
}

// snapshot is one configuration's accounts.
type snapshot struct {
	cfg        *config.Config
	accounts   []*Account
	byUsername map[string]*Account // lowercase username
}

// NewRelay builds the accounts and token sources of cfg.
func NewRelay(cfg *config.Config, opts Options) (*Relay, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Dialer == nil {
		opts.Dialer = &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}
	}
	if opts.Observer == nil {
		opts.Observer = events.Nop{}
	}
	r := &Relay{
		opts:     opts,
		log:      opts.Logger,
		observer: opts.Observer,
		throttle: NewThrottle(),
		senders:  make(map[senderKey]*delivery.Sender),
		graphs:   make(map[graphKey]*graph.Client),
	}
	snap, err := r.build(cfg, nil)
	if err != nil {
		return nil, err
	}
	r.current.Store(snap)
	return r, nil
}

// build makes the accounts of cfg, reusing the token source (and so the
// cached access token) of an account from prev whose token-relevant settings
// are unchanged.
func (r *Relay) build(cfg *config.Config, prev *snapshot) (*snapshot, error) {
	snap := &snapshot{cfg: cfg, byUsername: make(map[string]*Account)}
	old := make(map[string]*Account)
	if prev != nil {
		for _, a := range prev.accounts {
			old[a.Name] = a
		}
	}
	for _, ca := range cfg.Accounts {
		a, err := newAccount(ca, old[ca.Name], r.opts)
		if err != nil {
			return nil, fmt.Errorf("account %s: %w", ca.Name, err)
		}
		if err := r.attachDelivery(cfg, a); err != nil {
			return nil, fmt.Errorf("account %s: %w", ca.Name, err)
		}
		snap.accounts = append(snap.accounts, a)
		if ca.Username != "" {
			snap.byUsername[strings.ToLower(ca.Username)] = a
		}
	}
	return snap, nil
}

// Reload replaces the configuration. On error the old one stays in force.
// Background refreshers of the new sources start under ctx; those of
// dropped or replaced sources are stopped. The old accounts' deliveries are
// closed: their idle upstream sessions end, and a transaction still running
// in a live session finishes and is then closed.
func (r *Relay) Reload(ctx context.Context, cfg *config.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.current.Load()
	snap, err := r.build(cfg, prev)
	if err != nil {
		return err
	}
	kept := make(map[*oauth.Source]bool)
	for _, a := range snap.accounts {
		kept[a.Source] = true
		a.start(ctx, &r.refreshers)
		if r.running {
			startDelivery(a)
		}
	}
	r.current.Store(snap)
	for _, a := range prev.accounts {
		if !kept[a.Source] {
			a.stop()
		}
		a.Delivery.Close()
	}
	r.closeUnusedSenders(snap)
	return nil
}

// Run starts the background token refresh of every account and blocks until
// ctx is done, removing failed queued messages older than queue.keep_failed
// now and then; then it stops the refreshers, waits for them and closes the
// accounts' deliveries.
func (r *Relay) Run(ctx context.Context) {
	r.mu.Lock()
	r.running = true
	for _, a := range r.current.Load().accounts {
		a.start(ctx, &r.refreshers)
		startDelivery(a)
	}
	r.mu.Unlock()
	r.expireFailed()
	tick := time.NewTicker(expireInterval)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			r.expireFailed()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.current.Load().accounts {
		a.stop()
		a.Delivery.Close()
	}
	r.refreshers.Wait()
	r.closeDelivery()
}

// Config returns the configuration in force.
func (r *Relay) Config() *config.Config { return r.current.Load().cfg }

// Accounts returns the accounts in force, in configuration order.
func (r *Relay) Accounts() []*Account { return r.current.Load().accounts }

// Source returns the token source of the account called name in force, nil
// if there is none.
func (r *Relay) Source(name string) *oauth.Source {
	for _, a := range r.current.Load().accounts {
		if a.Name == name {
			return a.Source
		}
	}
	return nil
}

// Logger returns the relay's logger.
func (r *Relay) Logger() *slog.Logger { return r.log }

// Observer returns the relay's observer (never nil).
func (r *Relay) Observer() Observer { return r.observer }

// AccountForRelay returns the account that lets a client at addr submit
// mail from sender without AUTH: the first whose relay_from holds addr and
// whose allowed_from holds sender; nil if none.
func (r *Relay) AccountForRelay(addr netip.Addr, sender string) *Account {
	for _, a := range r.current.Load().accounts {
		if a.relaysFor(addr) && a.AllowsSender(sender) {
			return a
		}
	}
	return nil
}

// MayRelay reports whether any account lets a client at addr submit without
// AUTH.
func (r *Relay) MayRelay(addr netip.Addr) bool {
	for _, a := range r.current.Load().accounts {
		if a.relaysFor(addr) {
			return true
		}
	}
	return false
}

// AddrOf returns the IP of a net.Addr (the zero Addr if it has none).
func AddrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
