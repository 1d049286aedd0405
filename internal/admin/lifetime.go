package admin

import (
	"net"
	"net/http"
	"sync"
)

// httpConns follows the admin server's HTTP connections, through
// net/http's ConnState hook, and the Serve calls running, so that Close and
// Shutdown return only when every connection's goroutine (and so every
// handler) has: net/http's own Close and Shutdown do not wait for them.
type httpConns struct {
	mu      sync.Mutex
	gone    sync.Cond // L: &mu; broadcast when a connection or a Serve ends
	serving int       // Serve calls running
	conns   map[net.Conn]struct{}
	closing bool // Close was called: a connection accepted now is closed at once
}

func newHTTPConns() *httpConns {
	h := &httpConns{conns: make(map[net.Conn]struct{})}
	h.gone.L = &h.mu
	return h
}

// state is the ConnState hook. net/http reports StateNew on Serve's
// goroutine before the connection's goroutine starts (and before Serve can
// return), and StateClosed or StateHijacked as the last thing that
// goroutine does.
func (h *httpConns) state(c net.Conn, st http.ConnState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch st {
	case http.StateNew:
		h.conns[c] = struct{}{}
		if h.closing {
			c.Close() // accepted as Close ran: net/http's Close may have missed it
		}
	case http.StateClosed, http.StateHijacked:
		delete(h.conns, c)
		h.gone.Broadcast()
	}
}

// serve runs fn, an http.Server's Serve, counted: once no Serve runs, no
// connection can be reported new any more.
func (h *httpConns) serve(fn func() error) error {
	h.mu.Lock()
	h.serving++
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.serving--
		h.gone.Broadcast()
		h.mu.Unlock()
	}()
	return fn()
}

// close marks the server as closing.
func (h *httpConns) close() {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
}

// wait returns when no Serve runs and no connection is left. The server
// must have been told to stop (http.Server's Close, or a Shutdown that
// returned nil), or it waits for ever.
func (h *httpConns) wait() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.serving > 0 || len(h.conns) > 0 {
		h.gone.Wait()
	}
}
