package splice

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"testing"
	"time"
)

// TestRecordConnFraming writes TLS-framed records (header and body, not
// encrypted: the framing is all RecordConn reads) in odd pieces, and reads
// them back through a RecordConn with reads of odd sizes: the bytes are
// untouched, no read crosses the end of a record, and Ready says yes only
// for a large record that is here in full.
func TestRecordConnFraming(t *testing.T) {
	server, client := connPair(t, false)
	rc := NewRecordConn(client)
	if rc.raw == nil {
		t.Skip("no RawConn on this platform: RecordConn passes reads through")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var ends []int // offsets where records end
	for range 200 {
		n := rng.IntN(3) * rng.IntN(17000) // a third empty, the rest up to 17000
		rec := append([]byte{23, 3, 3, byte(n >> 8), byte(n)}, randomBytes(uint64(n), n)...)
		stream = append(stream, rec...)
		ends = append(ends, len(stream))
	}
	go func() {
		rest := stream
		for len(rest) > 0 {
			k := min(len(rest), 1+rng.IntN(40000))
			server.Write(rest[:k])
			rest = rest[k:]
		}
		server.(*net.TCPConn).CloseWrite()
	}()
	client.SetReadDeadline(time.Now().Add(waitLimit))
	next := 0 // index in ends of the record being read
	readRng := rand.New(rand.NewPCG(3, 4))
	readThrough(t, rc, stream, func() int { return 1 + readRng.IntN(20000) }, func(n int, got []byte) {
		for next < len(ends) && ends[next] < len(got) {
			if ends[next] > len(got)-n {
				t.Fatalf("a read of %d bytes ended at %d, past the end of a record at %d", n, len(got), ends[next])
			}
			next++
		}
	})
}

// readThrough reads rc to its end in reads of size() bytes each, calling
// each after every read with its length and all read so far, and checks
// that what came is stream, untouched, and that rc holds no read buffer
// at its end.
func readThrough(t *testing.T, rc *RecordConn, stream []byte, size func() int, each func(n int, got []byte)) {
	t.Helper()
	var got []byte
	for {
		p := make([]byte, size())
		n, err := rc.Read(p)
		got = append(got, p[:n]...)
		each(n, got)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, stream) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(stream))
	}
	if rc.buf != nil {
		t.Error("a RecordConn at its end still holds a read buffer")
	}
}

// TestRecordConnBufferSteps: with a stream of full records waiting in the
// socket, a RecordConn reads first into its small buffer, then (the
// records being bulk data) into a midBuffer, and only once that filled
// into a bigBuffer; a RecordConn that has handed everything out
// holds none.
func TestRecordConnBufferSteps(t *testing.T) {
	server, client := connPair(t, false)
	rc := NewRecordConn(client)
	if rc.raw == nil {
		t.Skip("no RawConn on this platform: RecordConn passes reads through")
	}
	client.(*net.TCPConn).SetReadBuffer(2 << 20)
	server.(*net.TCPConn).SetWriteBuffer(2 << 20)
	var stream []byte
	for range 30 {
		stream = append(stream, 23, 3, 3, byte(maxPlaintext>>8), byte(maxPlaintext&0xff))
		stream = append(stream, randomBytes(7, maxPlaintext)...)
	}
	client.SetDeadline(time.Now().Add(waitLimit))
	server.SetDeadline(time.Now().Add(waitLimit))
	if _, err := server.Write(stream); err != nil {
		t.Fatal(err)
	}
	server.(*net.TCPConn).CloseWrite()
	time.Sleep(100 * time.Millisecond) // all of it in the client's socket
	var steps []int
	readThrough(t, rc, stream, func() int { return maxPlaintext + recordHeaderLen }, func(n int, got []byte) {
		if len(got) == n && n > smallRead {
			t.Errorf("the first read took %d bytes: not through the small buffer", n)
		}
		if rc.buf != nil && (len(steps) == 0 || steps[len(steps)-1] != cap(*rc.buf)) {
			steps = append(steps, cap(*rc.buf))
		}
	})
	// The small buffer was handed out whole by the first read and given
	// back at once; the pooled ones are seen held between reads.
	want := []int{midBuffer, bigBuffer}
	if len(steps) < len(want) || !slices.Equal(steps[:len(want)], want) {
		t.Errorf("buffers taken %v, want %v first", steps, want)
	}
}

// TestRecordConnDoesNotHold sends, through Pipe, a large FETCH-like
// stream and then a short line, and keeps the connection open: the app
// gets every byte, the short line included, without the upstream sending
// more or closing. Coalescing records must never hold back what has come.
func TestRecordConnDoesNotHold(t *testing.T) {
	for _, size := range []int{1, 16 << 10, 16<<10 + 1, 100 << 10, 1 << 20} {
		e := newEnds(t, true)
		wait := startPipe(e, nil, nil, Options{})
		blob := randomBytes(uint64(size), size)
		tail := []byte("a OK FETCH completed\r\n")
		go func() {
			e.upPeer.Write(blob)
			e.upPeer.Write(tail)
		}()
		want := append(append([]byte{}, blob...), tail...)
		got := make([]byte, len(want))
		e.appPeer.SetReadDeadline(time.Now().Add(waitLimit))
		if _, err := io.ReadFull(e.appPeer, got); err != nil {
			t.Fatalf("%d bytes and a line: %v", size, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%d bytes and a line: the app got other bytes", size)
		}
		e.appPeer.Close()
		e.upPeer.Close()
		wait(t)
	}
}

// TestRecordConnDeadline: a read deadline on the TLS connection ends a
// wait as on a bare socket (the upstream logins rely on it), and the
// connection goes on working after it.
func TestRecordConnDeadline(t *testing.T) {
	server, client := connPair(t, true)
	client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := client.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v, want a timeout", err)
	}
	client.SetReadDeadline(time.Now().Add(waitLimit))
	go server.Write([]byte("hello"))
	b := make([]byte, 5)
	if _, err := io.ReadFull(client, b); err != nil || string(b) != "hello" {
		t.Fatalf("read after a timeout: %q, %v", b, err)
	}
	rc := client.(*tls.Conn).NetConn().(*RecordConn)
	if rc.buf != nil {
		t.Error("an idle RecordConn holds a read buffer")
	}
}

// TestRecordConnClose: closing the connection ends a read waiting on it
// with net.ErrClosed, as Pipe expects.
func TestRecordConnClose(t *testing.T) {
	_, client := connPair(t, true)
	done := make(chan error, 1)
	go func() {
		_, err := client.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	closeSocket(client)
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read of a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Close did not end the read")
	}
}
