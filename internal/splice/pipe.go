package splice

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// DefaultCloseGrace is how long the second direction of the copy may go on
// after the first one ended cleanly (the peer half-closed): the other side
// normally closes at once (an IMAP server after LOGOUT, the app after BYE).
const DefaultCloseGrace = 10 * time.Second

// smallBufferSize is what an idle direction holds while it waits:
// thousands of proxied connections sit in IDLE, so it is kept small
// (IMAP's untagged responses and POP3's replies fit; a read that fills it
// switches to a pooled buffer, see buffers.go).
const smallBufferSize = 512

// Side names one end of a spliced session.
type Side string

const (
	// App is the app's connection; its direction copies app → upstream.
	App Side = "app"
	// Upstream is the upstream server's connection; its direction copies
	// upstream → app.
	Upstream Side = "upstream"
)

// Options tune Pipe. The zero value is usable.
type Options struct {
	// CloseGrace is how long the other direction may go on after one
	// ended cleanly. Zero: DefaultCloseGrace.
	CloseGrace time.Duration
	// Close closes both connections. It is called when a direction fails,
	// when the grace runs out, and before Pipe returns; Pipe calls it at
	// most once. It must not block on the peers: a TLS connection's
	// socket should be closed directly, since tls.Conn.Close first tries
	// to send close_notify. Nil: closes both sockets that way.
	Close func()
	// Logger gets a debug line for a direction that ended with an error
	// other than the connection being closed. Nil: discard.
	Logger *slog.Logger
}

// Result is what Pipe did.
type Result struct {
	// In counts the bytes copied from the app to the upstream (pending
	// ones included), Out those from the upstream to the app.
	In, Out int64
	// ClosedFirst is the side whose direction ended first: the side that
	// closed, or failed.
	ClosedFirst Side
	// Err is the first error other than a closed connection, nil when
	// both directions ended cleanly or by being closed.
	Err error
	// Duration is how long the copy lasted.
	Duration time.Duration
}

// direction is the outcome of one direction of the copy.
type direction struct {
	from Side
	n    int64
	err  error
}

// Pipe copies bytes between app and upstream, untouched, until both
// directions end, and closes both before it returns: Start, waited for.
func Pipe(app, upstream net.Conn, fromApp, fromUpstream []byte, opts Options) Result {
	done := make(chan Result, 1)
	Start(app, upstream, fromApp, fromUpstream, opts, func(r Result) { done <- r })
	return <-done
}

// Start copies bytes between app and upstream, untouched, until both
// directions end, closes both, and then calls done with what it did, on
// the goroutine of the direction that ended last. It returns at once:
// each direction runs on a goroutine of its own, and the caller's may
// end. Thousands of sessions sit idle in a read, and a session goroutine
// whose stack grew in the upstream TLS handshake would otherwise wait
// beside them for hours; the two fresh goroutines' stacks are small.
//
// fromApp (bytes the app pipelined after its login, already read from it)
// goes to the upstream first, fromUpstream (bytes the upstream sent after
// its reply to the login) to the app first. Deadlines on both connections
// are cleared: there is none during the copy.
//
// When one direction ends cleanly (EOF) the end is passed on as a
// half-close of the other connection (close_notify for TLS), and the other
// direction gets CloseGrace to finish; when one fails, both are closed at
// once.
func Start(app, upstream net.Conn, fromApp, fromUpstream []byte, opts Options, done func(Result)) {
	p := newPiper(app, upstream, opts)
	p.start, p.done = time.Now(), done
	app.SetDeadline(time.Time{})
	upstream.SetDeadline(time.Time{})
	go p.run(App, upstream, app, fromApp)
	go p.run(Upstream, app, upstream, fromUpstream)
}

// run is one direction: from src to dst. The second direction to end
// finishes the copy.
func (p *piper) run(from Side, dst io.Writer, src io.Reader, pending []byte) {
	n, err := copyPending(dst, src, pending)
	d := direction{from, n, err}
	p.ended(d)
	p.mu.Lock()
	p.dirs = append(p.dirs, d)
	last := len(p.dirs) == 2
	p.mu.Unlock()
	if !last {
		return
	}
	p.finish()
	r := Result{ClosedFirst: p.first.from, Duration: time.Since(p.start)}
	for _, d := range append([]direction{p.first}, p.dirs...) {
		switch d.from {
		case App:
			r.In = d.n
		case Upstream:
			r.Out = d.n
		}
		if r.Err == nil && d.err != nil && !errors.Is(d.err, net.ErrClosed) {
			r.Err = d.err
		}
	}
	p.done(r)
}

// piper holds what the two directions share.
type piper struct {
	app, upstream net.Conn
	grace         time.Duration
	close         func()
	log           *slog.Logger

	start time.Time
	done  func(Result)

	closeOnce sync.Once
	endOnce   sync.Once
	first     direction   // set in endOnce
	timer     *time.Timer // set in endOnce

	mu   sync.Mutex
	dirs []direction // the directions that have ended
}

func newPiper(app, upstream net.Conn, opts Options) *piper {
	p := &piper{app: app, upstream: upstream, grace: opts.CloseGrace, close: opts.Close, log: opts.Logger}
	if p.grace <= 0 {
		p.grace = DefaultCloseGrace
	}
	if p.close == nil {
		p.close = func() {
			closeSocket(app)
			closeSocket(upstream)
		}
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

// closeBoth runs Close once. A concurrent caller waits until it has
// returned (sync.Once), which is how finish joins a grace timer that fired.
func (p *piper) closeBoth() { p.closeOnce.Do(p.close) }

// ended runs for each direction as it ends. The first one closes both on an
// error, or else passes its clean EOF on as a half-close, and starts the
// grace timer for the other direction.
func (p *piper) ended(d direction) {
	if d.err != nil && !errors.Is(d.err, net.ErrClosed) {
		p.log.Debug("copy ended with an error", "from", string(d.from), "err", d.err)
	}
	p.endOnce.Do(func() {
		p.first = d
		if d.err != nil {
			p.closeBoth()
			return
		}
		// The timer is armed before the half-close, which may itself
		// wait up to the TLS stack's own bound for a peer that does not
		// read.
		p.timer = time.AfterFunc(p.grace, p.closeBoth)
		if d.from == App {
			closeWrite(p.upstream)
		} else {
			closeWrite(p.app)
		}
	})
}

// finish stops the grace timer and closes both connections; if the timer
// has fired, closeBoth waits for its Close to return.
func (p *piper) finish() {
	if p.timer != nil {
		p.timer.Stop()
	}
	p.closeBoth()
}

// copyPending writes pending, then copies src to dst until src ends (a nil
// error) or either side fails. A read that fills the small buffer switches
// to a pooled one of midBuffer, a read that fills most of that to one of
// bigBuffer; a short read gives it back. From a TLS connection
// on a RecordConn, the records already here in full are read before the
// write, so that a stream of 16 KiB records goes out in writes of up to
// bigBuffer.
func copyPending(dst io.Writer, src io.Reader, pending []byte) (int64, error) {
	records := tlsRecords(src)
	var n int64
	if len(pending) > 0 {
		m, err := dst.Write(pending)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	small := make([]byte, smallBufferSize)
	buf := small
	var pooled *[]byte // buf when it is pooled
	defer func() {
		if pooled != nil {
			putBuffer(pooled)
		}
	}()
	for {
		m, rerr := src.Read(buf)
		for records != nil && rerr == nil && len(buf)-m >= maxPlaintext && records.Ready() {
			var k int
			k, rerr = src.Read(buf[m:])
			m += k
		}
		if m > 0 {
			w, err := dst.Write(buf[:m])
			n += int64(w)
			if err != nil {
				return n, err
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
		switch {
		case pooled == nil && m == len(buf):
			pooled = getBuffer(false)
			buf = *pooled
		case len(buf) == midBuffer && streams(len(buf), m):
			putBuffer(pooled)
			pooled = getBuffer(true)
			buf = *pooled
		case pooled != nil && m < smallBufferSize:
			putBuffer(pooled)
			pooled, buf = nil, small
		}
	}
}

// closeWrite half-closes c (for TLS: sends close_notify, bounded by the TLS
// stack) or, if c cannot, leaves it to the final close.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// closeSocket closes c without a TLS close_notify, which could block on a
// peer that does not read: a tls.Conn's underlying connection is closed.
func closeSocket(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	c.Close()
}
