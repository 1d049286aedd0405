package splice

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"syscall"
)

const (
	// recordHeaderLen is a TLS record's header: content type, legacy
	// version and length (RFC 8446 §5.1, RFC 5246 §6.2.1).
	recordHeaderLen = 5
	// maxPlaintext is the most plaintext one TLS record carries (2^14).
	maxPlaintext = 16 << 10
	// bulkRecord is the size from which a record that is already here in
	// full is read at once (see RecordConn.Ready): only bulk data comes in
	// records this large; a post-handshake message (a session ticket, a
	// key update), which crypto/tls handles inside Read and after which it
	// waits for the next record, never does.
	bulkRecord = 4 << 10
)

// smallRead is the read buffer of a RecordConn that is not streaming: a
// login's replies, IDLE's updates, SMTP replies.
const smallRead = 4 << 10

// smallReadBuffers hold the read buffers of RecordConns that hold bytes
// not yet handed to crypto/tls and are not streaming; a RecordConn that
// waits for data holds none. A pooled buffer (midBuffer, then bigBuffer)
// is taken only once the last record was bulk data: the thousands of
// short reads of logins would otherwise each take one, churning the heap
// with large objects.
var smallReadBuffers = sync.Pool{New: func() any { b := make([]byte, smallRead); return &b }}

// RecordConn is the socket under an upstream TLS connection. It reads the
// socket in chunks of up to bigBuffer and hands crypto/tls one TLS record
// at a time, never bytes of the next one, so that it knows whether the
// next record is already here in full (Ready): the copy then reads it too
// before it writes to the app (Pipe), and a FETCH of a large message
// streams in writes of up to bigBuffer rather than of one 16 KiB record each. The
// bytes are untouched; only the size of each read changes.
//
// It waits for data without a buffer (the read happens in the socket's
// RawConn callback once it is readable), so the thousands of idle sessions
// in an IMAP IDLE hold none. On a socket that is not a syscall.Conn, and
// off Unix, it passes reads straight through and Ready is always false.
type RecordConn struct {
	net.Conn
	raw syscall.RawConn // nil: pass-through

	buf  *[]byte // from smallReadBuffers or getBuffer while it holds bytes; nil otherwise
	r, w int     // the bytes of buf not handed out yet
	err  error   // the socket's read error, returned once buf is empty

	// The framing of the bytes handed out so far: the current record's
	// header bytes handed out (0 at a record boundary), its header, and
	// its body bytes still to hand out once the header is complete.
	nhdr int
	hdr  [recordHeaderLen]byte
	body int
	// streaming: the last record header handed out announced bulk data
	// (see bulkRecord), so the next read takes a pooled buffer.
	streaming bool
	// filled: the last read of the socket showed a stream of bulk data
	// (see streams), so the next streaming read takes a bigBuffer.
	filled bool
}

// NewRecordConn wraps the socket c that a TLS client is about to run on.
func NewRecordConn(c net.Conn) *RecordConn {
	return &RecordConn{Conn: c, raw: rawConnOf(c)}
}

// NetConn returns the socket, for code that looks for the TCP connection
// under its wrappers (keepalive).
func (c *RecordConn) NetConn() net.Conn { return c.Conn }

// Read hands out buffered bytes, up to the end of the current TLS record,
// after reading the socket if none are buffered.
func (c *RecordConn) Read(p []byte) (int, error) {
	if c.raw == nil {
		return c.Conn.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if c.r == c.w {
		if err := c.fill(); err != nil {
			return 0, err
		}
		c.filled = streams(cap(*c.buf), c.w)
	}
	b := (*c.buf)[c.r:c.w]
	n := copy(p, b[:min(len(b), c.toRecordEnd(b))])
	c.handedOut(p[:n])
	c.r += n
	if c.r == c.w {
		c.release()
	}
	return n, nil
}

// Ready reports whether the next TLS record is here in full and is bulk
// data (at least bulkRecord): a Read of the tls.Conn on top then returns
// its data without waiting for the network. It holds only between two
// reads of that tls.Conn, on the goroutine that reads it.
func (c *RecordConn) Ready() bool {
	if c.raw == nil || c.nhdr != 0 || c.w-c.r < recordHeaderLen {
		return false
	}
	b := (*c.buf)[c.r:c.w]
	n := recordLen(b)
	return n >= bulkRecord && len(b) >= recordHeaderLen+n
}

// toRecordEnd is how many of the buffered bytes b belong to the current
// record: all of b while the rest of its header has not arrived.
func (c *RecordConn) toRecordEnd(b []byte) int {
	if c.nhdr == recordHeaderLen {
		return c.body
	}
	need := recordHeaderLen - c.nhdr
	if len(b) < need {
		return len(b)
	}
	var h [recordHeaderLen]byte
	copy(h[:], c.hdr[:c.nhdr])
	copy(h[c.nhdr:], b[:need])
	return need + recordLen(h[:])
}

// handedOut follows the framing through the bytes b just handed out.
func (c *RecordConn) handedOut(b []byte) {
	for len(b) > 0 {
		if c.nhdr < recordHeaderLen {
			k := copy(c.hdr[c.nhdr:], b)
			c.nhdr += k
			b = b[k:]
			if c.nhdr == recordHeaderLen {
				c.body = recordLen(c.hdr[:])
				c.streaming = c.body >= bulkRecord
				if c.body == 0 {
					c.nhdr = 0
				}
			}
			continue
		}
		k := min(len(b), c.body)
		c.body -= k
		b = b[k:]
		if c.body == 0 {
			c.nhdr = 0
		}
	}
}

// recordLen is the length field of the record header at the start of b.
func recordLen(b []byte) int { return int(b[3])<<8 | int(b[4]) }

// release gives the empty buffer back.
func (c *RecordConn) release() {
	if c.buf != nil {
		if cap(*c.buf) == smallRead {
			smallReadBuffers.Put(c.buf)
		} else {
			putBuffer(c.buf)
		}
		c.buf = nil
	}
	c.r, c.w = 0, 0
}

// tlsRecords returns the RecordConn under src when src is a TLS connection
// on one, else nil.
func tlsRecords(src io.Reader) *RecordConn {
	tc, ok := src.(*tls.Conn)
	if !ok {
		return nil
	}
	rc, _ := tc.NetConn().(*RecordConn)
	return rc
}
