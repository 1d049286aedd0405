package delivery

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is still running once
// they end: sessions, idle timers and their callbacks must all be joined by
// Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
