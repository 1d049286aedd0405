package splice

import "sync"

// The pooled buffers of streaming data, in two steps. A direction (and a
// RecordConn) takes the middle one when a small read filled its small
// buffer, and the large one only when a read filled most of the middle
// one too: a stream of bulk data. Thousands of sessions that each get a
// response of a few KiB at once (a FETCH of flags, a short message) hold
// 64 KiB each for that moment, not 256; a FETCH of a large message reads
// and writes 256 KiB at a time, which took 9% less of the relay's CPU per
// GB than 64 KiB (see readChunk).
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

// filledMost reports whether a read of m bytes into a buffer of size n
// filled it but for less than a TLS record's room: the copy's read-ahead
// stops once less than that is left, so a stream of records never fills
// a buffer to the byte.
func filledMost(m, n int) bool { return n-m < maxPlaintext }
