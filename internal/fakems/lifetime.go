package fakems

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// Lifetimes. Close returns only when every goroutine the fake started has,
// but the libraries do not wait for the goroutines that serve their
// connections: go-smtp's Close does not (its Shutdown does), go-imap's
// server knows of none, and net/http's Close and Shutdown do not either. So
// the fake follows its connections itself (conns): Close closes every
// socket, then waits for go-smtp through its Shutdown, for each IMAP
// connection until go-imap's last Close of it (imapConn.Close), and for
// each HTTP connection until net/http reports it closed (its ConnState hook
// is the last thing the connection's goroutine does).

// connSet is the fake's SMTP, IMAP and HTTP connections being served.
type connSet struct {
	mu      sync.Mutex
	gone    sync.Cond // L: &mu; broadcast when a connection is forgotten
	closing bool
	socks   map[net.Conn]struct{} // SMTP and IMAP sockets, closed by closeAll
	imap    int                   // IMAP connections go-imap still serves
	http    map[net.Conn]struct{} // from StateNew to StateClosed or StateHijacked
}

func newConnSet() *connSet {
	cs := &connSet{socks: make(map[net.Conn]struct{}), http: make(map[net.Conn]struct{})}
	cs.gone.L = &cs.mu
	return cs
}

// add registers the socket of an accepted SMTP or IMAP connection; false
// (and the socket closed) once Close has begun: it must not be served.
func (cs *connSet) add(sock net.Conn, imap bool) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closing {
		sock.Close()
		return false
	}
	cs.socks[sock] = struct{}{}
	if imap {
		cs.imap++
	}
	return true
}

// remove forgets a closed SMTP socket, or an IMAP one whose goroutine is
// done (imapDone).
func (cs *connSet) remove(sock net.Conn, imapDone bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.socks, sock)
	if imapDone {
		cs.imap--
	}
	cs.gone.Broadcast()
}

// httpState is the HTTP server's ConnState hook. net/http reports StateNew
// on Serve's goroutine before the connection's goroutine starts and before
// Serve can return, so once Serve has returned no connection is missed.
func (cs *connSet) httpState(c net.Conn, st http.ConnState) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	switch st {
	case http.StateNew:
		cs.http[c] = struct{}{}
		if cs.closing {
			c.Close() // accepted as Close ran: net/http's Close may have missed it
		}
	case http.StateClosed, http.StateHijacked:
		delete(cs.http, c)
		cs.gone.Broadcast()
	}
}

// closeAll closes every SMTP and IMAP socket; one accepted from now on is
// closed at once.
func (cs *connSet) closeAll() {
	cs.mu.Lock()
	cs.closing = true
	socks := make([]net.Conn, 0, len(cs.socks))
	for s := range cs.socks {
		socks = append(socks, s)
	}
	cs.mu.Unlock()
	for _, s := range socks {
		s.Close()
	}
}

// wait returns when no IMAP or HTTP connection is left. Call it after the
// Serve goroutines returned and closeAll.
func (cs *connSet) wait() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for cs.imap > 0 || len(cs.http) > 0 {
		cs.gone.Wait()
	}
}

// imapTracking is the part of an imapConn that tells when go-imap's
// goroutine is done with it: go-imap closes the session, then the
// connection, as the last things it does.
type imapTracking struct {
	set     *connSet
	sock    net.Conn    // the TCP socket under TLS
	ended   atomic.Bool // the session's Close ran
	finOnce sync.Once
}

// sessionEnded is called by the session's Close.
func (t *imapTracking) sessionEnded() { t.ended.Store(true) }

// Close closes the connection. The first Close after the session's is
// go-imap's last act on it (its connection goroutine's outermost defer);
// Close before that (BYE) is not. The fake itself closes the socket, never
// this, so no other goroutine calls it after the session ended.
func (c *imapConn) Close() error {
	err := c.Conn.Close()
	if c.track != nil && c.track.ended.Load() {
		c.track.finOnce.Do(func() { c.track.set.remove(c.track.sock, true) })
	}
	return err
}
