package admin

import (
	"context"
	"fmt"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
)

// Cluster is the store several relay instances share (cluster: in the
// configuration), as the status page shows it: which instances there are
// and each one's queue, read through the store (each instance keeps its
// own spool, which only its host can list). *cluster.Store implements it.
type Cluster interface {
	// Instance is this relay's name among the others.
	Instance() string
	// Healthy reports whether the store answered the last call;
	// Instances how many instances were alive when it last did.
	Healthy() bool
	Instances() int
	// Peers reads every instance alive, or whose published queue has
	// not expired yet, from the store.
	Peers(ctx context.Context) ([]cluster.Peer, error)
}

// clusterView is the status page's Instances section.
type clusterView struct {
	Store, Self string
	// Healthy: the store answered; Alive is how many instances it
	// counted at the last heartbeat.
	Healthy bool
	Alive   int
	// Err says why the instances could not be read ("": they were).
	Err string
	// SafeShare and Mailboxes: how many of this instance's mailboxes
	// keep a safe share of their limits now, of how many.
	SafeShare, Mailboxes int
	Rows                 []instanceRow
}

// instanceRow is one instance as the store knows it.
type instanceRow struct {
	Name                    string
	Self                    bool
	State, Class, StateNote string
	HasQueue                bool
	Depth, InFlight, Failed int
	Oldest, OldestTitle     string
	Published, PubTitle     string
}

// clusterView builds the Instances section (nil without cluster).
func (s *Server) clusterView(ctx context.Context, now time.Time) *clusterView {
	c := s.opts.Cluster
	if c == nil {
		return nil
	}
	v := &clusterView{Store: s.relay.Config().Cluster.Store, Self: c.Instance(), Alive: c.Instances()}
	s.relay.EachSender(func(_, _ string, st delivery.Stats) {
		v.Mailboxes++
		if st.SafeShare {
			v.SafeShare++
		}
	})
	peers, err := c.Peers(ctx)
	v.Healthy = c.Healthy()
	if err != nil {
		v.Err = "The store could not be read: " + err.Error()
		return v
	}
	for _, p := range peers {
		v.Rows = append(v.Rows, instanceRowOf(p, p.Name == v.Self, now))
	}
	return v
}

// instanceRowOf says what the store knows of one instance: healthy while
// its heartbeat's lease holds and its queue is fresh, stale when its
// queue missed three heartbeats, gone once its lease ended (its queue
// stays on its own disk).
func instanceRowOf(p cluster.Peer, self bool, now time.Time) instanceRow {
	r := instanceRow{Name: p.Name, Self: self, HasQueue: p.HasQueue}
	q := p.Queue
	switch {
	case !p.Alive:
		r.State, r.Class = "gone", "bad"
		r.StateNote = "its heartbeat stopped: it is down or cannot reach the store; what it queued waits on its own disk"
	case p.HasQueue && q.Stale(now):
		r.State, r.Class = "stale", "warn"
		r.StateNote = "alive, but its queue was last published " + relTime(q.At, now)
	default:
		r.State, r.Class = "healthy", "ok"
	}
	if !p.HasQueue {
		if p.Alive {
			r.StateNote = "no queue: its accounts deliver directly"
		}
		return r
	}
	r.Depth, r.InFlight, r.Failed = q.Depth, q.InFlight, q.Failed
	if !q.Oldest.IsZero() {
		r.Oldest, r.OldestTitle = relTime(q.Oldest, now), absTime(q.Oldest)
	}
	r.Published, r.PubTitle = relTime(q.At, now), absTime(q.At)
	return r
}

// StoreNote is the section's line on the store in plain words.
func (v *clusterView) StoreNote() string {
	if !v.Healthy {
		return fmt.Sprintf("The shared store is unreachable: %d of this instance's %d mailboxes keep a safe share of their limits "+
			"(1 connection, their fraction of the pace and of the day's recipients) until it is back.", v.SafeShare, v.Mailboxes)
	}
	note := fmt.Sprintf("The store answers; %d %s alive at the last heartbeat. Connections, pace and daily recipients are counted there for all.",
		v.Alive, plural(v.Alive, "instance", "instances"))
	if v.SafeShare > 0 {
		note += fmt.Sprintf(" %d of %d mailboxes are still on their safe share (a window after the store's return).", v.SafeShare, v.Mailboxes)
	}
	return note
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// sharedRow is the status page's line for a mailbox whose limits are
// counted with other instances (cluster): shared, or on the safe share
// while the store is unreachable.
func sharedRow(st delivery.Stats) limitView {
	if st.SafeShare {
		return limitView{"Shared with other instances", "no: safe share",
			fmt.Sprintf("the shared store is unreachable: 1 connection, %d messages a minute and %d more recipients on this instance alone until it is back (%d times so far)",
				st.Effective.MessagesPerMinute, st.SafeShareRecipients, st.SafeShares)}
	}
	day := "the day's count not read yet"
	if st.SharedDayKnown {
		day = fmt.Sprintf("%d recipients in the last 24 h on all instances", st.SharedRecipientsToday)
	}
	return limitView{"Shared with other instances", "yes", "connections, pace and daily recipients counted in the shared store, for every instance; " + day}
}
