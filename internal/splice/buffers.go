package splice

import "sync"

// The pooled buffers of streaming data, in two steps. A direction (and a
// RecordConn) takes the middle one when a small read filled its small
// buffer, and the large one only when a read filled most of the middle
// one too: a stream of bulk data. Thousands of sessions that each get a
// response of a few KiB at once (a FETCH of flags, a short message) hold
// 64 KiB each for that moment, not 256.
//
// A FETCH or RETR of a large message is read from the upstream socket and
// written to the app 256 KiB at a time: sixteen full TLS records, a
// sixteenth of the reads and writes of one record at a time. Measured on a
// 2-core VM, 256 KiB took 9% less of the relay's CPU per GB fetched than
// 64 KiB (0.60-0.64 s against 0.68-0.69); 128 KiB saved nothing
// measurable, 512 KiB and 1 MiB no more than 256.
const (
	midBuffer = 64 << 10
	bigBuffer = 256 << 10
)

// midBuffers and bigBuffers are caches, not state: any buffer in them is as
// good as a new one.
var (
	midBuffers = sync.Pool{New: func() any { b := make([]byte, midBuffer); return &b }}
	bigBuffers = sync.Pool{New: func() any { b := make([]byte, bigBuffer); return &b }}
)

// getBuffer returns a pooled buffer of size midBuffer or bigBuffer.
func getBuffer(big bool) *[]byte {
	if big {
		return bigBuffers.Get().(*[]byte)
	}
	return midBuffers.Get().(*[]byte)
}

// putBuffer gives b, from getBuffer, back to its pool.
func putBuffer(b *[]byte) {
	if cap(*b) == bigBuffer {
		bigBuffers.Put(b)
	} else {
		midBuffers.Put(b)
	}
}

// streams reports whether a read of m bytes into a pooled buffer of size n
// shows a stream of bulk data, for which the next read takes a bigBuffer:
// it was into one already, or it filled most of a midBuffer (but for less
// than a TLS record's room: the copy's read-ahead stops once less than that
// is left, so a stream of records never fills a buffer to the byte). The
// copy and RecordConn both step up by it.
func streams(n, m int) bool { return n == bigBuffer || n == midBuffer && n-m < maxPlaintext }
