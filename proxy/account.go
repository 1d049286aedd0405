package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// Account is a configured account with what the relay needs at run time.
type Account struct {
	*config.Account
	// Source gets this account's access tokens.
	Source *oauth.Source
	// GraphSource gets its Microsoft Graph tokens (upstream graph or
	// auto; nil otherwise): a second Source over the same grant and
	// refresh token, for Graph's scopes.
	GraphSource *oauth.Source
	// Delivery is how mail submitted for this account leaves the relay.
	Delivery delivery.Delivery
	// auto is the upstream: auto delivery inside Delivery (nil for the
	// others), for the status page.
	auto *delivery.Auto
	// roots verify the provider's upstream servers (system roots plus
	// ca_file).
	roots *x509.CertPool
	// sessions lets upstream TLS connections resume earlier sessions
	// (TLS 1.3 tickets): a legacy app logs in for every message or poll,
	// and resumption skips the certificate exchange and verification.
	sessions tls.ClientSessionCache
	// upstreamTLS are the TLS client configurations of the provider's
	// SMTP, IMAP and POP3 servers (see upstreamConfigs), shared by every
	// session with them.
	upstreamTLS map[events.Proto]*tls.Config

	// dialer connects to the provider's servers (Options.Dialer).
	dialer *net.Dialer
	// observer is told about upstream logins.
	observer events.Observer

	runMu  sync.Mutex
	cancel context.CancelFunc // stops Source.Run; nil when not running

	// base is the configured account of a view (an account seen through
	// one of its mailboxes, see mailbox.go); nil for the account itself.
	base *Account
	// views are the account's views by mailbox (normalised).
	viewMu sync.Mutex
	views  map[string]*Account

	memoOnce sync.Once
	memoKey  []byte
	memoMu   sync.Mutex
	memo     []byte // HMAC of the last verified password (see checkPassword)
}

func newAccount(ca *config.Account, prev *Account, opts Options) (*Account, error) {
	roots, err := loadRoots(ca.ProviderRef.CAFile)
	if err != nil {
		return nil, err
	}
	sessions := tls.NewLRUClientSessionCache(64)
	a := &Account{Account: ca, roots: roots, sessions: sessions, upstreamTLS: upstreamConfigs(ca.ProviderRef, roots, sessions),
		dialer: opts.Dialer, observer: opts.Observer}
	if prev != nil && sameTokenSettings(prev.Account, ca) {
		a.Source, a.GraphSource = prev.Source, prev.GraphSource
		prev.runMu.Lock()
		a.cancel, prev.cancel = prev.cancel, nil
		prev.runMu.Unlock()
		return a, nil
	}
	a.Source, err = oauth.NewSource(ca, oauth.Options{
		Store:      opts.Store,
		HTTPClient: opts.HTTPClient,
		Logger:     opts.Logger,
		OnRequest: func(e *oauth.Error, took time.Duration) {
			opts.Observer.TokenRequest(a.Info(), tokenResult(e), took)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("token source: %w", err)
	}
	if ca.SendsThroughGraph() {
		if a.GraphSource, err = newGraphSource(ca, opts, a); err != nil {
			return nil, fmt.Errorf("graph token source: %w", err)
		}
	}
	return a, nil
}

// tokenResult names a token request's outcome for the Observer.
func tokenResult(e *oauth.Error) events.TokenResult {
	switch {
	case e == nil:
		return events.TokenOK
	case e.Class == oauth.Transient:
		return events.TokenTransient
	}
	return events.TokenNeedsSignIn
}

// sameTokenSettings reports whether two versions of an account would get the
// same tokens, so a reload can keep the cached token and its refresher.
func sameTokenSettings(a, b *config.Account) bool {
	return a.Name == b.Name && a.Mailbox == b.Mailbox && a.Password == b.Password &&
		a.PasswordPassthrough == b.PasswordPassthrough && a.SendsThroughGraph() == b.SendsThroughGraph() &&
		reflect.DeepEqual(*a.ProviderRef, *b.ProviderRef)
}

func loadRoots(caFile string) (*x509.CertPool, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if caFile == "" {
		return roots, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca_file %s: no PEM certificates", caFile)
	}
	return roots, nil
}

// Info is what events say about the account: public facts only. A nil
// Account (a user name that is no account's) is the zero events.Account.
func (a *Account) Info() events.Account {
	if a == nil {
		return events.Account{}
	}
	return events.Account{Name: a.Name, Mailbox: a.Mailbox, Provider: a.Provider}
}

// Target is the account's way to its provider's server for protocol p.
func (a *Account) Target(p events.Proto) upstream.Target {
	return upstream.Target{
		// A mailbox the app chose by its login name is checked at
		// login: Exchange lets an app-only token without permission on
		// it log in over IMAP and fails every command after.
		CheckMailbox: a.base != nil,
		Account:      a.Info(),
		Server:       serverFor(a.ProviderRef, p),
		TLS:          a.upstreamTLS[p],
		Dialer:       a.dialer,
		Observer:     a.observer,
	}
}

// serverFor is the provider's server for protocol p.
func serverFor(pr *config.Provider, p events.Proto) config.Upstream {
	switch p {
	case events.IMAP:
		return pr.IMAP
	case events.POP3:
		return pr.POP3
	}
	return pr.SMTP
}

// upstreamConfigs are the TLS client configurations of the provider's
// servers, verified against roots and resuming sessions from sessions,
// each made once: an idle proxied session keeps the configuration its
// upstream connection was made with, and 5,000 of them each holding a copy
// cost 5,000 copies.
func upstreamConfigs(pr *config.Provider, roots *x509.CertPool, sessions tls.ClientSessionCache) map[events.Proto]*tls.Config {
	base := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, ClientSessionCache: sessions}
	m := make(map[events.Proto]*tls.Config, 3)
	for _, p := range []events.Proto{events.SMTP, events.IMAP, events.POP3} {
		m[p] = upstream.Target{Server: serverFor(pr, p), TLS: base}.ClientTLS()
	}
	return m
}

func (a *Account) relaysFor(addr netip.Addr) bool {
	for _, p := range a.RelayNets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// start runs the background token refresher under ctx unless it runs.
func (a *Account) start(ctx context.Context, wg *sync.WaitGroup) {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	if a.cancel != nil {
		return
	}
	ctx, a.cancel = context.WithCancel(ctx)
	wg.Go(func() { a.Source.Run(ctx) })
	if a.GraphSource != nil {
		wg.Go(func() { a.GraphSource.Run(ctx) })
	}
}

func (a *Account) stop() {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	if a.cancel != nil {
		a.cancel()
		a.cancel = nil
	}
}

// credentials are the upstream credentials of one app session: the
// account's token, through Relay.Token (which exchanges a password
// passthrough account's app password and counts its failures).
type credentials struct {
	r        *Relay
	addr     netip.Addr
	a        *Account
	password string
}

// Credentials returns the upstream credentials of a session of account a
// from addr; password is needed only for password passthrough accounts.
func (r *Relay) Credentials(addr netip.Addr, a *Account, password string) upstream.Credentials {
	if !a.PasswordPassthrough {
		password = ""
	}
	return &credentials{r: r, addr: addr, a: a, password: password}
}

func (c *credentials) Token(ctx context.Context) (string, error) {
	return c.r.Token(ctx, c.addr, c.a, c.password)
}

func (c *credentials) Invalidate() { c.a.Source.Invalidate() }
