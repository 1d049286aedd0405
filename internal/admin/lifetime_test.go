package admin

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// readyHold is how long the test's Ready check holds a /readyz handler:
// long enough that a Close which does not wait for handlers returns first.
const readyHold = 200 * time.Millisecond

// TestCloseWaitsForHandlers: a request in progress when Close is called has
// finished its handler when Close returns (net/http's Close does not wait).
func TestCloseWaitsForHandlers(t *testing.T) {
	entered := make(chan struct{}, 1)
	var returned atomic.Bool
	w := newWorld(t, worldOptions{ready: func() error {
		select {
		case entered <- struct{}{}:
		default:
			return nil // only the first request is held
		}
		time.Sleep(readyHold)
		returned.Store(true)
		return nil
	}})
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	got := make(chan error, 1)
	go func() {
		resp, err := client.Get(w.base + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		got <- err
	}()
	<-entered
	if err := w.srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if !returned.Load() {
		t.Error("Close returned while a handler was still running")
	}
	<-got // the request was cut: its error does not matter
}
