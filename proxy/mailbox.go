package proxy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// An account may serve many mailboxes: a domain-wide account
// (mailbox: "*@domain", app-only) every mailbox of its domain or of its
// mailboxes list, and any account the shared mailboxes of its mailboxes
// list. The app picks the mailbox by logging in with its address as the
// user name (Relay.Login resolves it with config's OpensMailbox, after
// NormalizeAddress, the same gate the configuration went through) and gets
// a view: an *Account whose Mailbox is that address and which shares the
// configured account's token source, TLS session cache and password. The
// front ends need nothing else: IMAP (and POP3) log in upstream as the
// view's Mailbox with the account's token, and the view's Delivery sends
// each message as the mailbox config's SMTPMailbox picks for its MAIL FROM,
// over that mailbox's own Sender — its own pool and limits, as Exchange
// counts them per mailbox.

// queueReadyTimeout bounds the login check of a queueing account's
// mailbox at AUTH: an upstream that does not answer must not hold the app
// (the queue takes its mail whatever the upstream's state); only a refusal
// within it fails the login.
const queueReadyTimeout = 5 * time.Second

// maxViews bounds the views an account keeps for reuse; past it a login
// gets a view of its own (correct, only not shared).
const maxViews = 10000

// errNoMailboxToSendAs answers a MAIL FROM that no mailbox of a
// domain-wide account may send: a relay_from client (no mailbox logged
// in) sending as an address that is none of the account's mailboxes.
var errNoMailboxToSendAs = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
	Message: "Sender not allowed: it is none of this account's mailboxes; log in with the mailbox to send as it"}

// routesMailboxes reports whether a's messages may log in upstream as
// another mailbox than a's own (config's SMTPMailbox can differ from
// Mailbox): only app-only tokens can, as a delegated token is its user's.
func routesMailboxes(a *config.Account) bool {
	return a.AppOnly() && (a.DomainWide() || len(a.Mailboxes) > 0 || a.SendAs == config.SendAsSender)
}

// servesMailboxes reports whether logins by mailbox address may resolve to
// a.
func servesMailboxes(a *config.Account) bool { return a.DomainWide() || len(a.Mailboxes) > 0 }

// byMailbox returns the account that opens the mailbox a login name
// names, and that mailbox (normalised); nil if none. Validation makes sure
// at most one account opens any mailbox.
func (s *snapshot) byMailbox(name string) (*Account, string) {
	if !strings.Contains(name, "@") {
		return nil, ""
	}
	for _, a := range s.accounts {
		if !servesMailboxes(a.Account) {
			continue
		}
		if mb, ok := a.OpensMailbox(name); ok {
			return a, mb
		}
	}
	return nil, ""
}

// view returns a's view for mailbox (normalised, one a opens), made on
// first use and kept.
func (a *Account) view(mailbox string) *Account {
	a.viewMu.Lock()
	defer a.viewMu.Unlock()
	if v := a.views[mailbox]; v != nil {
		return v
	}
	ca := *a.Account
	ca.Mailbox = mailbox
	v := &Account{Account: &ca, Source: a.Source, roots: a.roots, sessions: a.sessions, upstreamTLS: a.upstreamTLS, dialer: a.dialer,
		observer: a.observer, base: a, Delivery: a.Delivery}
	if r, ok := a.Delivery.(*mailboxRouter); ok {
		v.Delivery = r.forLogin(mailbox)
	}
	if a.views == nil {
		a.views = make(map[string]*Account)
	}
	if len(a.views) < maxViews {
		a.views[mailbox] = v
	}
	return v
}

// Base is the configured account of a view, or a itself.
func (a *Account) Base() *Account {
	if a.base != nil {
		return a.base
	}
	return a
}

// mailboxRouter is the Delivery of an account whose messages log in
// upstream as different mailboxes (routesMailboxes), and of each of its
// views (forLogin): each message goes to the delivery of the mailbox
// config's SMTPMailbox picks for the session's login and its MAIL FROM.
type mailboxRouter struct {
	acct  *config.Account // the configured account
	login string          // the view's mailbox; "" for the account itself
	d     *mailboxDeliveries
}

// mailboxDeliveries are the per-mailbox deliveries of one account, shared
// by the account and its views, made on first use.
type mailboxDeliveries struct {
	// direct makes the direct delivery of a mailbox (over its Sender);
	// queue, when the account queues, is its queue.
	direct func(mailbox string) delivery.Delivery
	queue  *delivery.Queue

	mu     sync.Mutex
	byName map[string]delivery.Delivery // direct deliveries by mailbox
}

func (m *mailboxDeliveries) directFor(mailbox string) delivery.Delivery {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.byName[mailbox]
	if d == nil {
		d = m.direct(mailbox)
		m.byName[mailbox] = d
	}
	return d
}

// sendsFor is the delivery of messages sent as mailbox: queued for it, or
// direct over its Sender.
func (m *mailboxDeliveries) sendsFor(mailbox string) delivery.Delivery {
	if m.queue != nil {
		return m.queue.For(mailbox)
	}
	return m.directFor(mailbox)
}

func (r *mailboxRouter) forLogin(mailbox string) *mailboxRouter {
	return &mailboxRouter{acct: r.acct, login: mailbox, d: r.d}
}

// mailbox is the upstream identity for a message from from; "" if none.
func (r *mailboxRouter) mailbox(from string) string {
	return strings.ToLower(r.acct.SMTPMailbox(r.login, from))
}

// Ready implements delivery.Delivery: the session's own mailbox must log
// in. With delivery: queue an upstream that is down does not fail the
// app's AUTH (that is the queue's point), but a refusal does: a mailbox the
// app has no permission on fails at login, not when the queue gives up.
func (r *mailboxRouter) Ready(ctx context.Context, cred upstream.Credentials) error {
	mb := r.login
	if mb == "" && !r.acct.DomainWide() {
		mb = r.acct.Mailbox
	}
	if mb == "" {
		return nil
	}
	mb = r.mailbox(mb)
	if r.d.queue == nil {
		return r.d.directFor(mb).Ready(ctx, cred)
	}
	ctx, cancel := context.WithTimeout(ctx, queueReadyTimeout)
	defer cancel()
	err := r.d.directFor(mb).Ready(ctx, cred)
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Kind == upstream.Refused {
		return err
	}
	return nil
}

// Begin implements delivery.Delivery.
func (r *mailboxRouter) Begin(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions) (delivery.Tx, error) {
	mb := r.mailbox(from)
	if mb == "" {
		return nil, errNoMailboxToSendAs
	}
	return r.d.sendsFor(mb).Begin(ctx, cred, from, opts)
}

// Close implements delivery.Delivery: the account's own router closes its
// queue (the mailboxes' Senders are the relay's); a view's does nothing.
func (r *mailboxRouter) Close() {
	if r.login == "" && r.d.queue != nil {
		r.d.queue.Close()
	}
}

// Start starts the queue's worker (see startDelivery).
func (r *mailboxRouter) Start() {
	if r.login == "" && r.d.queue != nil {
		r.d.queue.Start()
	}
}

// newMailboxRouter makes the delivery of an account that routes mailboxes:
// each mailbox's direct delivery over its own Sender; with delivery: queue
// one queue for the account whose worker sends each message over the
// mailbox it was queued for.
func (r *Relay) newMailboxRouter(cfg *config.Config, a *Account) (*mailboxRouter, error) {
	d := &mailboxDeliveries{byName: make(map[string]delivery.Delivery)}
	d.direct = func(mailbox string) delivery.Delivery {
		return delivery.NewDirect(a.infoFor(mailbox), r.sender(cfg, a, mailbox), r.observer,
			delivery.DirectOptions{MaxWait: a.EffectiveLimits.MaxWait, SharedSender: true})
	}
	if a.Account.Delivery == config.DeliveryQueue {
		workers := &mailboxDeliveries{byName: make(map[string]delivery.Delivery)}
		workers.direct = func(mailbox string) delivery.Delivery {
			return delivery.NewDirect(a.infoFor(mailbox), r.sender(cfg, a, mailbox), r.observer,
				delivery.DirectOptions{MaxWait: queueMaxWait, SharedSender: true})
		}
		route := func(mailbox string) delivery.Delivery { return workers.directFor(strings.ToLower(mailbox)) }
		var fallback delivery.Delivery = noMailbox{}
		if !a.DomainWide() {
			fallback = route(a.Mailbox)
		}
		q, err := r.newQueue(cfg, a, fallback, route)
		if err != nil {
			return nil, err
		}
		d.queue = q
	}
	return &mailboxRouter{acct: a.Account, d: d}, nil
}

// noMailbox is the Sender of a domain-wide account's queue for a message
// queued for no mailbox (none is: Queue.For always names one).
type noMailbox struct{}

func (noMailbox) Ready(context.Context, upstream.Credentials) error { return nil }
func (noMailbox) Begin(context.Context, upstream.Credentials, string, *smtp.MailOptions) (delivery.Tx, error) {
	return nil, errNoMailboxToSendAs
}
func (noMailbox) Close() {}

// infoFor is what events say about a's traffic as mailbox.
func (a *Account) infoFor(mailbox string) events.Account {
	i := a.Info()
	i.Mailbox = mailbox
	return i
}

// ForMailbox returns a's view for mailbox (any form NormalizeAddress
// accepts) when a opens it: what an app logging in with that address gets.
func (a *Account) ForMailbox(mailbox string) (*Account, bool) {
	mb, ok := a.Base().OpensMailbox(mailbox)
	if !ok {
		return nil, false
	}
	return a.Base().view(mb), true
}

// SMTPTarget is a's SMTP target for a message from from: its XOAUTH2 user
// is the mailbox config's SMTPMailbox picks (the sender itself, or the
// session's mailbox for send-as); Mailbox "" if none may send it.
func (a *Account) SMTPTarget(from string) upstream.Target {
	login := ""
	if a.base != nil {
		login = a.Mailbox
	}
	t := a.Target(events.SMTP)
	t.Account = a.infoFor(strings.ToLower(a.Base().SMTPMailbox(login, from)))
	t.CheckMailbox = false
	return t
}
