package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is still running once
// they end: the commands run in-process (run), and every goroutine that
// serve, check, login or a fixture starts must be joined when it stops.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
