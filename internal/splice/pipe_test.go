package splice

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitLimit bounds every wait in these tests; reaching it is a failure.
const waitLimit = 10 * time.Second

// ends are the four sockets of a spliced session over loopback TCP: the
// relay's side of the app's connection (app) and the app itself (appPeer),
// the relay's connection to the upstream (up) and the upstream server
// (upPeer).
type ends struct {
	app, appPeer net.Conn
	up, upPeer   net.Conn
}

func newEnds(t testing.TB, useTLS bool) *ends {
	t.Helper()
	var e ends
	e.app, e.appPeer = connPair(t, useTLS)
	e.upPeer, e.up = connPair(t, useTLS)
	return &e
}

// connPair connects a client to a server over 127.0.0.1, with a verified
// TLS handshake when useTLS. Both are closed at the end of the test.
func connPair(t testing.TB, useTLS bool) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		client.Close()
		t.FailNow()
	}
	if useTLS {
		server, client = handshake(t, server, client)
	}
	t.Cleanup(func() {
		server.Close()
		client.Close()
	})
	return server, client
}

func handshake(t testing.TB, s, c net.Conn) (net.Conn, net.Conn) {
	t.Helper()
	lc := testutil.NewLocalCert(t)
	cert, err := tls.LoadX509KeyPair(lc.CertFile, lc.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ts := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	// The relay's upstream TLS runs on a RecordConn (upstream.Handshake).
	tc := tls.Client(NewRecordConn(c), lc.ClientTLS())
	deadline := time.Now().Add(waitLimit)
	ts.SetDeadline(deadline)
	tc.SetDeadline(deadline)
	serr := make(chan error, 1)
	go func() { serr <- ts.Handshake() }()
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-serr; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	// Pipe must clear deadlines itself; the peers' are cleared here.
	tc.SetDeadline(time.Time{})
	return ts, tc
}

// startPipe runs Pipe on its own goroutine; wait joins it.
func startPipe(e *ends, fromApp, fromUp []byte, opts Options) func(t testing.TB) Result {
	done := make(chan Result, 1)
	go func() { done <- Pipe(e.app, e.up, fromApp, fromUp, opts) }()
	return func(t testing.TB) Result {
		t.Helper()
		select {
		case r := <-done:
			return r
		case <-time.After(waitLimit):
			// Unblock Pipe so its goroutine ends with the test.
			closeSocket(e.app)
			closeSocket(e.up)
			<-done
			t.Fatal("Pipe did not return")
			return Result{}
		}
	}
}

// group runs functions on goroutines and joins them.
type group struct{ wg sync.WaitGroup }

func (g *group) Go(f func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
}

func (g *group) Wait() { g.wg.Wait() }

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	return b
}

// readAll reads c to its end, bounded in time.
func readAll(t testing.TB, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Errorf("read: %v", err)
	}
	return b
}

func halfClose(t testing.TB, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Errorf("CloseWrite: %v", err)
	}
}

func forBoth(t *testing.T, f func(t *testing.T, useTLS bool)) {
	t.Run("tcp", func(t *testing.T) { f(t, false) })
	t.Run("tls", func(t *testing.T) { f(t, true) })
}

// Megabytes go both ways at once, byte for byte, each after the bytes that
// were pending for it; the counts include the pending bytes.
func TestPipeBothWays(t *testing.T) {
	forBoth(t, func(t *testing.T, useTLS bool) {
		e := newEnds(t, useTLS)
		fromApp, fromUp := []byte("b SELECT INBOX\r\n"), []byte("* OK [ALERT] early bytes\r\n")
		toUp, toApp := randomBytes(1, 8<<20+17), randomBytes(2, 6<<20+5)
		wait := startPipe(e, fromApp, fromUp, Options{})

		var g group
		var gotUp, gotApp []byte
		g.Go(func() {
			if _, err := e.appPeer.Write(toUp); err != nil {
				t.Errorf("app write: %v", err)
			}
			halfClose(t, e.appPeer)
		})
		g.Go(func() {
			if _, err := e.upPeer.Write(toApp); err != nil {
				t.Errorf("upstream write: %v", err)
			}
			halfClose(t, e.upPeer)
		})
		g.Go(func() { gotUp = readAll(t, e.upPeer) })
		g.Go(func() { gotApp = readAll(t, e.appPeer) })
		g.Wait()
		r := wait(t)

		wantUp, wantApp := append(fromApp, toUp...), append(fromUp, toApp...)
		if sha256.Sum256(gotUp) != sha256.Sum256(wantUp) {
			t.Errorf("upstream got %d bytes differing from the %d sent (first %q)", len(gotUp), len(wantUp), head(gotUp))
		}
		if sha256.Sum256(gotApp) != sha256.Sum256(wantApp) {
			t.Errorf("app got %d bytes differing from the %d sent (first %q)", len(gotApp), len(wantApp), head(gotApp))
		}
		if r.In != int64(len(wantUp)) || r.Out != int64(len(wantApp)) || r.Err != nil {
			t.Errorf("result %+v, want in %d out %d and no error", r, len(wantUp), len(wantApp))
		}
	})
}

func head(b []byte) []byte { return b[:min(len(b), 32)] }

// The app half-closes (after LOGOUT): the upstream sees the end of its
// input and can still answer, which reaches the app; when the upstream
// closes, Pipe returns.
func TestPipeHalfClose(t *testing.T) {
	forBoth(t, func(t *testing.T, useTLS bool) {
		e := newEnds(t, useTLS)
		wait := startPipe(e, nil, nil, Options{CloseGrace: time.Hour})
		var g group
		g.Go(func() {
			io.WriteString(e.appPeer, "z LOGOUT\r\n")
			halfClose(t, e.appPeer)
		})
		g.Go(func() {
			if got := readAll(t, e.upPeer); string(got) != "z LOGOUT\r\n" {
				t.Errorf("upstream read %q", got)
			}
			// Only after the end of the app's input was passed on.
			io.WriteString(e.upPeer, "* BYE logging out\r\nz OK done\r\n")
			e.upPeer.Close()
		})
		var got []byte
		g.Go(func() { got = readAll(t, e.appPeer) })
		g.Wait()
		r := wait(t)
		if string(got) != "* BYE logging out\r\nz OK done\r\n" {
			t.Errorf("app read %q", got)
		}
		if r.ClosedFirst != App || r.In != 10 || r.Out != 30 || r.Err != nil {
			t.Errorf("result %+v", r)
		}
	})
}

// The upstream ends its side but the app neither sends nor closes: the
// grace runs out and both connections are closed.
func TestPipeGraceClose(t *testing.T) {
	forBoth(t, func(t *testing.T, useTLS bool) {
		e := newEnds(t, useTLS)
		const grace = 50 * time.Millisecond
		wait := startPipe(e, nil, nil, Options{CloseGrace: grace})
		io.WriteString(e.upPeer, "* BYE server shutting down\r\n")
		halfClose(t, e.upPeer)
		// The app reads the BYE and the half-close, and hangs.
		if got := readAll(t, e.appPeer); string(got) != "* BYE server shutting down\r\n" {
			t.Errorf("app read %q", got)
		}
		r := wait(t)
		if r.ClosedFirst != Upstream || r.Duration < grace || r.Err != nil {
			t.Errorf("result %+v, want upstream first, after the grace, no error", r)
		}
		// The upstream's connection is closed too: it reads the end.
		if got := readAll(t, e.upPeer); len(got) != 0 {
			t.Errorf("upstream read %q", got)
		}
	})
}

// A failed direction closes both connections at once (no grace), and the
// caller's Close is called exactly once.
func TestPipeErrorClosesBoth(t *testing.T) {
	e := newEnds(t, false)
	var closes atomic.Int32
	opts := Options{CloseGrace: time.Hour, Close: func() {
		closes.Add(1)
		e.app.Close()
		e.up.Close()
	}}
	wait := startPipe(e, nil, nil, opts)
	io.WriteString(e.upPeer, "* 1 EXISTS\r\n")
	buf := make([]byte, 12)
	e.appPeer.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.ReadFull(e.appPeer, buf); err != nil {
		t.Fatal(err)
	}
	// The upstream resets the connection.
	e.upPeer.(*net.TCPConn).SetLinger(0)
	e.upPeer.Close()
	if got := readAll(t, e.appPeer); len(got) != 0 {
		t.Errorf("app read %q after the reset", got)
	}
	r := wait(t)
	if r.ClosedFirst != Upstream || r.Err == nil || r.Out != 12 {
		t.Errorf("result %+v, want upstream first with an error", r)
	}
	if n := closes.Load(); n != 1 {
		t.Errorf("Close called %d times", n)
	}
}

// Closing both connections from outside (the server shutting down) ends
// the copy, and a closed connection is not reported as an error.
func TestPipeClosedByCaller(t *testing.T) {
	forBoth(t, func(t *testing.T, useTLS bool) {
		e := newEnds(t, useTLS)
		wait := startPipe(e, nil, nil, Options{CloseGrace: time.Hour})
		// Make sure the copy runs before it is interrupted.
		io.WriteString(e.appPeer, "a IDLE\r\n")
		buf := make([]byte, 8)
		e.upPeer.SetReadDeadline(time.Now().Add(waitLimit))
		if _, err := io.ReadFull(e.upPeer, buf); err != nil {
			t.Fatal(err)
		}
		closeSocket(e.app)
		closeSocket(e.up)
		r := wait(t)
		if r.Err != nil || r.In != 8 {
			t.Errorf("result %+v", r)
		}
	})
}

// Deadlines left from the login are cleared: a copy outlives them.
func TestPipeClearsDeadlines(t *testing.T) {
	e := newEnds(t, false)
	past := time.Now().Add(-time.Second)
	e.app.SetDeadline(past)
	e.up.SetDeadline(past)
	wait := startPipe(e, nil, nil, Options{})
	var g group
	g.Go(func() {
		io.WriteString(e.appPeer, "a NOOP\r\n")
		halfClose(t, e.appPeer)
	})
	g.Go(func() {
		if got := readAll(t, e.upPeer); string(got) != "a NOOP\r\n" {
			t.Errorf("upstream read %q", got)
		}
		e.upPeer.Close()
	})
	g.Go(func() { readAll(t, e.appPeer) })
	g.Wait()
	if r := wait(t); r.Err != nil || r.In != 8 {
		t.Errorf("result %+v", r)
	}
}

// chunkReader returns its data in reads of the given sizes (capped by the
// caller's buffer), recording the buffer sizes it was offered.
type chunkReader struct {
	data    []byte
	sizes   []int
	offered []int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.offered = append(r.offered, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(r.sizes) > 0 {
		n, r.sizes = min(n, r.sizes[0]), r.sizes[1:]
	}
	n = copy(p, r.data[:min(n, len(r.data))])
	r.data = r.data[n:]
	return n, nil
}

// A direction waits on the small buffer, takes a midBuffer when a read
// fills the small one and a bigBuffer when a read fills most of that, and
// gives it back after a short read; the bytes are intact throughout.
func TestCopyPendingBuffers(t *testing.T) {
	data := randomBytes(3, 3*bigBuffer)
	src := &chunkReader{data: data, sizes: []int{100, smallBufferSize, midBuffer, 10, smallBufferSize, 1 << 30}}
	var dst bytes.Buffer
	n, err := copyPending(&dst, src, []byte("pending"))
	if err != nil || n != int64(len("pending")+len(data)) {
		t.Fatalf("copied %d, %v", n, err)
	}
	if !bytes.Equal(dst.Bytes(), append([]byte("pending"), data...)) {
		t.Fatal("bytes differ")
	}
	want := []int{smallBufferSize, smallBufferSize, midBuffer, bigBuffer, smallBufferSize, midBuffer, bigBuffer}
	if len(src.offered) < len(want) {
		t.Fatalf("offered %v", src.offered)
	}
	for i, w := range want {
		if src.offered[i] != w {
			t.Errorf("read %d offered %d bytes, want %d (all: %v)", i, src.offered[i], w, src.offered[:len(want)])
		}
	}
}

// errWriter fails every write.
type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("broken") }

func TestCopyPendingWriteError(t *testing.T) {
	if _, err := copyPending(errWriter{}, &chunkReader{data: []byte("x")}, []byte("p")); err == nil {
		t.Error("a failed write of the pending bytes went unnoticed")
	}
	if _, err := copyPending(errWriter{}, &chunkReader{data: []byte("x")}, nil); err == nil {
		t.Error("a failed write went unnoticed")
	}
}

// BenchmarkPipe measures the throughput of one direction (app to upstream)
// over loopback, in 64 KiB writes.
func BenchmarkPipe(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "tls"}[useTLS]
		b.Run(name, func(b *testing.B) {
			e := newEnds(b, useTLS)
			chunk := randomBytes(4, 64<<10)
			b.SetBytes(int64(len(chunk)))
			wait := startPipe(e, nil, nil, Options{})
			var g group
			g.Go(func() {
				io.Copy(io.Discard, e.upPeer)
				e.upPeer.Close()
			})
			g.Go(func() { io.Copy(io.Discard, e.appPeer) })
			b.ResetTimer()
			for range b.N {
				if _, err := e.appPeer.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			halfClose(b, e.appPeer)
			g.Wait()
			b.StopTimer()
			if r := wait(b); r.In != int64(b.N)*int64(len(chunk)) {
				b.Errorf("copied %d bytes", r.In)
			}
		})
	}
}
