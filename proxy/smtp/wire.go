package smtp

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// The wire sits between the client's socket (or the TLS connection on it)
// and go-smtp, and owns reading from the client. go-smtp v0.25.1 cannot be
// trusted with it:
//
//   - its ReadTimeout is a deadline set once per command line, so a DATA
//     body had 5 minutes in total, and a partial line was executed when the
//     deadline hit (bufio.Reader.ReadLine returns the bytes it has and drops
//     the timeout error), after which the deadline was armed again: a client
//     sending a byte every few seconds held the connection for ever;
//   - after a read error inside DATA it answers and reads commands again
//     from the same buffered stream, so the rest of a body became commands;
//   - handleBdat ignores a short copy: a chunk cut by the client's EOF was
//     passed to Data as a complete message;
//   - its DATA reader drops the CR of a line that starts with ".\r" and
//     another byte (".\rX" became "X", RFC 5321 §4.5.2 makes it "\rX").
//
// So the wire hands go-smtp one command line at a time, and only complete
// ones: go-smtp's buffer never holds more than the command it is handling,
// and a line is checked (cross-protocol HTTP, STARTTLS, BDAT size) before
// go-smtp sees it. A DATA body is read by the session straight from the wire
// (bodyReader, which unstuffs per RFC 5321 §4.5.2); go-smtp's own reader is
// then given only the end marker. A BDAT chunk is passed through by count.
// Every read has an idle deadline (CommandTimeout between commands,
// DataTimeout inside a message) and a command line must be complete within
// LineTimeout of its first byte. Any failure the wire sees ends the
// connection: it writes its own 421 reply, closes the socket, and every
// later read fails, so go-smtp never resumes.
//
// STARTTLS is performed here too (go-smtp would put a *tls.Conn between
// the wire and itself); the upgraded connection is handed to a fresh go-smtp
// connection (Server.handoff), which is how RFC 3207 §4.2's reset of all
// state is kept.

// wireMode is what go-smtp reads next.
type wireMode int

const (
	modeCommand wireMode = iota // command lines, handed over one at a time
	modeChunk                   // a BDAT chunk: raw bytes, by count
	modeBody                    // a DATA body, read by the session through bodyReader
	modeBodyEnd                 // the body is over: go-smtp is given the end marker
)

const (
	// smallBufSize holds a command line (maxCommandLine) between messages.
	smallBufSize = 4096
	// bodyBufSize is the read buffer while a DATA body streams.
	bodyBufSize = 32 << 10
)

// bodyBuffers are the read buffers of DATA bodies in progress.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, bodyBufSize); return &b }}

// httpRequestLine is an HTTP request line ("GET / HTTP/1.1"): a browser or
// a proxy tricked into talking to the SMTP port (cross-protocol requests).
var httpRequestLine = regexp.MustCompile(`^[A-Z]+ \S+ HTTP/\d`)

// wire is one client connection. The reading goroutine (go-smtp's, or the
// session's Data on it) owns the fields above mu.
type wire struct {
	srv *Server
	raw net.Conn // the socket: deadlines act on it
	log *slog.Logger

	conn          net.Conn // the transport: raw, or the TLS connection over it
	needHandshake bool     // implicit TLS: the handshake is still to do
	buf           []byte
	small         []byte // buf between messages
	r, w          int
	mode          wireMode
	out           int   // bytes of the current command line not yet handed over
	chunk         int64 // bytes of the BDAT chunk go-smtp still reads
	nextChunk     int64 // chunk announced by the line being handed over
	lineAt        time.Time
	lastRead      time.Time
	end           []byte // end marker still to give go-smtp (modeBodyEnd)
	body          bodyReader
	bodyBuf       *[]byte // pooled buffer while modeBody
	err           error   // sticky: every later read fails with it

	cur    atomic.Pointer[view] // the go-smtp connection being served
	closed atomic.Bool
	cut    atomic.Bool // the client ended in the middle of a message

	mu       sync.Mutex // guards the fields below and the switch of conn
	isTLS    bool
	waiting  bool // blocked reading between commands, nothing pending
	stopping bool // the server is shutting down
	drain    bool // Shutdown found this connection idle: it goes at once
}

func newWire(s *Server, c net.Conn) *wire {
	w := &wire{srv: s, raw: c, conn: c, small: make([]byte, smallBufSize)}
	w.buf = w.small
	if tc, ok := c.(*tls.Conn); ok {
		w.raw, w.isTLS, w.needHandshake = tc.NetConn(), true, true
	}
	w.log = s.log.With("remote", w.raw.RemoteAddr().String())
	w.cur.Store(&view{w: w})
	return w
}

// TLS reports whether the connection is encrypted.
func (w *wire) TLS() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.isTLS
}

// read is go-smtp's read of the client.
func (w *wire) read(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if err := w.handshake(); err != nil {
		return 0, err
	}
	switch w.mode {
	case modeChunk:
		return w.readChunk(p)
	case modeBody:
		// go-smtp reads what the session left of the body, to discard it.
		if err := w.body.drain(); err != nil {
			return 0, err
		}
		fallthrough
	case modeBodyEnd:
		n := copy(p, w.end)
		w.end = w.end[n:]
		if len(w.end) == 0 {
			w.mode = modeCommand
		}
		return n, nil
	}
	return w.readCommand(p)
}

// handshake completes an implicit TLS handshake before the first exchange,
// bounded by tlsHandshakeTimeout.
func (w *wire) handshake() error {
	if !w.needHandshake {
		return nil
	}
	w.needHandshake = false
	w.raw.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	err := w.conn.(*tls.Conn).Handshake()
	// go-smtp set a write deadline for its greeting, which comes next.
	w.raw.SetReadDeadline(time.Time{})
	w.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err != nil {
		w.log.Info("TLS handshake failed", "err", err)
		w.closeTransport()
		w.err = &closedError{"TLS handshake failed"}
		return w.err
	}
	return nil
}

// readCommand hands go-smtp the next complete command line.
func (w *wire) readCommand(p []byte) (int, error) {
	if w.out == 0 {
		n, err := w.nextLine()
		if err != nil {
			return 0, err
		}
		if err := w.inspect(n); err != nil {
			return 0, err
		}
		w.out = n
	}
	n := copy(p, w.buf[w.r:w.r+w.out])
	w.r += n
	w.out -= n
	if w.out == 0 {
		// What is left was read with the line just handed over.
		w.lineAt = time.Time{}
		if w.r < w.w {
			w.lineAt = w.lastRead
		}
		if w.nextChunk > 0 {
			w.mode, w.chunk = modeChunk, w.nextChunk
		}
		w.nextChunk = 0
	}
	return n, nil
}

// nextLine returns the length of the next complete line in buf, reading
// until there is one.
func (w *wire) nextLine() (int, error) {
	for {
		if i := bytes.IndexByte(w.buf[w.r:w.w], '\n'); i >= 0 {
			if i+1 > maxCommandLine {
				return 0, w.fail(errLineTooLong, "command line too long")
			}
			return i + 1, nil
		}
		if w.w-w.r >= maxCommandLine {
			return 0, w.fail(errLineTooLong, "command line too long")
		}
		if err := w.fillCommand(); err != nil {
			return 0, err
		}
	}
}

// fillCommand reads more of a command line. The deadline is the idle bound,
// or the end of LineTimeout from the line's first byte when that is sooner.
// It is set under mu so that Shutdown's wake-up cannot be overwritten.
func (w *wire) fillCommand() error {
	partial := w.w > w.r
	deadline := time.Now().Add(w.srv.CommandTimeout)
	if partial {
		if d := w.lineAt.Add(w.srv.LineTimeout); d.Before(deadline) {
			deadline = d
		}
	}
	w.mu.Lock()
	if w.drain {
		w.mu.Unlock()
		return w.fail(errShuttingDown, "shutting down")
	}
	// While shutting down, a session that finished its transaction (or
	// has none) gets a moment for its next command (QUIT, usually), then
	// goes.
	grace := w.stopping && !partial && !w.cur.Load().txOpen.Load()
	if d := time.Now().Add(shutdownIdleGrace); grace && d.Before(deadline) {
		deadline = d
	}
	w.waiting = !partial
	w.raw.SetReadDeadline(deadline)
	w.mu.Unlock()

	err := w.fill()

	w.mu.Lock()
	w.waiting = false
	drain := w.drain || grace
	w.mu.Unlock()
	switch {
	case err == nil:
		if !partial && w.w > w.r {
			w.lineAt = w.lastRead
		}
		return nil
	case drain && isTimeout(err):
		return w.fail(errShuttingDown, "shutting down")
	case isTimeout(err) && partial:
		// The partial line is dropped, never executed.
		return w.fail(errLineTimeout, "command line not completed in time")
	case isTimeout(err):
		return w.fail(errIdleTimeout, "idle timeout")
	case errors.Is(err, io.EOF) && !partial:
		w.closeTransport()
		w.err = io.EOF
		return io.EOF
	}
	w.log.Debug("client connection ended", "partial_line_bytes", w.w-w.r, "err", err)
	w.closeTransport()
	w.err = &closedError{"read failed"}
	return w.err
}

// fill reads more input after what buf holds. Bytes that came with an
// error are kept; the error comes back on the next read.
func (w *wire) fill() error {
	if w.r > 0 {
		w.w = copy(w.buf, w.buf[w.r:w.w])
		w.r = 0
	}
	n, err := w.conn.Read(w.buf[w.w:])
	if n > 0 {
		w.w += n
		w.lastRead = time.Now()
		return nil
	}
	return err
}

// inspect acts on a complete command line before go-smtp sees it: an HTTP
// request ends the connection, STARTTLS is performed here, and a BDAT
// line's chunk is noted so that it is passed through raw.
func (w *wire) inspect(n int) error {
	line := bytes.TrimRight(w.buf[w.r:w.r+n], "\r\n")
	if !mayMatter(line) {
		return nil
	}
	text := string(line)
	if looksLikeHTTP(text) {
		// Like Postfix: drop the connection without a word.
		w.log.Warn("HTTP request on the SMTP port: connection closed (cross-protocol request)",
			"method", strings.SplitN(text, " ", 2)[0])
		w.closeTransport()
		w.err = &closedError{"HTTP request"}
		return w.err
	}
	cmd, arg := parseCommand(text)
	switch cmd {
	case "STARTTLS":
		if w.srv.tlsConfig != nil && !w.TLS() {
			return w.startTLS(n)
		}
	case "BDAT":
		if size, ok := bdatSize(arg); ok {
			w.nextChunk = size
		}
	}
	return nil
}

// mayMatter is a cheap first look at a command line: only STARTTLS, BDAT
// and what may be an HTTP request need the wire's attention.
func mayMatter(line []byte) bool {
	if len(line) < 4 {
		return false
	}
	switch line[0] | 0x20 {
	case 's', 'b', 'c', 'g', 'p':
		return true
	}
	return bytes.Contains(line, []byte(" HTTP/"))
}

// looksLikeHTTP reports whether a command line is an HTTP request: a
// request line, or a line that starts with one of the methods Postfix
// refuses by default (smtpd_forbidden_commands: CONNECT, GET, POST) and a
// space. The space keeps a base64 AUTH response ("POST" is valid base64)
// from matching.
func looksLikeHTTP(line string) bool {
	if httpRequestLine.MatchString(line) {
		return true
	}
	word, _, spaced := strings.Cut(line, " ")
	switch strings.ToUpper(word) {
	case "CONNECT", "GET", "POST":
		return spaced
	}
	return false
}

// parseCommand splits a line into command and argument exactly as go-smtp
// v0.25.1's parseCmd does, so the wire and go-smtp agree on what a line is.
func parseCommand(line string) (cmd, arg string) {
	switch l := len(line); {
	case strings.HasPrefix(strings.ToUpper(line), "STARTTLS"):
		return "STARTTLS", ""
	case l < 4, l == 5:
		return "", ""
	case l == 4:
		return strings.ToUpper(line), ""
	case line[4] != ' ':
		return "", ""
	}
	return strings.ToUpper(line[:4]), strings.TrimSpace(line[5:])
}

// bdatSize returns the chunk size of a BDAT argument when go-smtp's
// handleBdat accepts its syntax (and so reads the chunk, whatever it then
// answers).
func bdatSize(arg string) (int64, bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 || (len(f) == 2 && !strings.EqualFold(f[1], "LAST")) {
		return 0, false
	}
	size, err := strconv.ParseUint(f[0], 10, 32)
	return int64(size), err == nil
}

// readChunk passes a BDAT chunk to go-smtp. A chunk cut short by the client
// ends the connection: go-smtp would take the short copy for the whole.
func (w *wire) readChunk(p []byte) (int, error) {
	if int64(len(p)) > w.chunk {
		p = p[:w.chunk]
	}
	var n int
	if w.r < w.w {
		n = copy(p, w.buf[w.r:w.w])
		w.r += n
	} else {
		w.raw.SetReadDeadline(time.Now().Add(w.srv.DataTimeout))
		var err error
		n, err = w.conn.Read(p)
		if n == 0 && err != nil {
			w.failMessage(err)
			return 0, w.err
		}
	}
	w.chunk -= int64(n)
	if w.chunk == 0 {
		w.mode = modeCommand
	}
	return n, nil
}

// failMessage ends the connection after the client failed (err) in the
// middle of a message, with a reply that says which way, and returns the
// reply.
func (w *wire) failMessage(err error) *smtp.SMTPError {
	w.cut.Store(true)
	if isTimeout(err) {
		w.fail(errClientTimeout, "client timed out in the middle of a message")
		return errClientTimeout
	}
	w.fail(errClientEnded, "client connection ended in the middle of a message")
	return errClientEnded
}

// startTLS performs STARTTLS for the line of n bytes at buf[r:] (RFC 3207).
// Bytes the client sent after the command are taken as the start of the
// TLS handshake, never as commands. The upgraded connection is handed to a
// new go-smtp connection; the old one reads EOF and ends.
func (w *wire) startTLS(n int) error {
	early := bytes.Clone(w.buf[w.r+n : w.w])
	w.r, w.w = 0, 0
	w.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := io.WriteString(w.conn, "220 2.0.0 Ready to start TLS\r\n"); err != nil {
		w.closeTransport()
		w.err = &closedError{"write failed"}
		return w.err
	}
	tc := tls.Server(&prefixConn{Conn: w.raw, prefix: early}, w.srv.tlsConfig)
	w.raw.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	err := tc.Handshake()
	w.raw.SetDeadline(time.Time{})
	if err != nil {
		w.log.Info("STARTTLS handshake failed", "err", err)
		w.closeTransport()
		w.err = &closedError{"TLS handshake failed"}
		return w.err
	}
	w.mu.Lock()
	w.conn, w.isTLS = tc, true
	w.mu.Unlock()
	w.lineAt = time.Time{}
	// RFC 3207 §4.2: after the handshake the client speaks first, so the
	// new go-smtp connection's greeting is not sent.
	next := &view{w: w, greeting: true}
	w.cur.Store(next)
	if !w.srv.handoff.push(next) {
		return w.fail(errShuttingDown, "shutting down")
	}
	return io.EOF
}

// fail ends the connection with reply, written by the wire itself (go-smtp
// may be in the middle of a command and would otherwise answer something
// else). Every later read fails.
func (w *wire) fail(reply *smtp.SMTPError, why string) error {
	w.log.Info("closing the client connection", "reason", why, "reply", reply.Code)
	w.raw.SetWriteDeadline(time.Now().Add(writeTimeout))
	io.WriteString(w.conn, formatReply(reply))
	w.closeTransport()
	w.err = &closedError{why}
	return w.err
}

// write is go-smtp's write to the client.
func (w *wire) write(p []byte) (int, error) {
	if w.closed.Load() {
		return 0, net.ErrClosed
	}
	if err := w.handshake(); err != nil {
		return 0, err
	}
	return w.conn.Write(p)
}

// closeTransport closes the connection once; safe from any goroutine.
func (w *wire) closeTransport() error {
	if w.closed.Swap(true) {
		return nil
	}
	w.srv.forget(w)
	w.mu.Lock()
	c := w.conn
	w.mu.Unlock()
	return c.Close()
}

// shutdown marks the connection as shutting down. One idle now (waiting
// for a command, nothing pending, no transaction open) is woken at once and
// gets 421 errShuttingDown; others finish the command or transaction they
// are in, then get shutdownIdleGrace for their next command.
func (w *wire) shutdown() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopping = true
	if w.waiting && !w.cur.Load().txOpen.Load() {
		w.drain = true
		w.raw.SetReadDeadline(time.Unix(1, 0))
	}
}

// beginBody switches to reading a DATA body, which go-smtp has just asked
// for with 354. It returns nil when the wire is not right after a command
// line (then go-smtp's own reader is used).
func (w *wire) beginBody(limit int64) io.Reader {
	if w.mode != modeCommand || w.out != 0 || w.err != nil {
		return nil
	}
	w.mode = modeBody
	w.bodyBuf = bodyBuffers.Get().(*[]byte)
	n := copy(*w.bodyBuf, w.buf[w.r:w.w])
	w.buf, w.r, w.w = *w.bodyBuf, 0, n
	w.body = bodyReader{w: w, bol: true, limit: limit}
	return &w.body
}

// endBody is called when the body's end marker was read: go-smtp's reader
// is given the marker, and the body buffer goes back to the pool.
func (w *wire) endBody() {
	w.mode = modeBodyEnd
	w.end = dotCRLF
	small := w.small
	if len(small) < w.w-w.r {
		small = make([]byte, w.w-w.r)
	}
	n := copy(small, w.buf[w.r:w.w])
	bodyBuffers.Put(w.bodyBuf)
	w.bodyBuf = nil
	w.buf, w.r, w.w = small, 0, n
	w.lineAt = time.Time{}
	if n > 0 {
		w.lineAt = w.lastRead
	}
}

var dotCRLF = []byte(".\r\n")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func formatReply(r *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d %s\r\n", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)
}
