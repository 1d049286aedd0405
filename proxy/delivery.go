package proxy

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// queueMaxSize is the largest message `delivery: queue` spools: what
// Exchange Online accepts at most (EHLO SIZE 157286400).
const queueMaxSize = 157286400

// queueMaxWait bounds how long the queue's worker waits for the mailbox's
// connection and pace; a message past it is deferred and retried.
const queueMaxWait = 10 * time.Minute

// senderKey names a mailbox's sender: Exchange's limits are per mailbox,
// so every account that sends as one shares its Sender (and its pool and
// limits); a mailbox reached through two providers' servers gets one per
// server.
type senderKey struct {
	mailbox string // lower case
	server  string // the provider's SMTP address
}

// attachDelivery gives a its Delivery: direct over the mailbox's Sender
// (upstream smtp), through Graph (graph), or SMTP moving to Graph (auto);
// with delivery: queue, a queue in the spool that delivers through the
// same; for an account whose messages log in as several mailboxes, a
// mailboxRouter over one such delivery per mailbox (SMTP only).
func (r *Relay) attachDelivery(cfg *config.Config, a *Account) error {
	if routesMailboxes(a.Account) {
		m, err := r.newMailboxRouter(cfg, a)
		if err != nil {
			return err
		}
		a.Delivery = m
		return nil
	}
	queued := a.Account.Delivery == config.DeliveryQueue
	maxWait := a.EffectiveLimits.MaxWait
	if queued {
		// The worker waits longer than an app would for the mailbox's
		// pace: no one is waiting on the other end, and a message past it
		// is only deferred.
		maxWait = queueMaxWait
	}
	var send delivery.Delivery
	switch a.Upstream {
	case config.UpstreamGraph:
		send = r.graphDelivery(cfg, a)
	case config.UpstreamAuto:
		a.auto = delivery.NewAuto(a.Info(), r.direct(cfg, a, maxWait), r.graphDelivery(cfg, a), r.log)
		send = a.auto
	default:
		send = r.direct(cfg, a, maxWait)
	}
	if !queued {
		a.Delivery = send
		return nil
	}
	q, err := r.newQueue(cfg, a, send, nil)
	if err != nil {
		return err
	}
	a.Delivery = q
	return nil
}

// direct is a's direct delivery over its mailbox's Sender.
func (r *Relay) direct(cfg *config.Config, a *Account, maxWait time.Duration) *delivery.Direct {
	return delivery.NewDirect(a.Info(), r.sender(cfg, a, a.Mailbox), r.observer,
		delivery.DirectOptions{MaxWait: maxWait, SharedSender: true})
}

// newQueue makes a's queue in the spool, delivering over sender (or by
// route, see delivery.QueueOptions.Route).
func (r *Relay) newQueue(cfg *config.Config, a *Account, sender delivery.Delivery, route func(string) delivery.Delivery) (*delivery.Queue, error) {
	sp, err := r.openSpool(cfg)
	if err != nil {
		return nil, err
	}
	return delivery.NewQueue(delivery.QueueOptions{
		Account:              a.Info(),
		Spool:                sp,
		Sender:               sender,
		Route:                route,
		Credentials:          r.Credentials(netip.Addr{}, a, ""),
		MaxAge:               cfg.Queue.MaxAge,
		MaxSize:              queueMaxSize,
		RecipientsPerMessage: a.EffectiveLimits.RecipientsPerMessage,
		Logger:               r.log,
		Observer:             r.observer,
	}), nil
}

// startDelivery starts the background work of a's delivery (a queue's
// worker). It is Run's to do, not NewRelay's: a relay built only to look
// (`oauthrelay check`) must not deliver queued mail behind the running
// relay's back.
func startDelivery(a *Account) {
	if s, ok := a.Delivery.(interface{ Start() }); ok {
		s.Start()
	}
}

// sender returns the Sender of mailbox (one a sends as), making it on
// first use, with the mailbox's limits in cfg (the most restrictive of
// every account that sends as it); a reload puts changed limits in force.
func (r *Relay) sender(cfg *config.Config, a *Account, mailbox string) *delivery.Sender {
	k := senderKey{mailbox: strings.ToLower(mailbox), server: a.ProviderRef.SMTP.Addr}
	limits := cfg.MailboxLimits(mailbox)
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	s := r.senders[k]
	if s == nil {
		t := a.Target(events.SMTP)
		t.Account = a.infoFor(mailbox)
		s = delivery.NewSender(t, delivery.SenderOptions{Limits: limits, Logger: r.log,
			Clock: SenderClock(os.LookupEnv, r.log)})
		r.senders[k] = s
	} else {
		s.SetLimits(limits)
	}
	return s
}

// openSpool opens the spool in state_dir on first use; quarantined
// messages are logged one by one.
func (r *Relay) openSpool(cfg *config.Config) (*spool.Spool, error) {
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	if r.spool != nil {
		return r.spool, nil
	}
	sp, rec, err := spool.Open(filepath.Join(cfg.StateDir, "queue"), spool.Options{})
	if err != nil {
		return nil, fmt.Errorf("open the queue: %w", err)
	}
	for _, q := range rec.Quarantined {
		r.log.Error("queued message is corrupt: moved to quarantine, not delivered", "id", q.ID, "reason", q.Reason, "dir", q.Dir)
	}
	if rec.NotPrivate != nil {
		r.log.Warn("the queue directory is readable by others", "err", rec.NotPrivate)
	}
	r.spool = sp
	return sp, nil
}

// expireInterval is how often failed queued messages past
// queue.keep_failed are removed.
const expireInterval = time.Hour

// expireFailed removes the failed messages older than queue.keep_failed,
// when a spool is open.
func (r *Relay) expireFailed() {
	keep := r.Config().Queue.KeepFailed
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	if r.spool == nil {
		return
	}
	ids, err := r.spool.ExpireFailed(keep, time.Now())
	if err != nil {
		r.log.Error("cannot remove expired failed messages from the queue", "err", err)
	}
	for _, id := range ids {
		r.log.Info("failed queued message removed after queue.keep_failed", "id", id, "keep_failed", keep)
	}
}

// closeUnusedSenders closes the senders no account of snap sends as any
// more (a domain-wide account's mailboxes stay, with their pace and pool).
func (r *Relay) closeUnusedSenders(snap *snapshot) {
	used := func(k senderKey) bool {
		for _, a := range snap.accounts {
			if a.ProviderRef.SMTP.Addr == k.server && a.SendsAs(k.mailbox) {
				return true
			}
		}
		return false
	}
	usedGraph := make(map[graphKey]bool)
	for _, a := range snap.accounts {
		usedGraph[graphKeyOf(a)] = true
	}
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	for k, s := range r.senders {
		if !used(k) {
			s.Close()
			delete(r.senders, k)
		}
	}
	for k, c := range r.graphs {
		if !usedGraph[k] {
			c.CloseIdle()
			delete(r.graphs, k)
		}
	}
}

// closeDelivery closes every sender and the spool.
func (r *Relay) closeDelivery() {
	r.deliveryMu.Lock()
	defer r.deliveryMu.Unlock()
	for k, s := range r.senders {
		s.Close()
		delete(r.senders, k)
	}
	for k, c := range r.graphs {
		c.CloseIdle()
		delete(r.graphs, k)
	}
	if r.spool != nil {
		r.spool.Close()
		r.spool = nil
	}
}

// EachSender calls f with a snapshot of every mailbox's Sender, ordered by
// mailbox and server (admin.Relay). The Stats are read after deliveryMu is
// released, so a scrape never holds up a reload.
func (r *Relay) EachSender(f func(mailbox, server string, st delivery.Stats)) {
	type entry struct {
		k senderKey
		s *delivery.Sender
	}
	r.deliveryMu.Lock()
	list := make([]entry, 0, len(r.senders))
	for k, s := range r.senders {
		list = append(list, entry{k, s})
	}
	r.deliveryMu.Unlock()
	slices.SortFunc(list, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.k.mailbox, b.k.mailbox), cmp.Compare(a.k.server, b.k.server))
	})
	for _, e := range list {
		f(e.k.mailbox, e.k.server, e.s.Stats())
	}
}

// QueueStats sums up the spool (admin.Relay); ok is false while no account
// queues.
func (r *Relay) QueueStats() (st spool.Stats, ok bool, err error) {
	r.deliveryMu.Lock()
	sp := r.spool
	r.deliveryMu.Unlock()
	if sp == nil {
		return spool.Stats{}, false, nil
	}
	st, err = sp.Stats()
	return st, true, err
}
