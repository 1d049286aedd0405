package admin

import (
	"fmt"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
)

// sharedRow is the status page's line for a mailbox whose limits are
// counted with other instances (cluster): shared, or on the safe share
// while the store is unreachable.
func sharedRow(st delivery.Stats) limitView {
	if st.SafeShare {
		return limitView{"Shared with other instances", "no: safe share",
			fmt.Sprintf("the shared store is unreachable: 1 connection and %d messages a minute on this instance alone until it is back (%d times so far)",
				st.Effective.MessagesPerMinute, st.SafeShares)}
	}
	return limitView{"Shared with other instances", "yes", "connections and pace counted in the shared store, for every instance"}
}
