package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthrelay/oauthrelay/internal/events"
)

func newGraphDuplicates() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oauthrelay_graph_possible_duplicates_total",
		Help: "Messages sent again through Microsoft Graph after a timeout or a 504 without knowing whether the first send went out (the account may not read Sent Items, or save_to_sent_items is false): each may have been delivered twice, by account.",
	}, []string{"account"})
}

// GraphDuplicatePossible implements delivery.GraphObserver.
func (m *Metrics) GraphDuplicatePossible(a events.Account) {
	m.delivery.graphDuplicates.WithLabelValues(a.Name).Inc()
}
