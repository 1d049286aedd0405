package smtp

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The net.Conn side of the wire: what go-smtp is given as its connection,
// and the listeners that give it.

// view is the net.Conn one go-smtp connection has of the wire. After
// STARTTLS the old view is retired: it reads EOF and its Close does
// nothing, since the socket now belongs to the new one.
type view struct {
	w        *wire
	greeting bool // swallow go-smtp's greeting (after STARTTLS)
	// txOpen: the session has a transaction open (Shutdown lets it finish).
	txOpen atomic.Bool
}

func (v *view) current() bool { return v.w.cur.Load() == v }

func (v *view) Read(p []byte) (int, error) {
	if !v.current() {
		return 0, io.EOF
	}
	return v.w.read(p)
}

func (v *view) Write(p []byte) (int, error) {
	if !v.current() {
		return 0, net.ErrClosed
	}
	if v.greeting {
		i := bytes.Index(p, []byte("\r\n"))
		if i < 0 {
			return len(p), nil
		}
		v.greeting = false
		if rest := p[i+2:]; len(rest) > 0 {
			if _, err := v.w.write(rest); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	return v.w.write(p)
}

// Close closes the connection, unless the view was retired by STARTTLS.
func (v *view) Close() error {
	if !v.current() {
		return nil
	}
	return v.w.closeTransport()
}

func (v *view) LocalAddr() net.Addr  { return v.w.raw.LocalAddr() }
func (v *view) RemoteAddr() net.Addr { return v.w.raw.RemoteAddr() }

// SetDeadline and SetReadDeadline do not touch reads: the wire owns the
// read deadlines. go-smtp (with ReadTimeout 0) only sets write deadlines.
func (v *view) SetDeadline(t time.Time) error      { return v.w.raw.SetWriteDeadline(t) }
func (v *view) SetReadDeadline(t time.Time) error  { return nil }
func (v *view) SetWriteDeadline(t time.Time) error { return v.w.raw.SetWriteDeadline(t) }

// TLS reports whether the connection is encrypted.
func (v *view) TLS() bool { return v.w.TLS() }

// NetConn returns the socket under the wire, so proxy.MarkAuthenticated
// reaches the listener's connection through the view.
func (v *view) NetConn() net.Conn { return v.w.raw }

// cutShort reports whether the client ended in the middle of a message.
func (v *view) cutShort() bool { return v.w.cut.Load() }

// closedError is the sticky read error after the wire closed the
// connection. It wraps net.ErrClosed, which go-smtp ends the connection on
// without writing anything more.
type closedError struct{ why string }

func (e *closedError) Error() string { return "client connection closed: " + e.why }
func (e *closedError) Unwrap() error { return net.ErrClosed }

// prefixConn replays bytes read ahead before the socket's own.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// wireListener wraps each accepted connection in a wire.
type wireListener struct {
	net.Listener
	srv *Server
}

func (l wireListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	w := newWire(l.srv, c)
	l.srv.track(w)
	return w.cur.Load(), nil
}

// handoffListener delivers connections upgraded by STARTTLS to the go-smtp
// server that serves them from then on.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c over; false once the listener is closed (shutting down).
func (l *handoffListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }
