package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// clusterLeaseEnv shortens the store's connection leases (a Go
// duration): for tests on a fast clock only, like proxy.ClockSpeedEnv.
const clusterLeaseEnv = "OAUTHRELAY_TEST_CLUSTER_LEASE"

// clusterOptions reads clusterLeaseEnv.
func clusterOptions(lookup func(string) (string, bool), log *slog.Logger) cluster.Options {
	v, ok := lookup(clusterLeaseEnv)
	if !ok || v == "" {
		return cluster.Options{}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		log.Error(clusterLeaseEnv+" is not a positive duration: ignored", "value", v)
		return cluster.Options{}
	}
	log.Warn(clusterLeaseEnv+" is set: connection leases of a dead instance free sooner (tests only)", "lease", d)
	return cluster.Options{Lease: d}
}

// queueStats is what an instance publishes of its queue (see
// cluster.PublishQueue): ok false while no account has delivery: queue.
func queueStats(relay *proxy.Relay) (cluster.QueueStats, bool) {
	st, ok, err := relay.QueueStats()
	if !ok || err != nil && st.Depth == 0 && st.Failed == 0 {
		return cluster.QueueStats{}, false
	}
	return cluster.QueueStats{Depth: st.Depth, InFlight: st.InFlight, Failed: st.Failed, Oldest: st.Oldest}, true
}

// openSharedStore opens the shared store of c with the Redis client's own lines
// going to log (see cluster.ClientLogs): every command that opens one
// goes through here.
func openSharedStore(c config.Cluster, log *slog.Logger, opts ...cluster.Options) (*cluster.Store, error) {
	cluster.ClientLogs(log)
	return cluster.Open(c, log, opts...)
}

// printClusterQueues prints every instance's queue as published in the
// shared store (`queue list` with cluster in the configuration): each
// instance keeps its own spool, which only that host can list in full.
func printClusterQueues(ctx context.Context, c config.Cluster, w io.Writer, now time.Time) error {
	st, err := openSharedStore(c, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	qs, err := st.Queues(ctx)
	if err != nil {
		return fmt.Errorf("queue: the instances' queues: %w", err)
	}
	fmt.Fprintf(w, "Instances sharing %s (queues as each last published them):\n", c.Store)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  INSTANCE\tQUEUED\tIN FLIGHT\tFAILED\tOLDEST\tPUBLISHED")
	for _, q := range qs {
		oldest := "-"
		if !q.Oldest.IsZero() {
			oldest = humanDuration(now.Sub(q.Oldest)) + " ago"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s ago\n", q.Instance, q.Depth, q.InFlight, q.Failed, oldest, humanDuration(now.Sub(q.At)))
	}
	if len(qs) == 0 {
		fmt.Fprintln(tw, "  (none has published a queue)")
	}
	tw.Flush()
	fmt.Fprintln(w)
	return nil
}
