package preauth

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is still running once
// they end: every goroutine a server, session or fixture starts must be
// joined when it stops.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
