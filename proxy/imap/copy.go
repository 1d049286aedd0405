package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/proxy"
)

// closeGrace is how long the second direction of the copy may go on after
// the first one ended (the peer half-closed): the other side normally
// closes at once (the server after LOGOUT, the app after BYE).
const closeGrace = 10 * time.Second

// copyResult is the outcome of one direction of the copy.
type copyResult struct {
	from string // "app" (app to upstream) or "upstream"
	n    int64
	err  error
}

// pipe copies bytes between the app and the logged-in upstream, untouched,
// until both directions end. Bytes the app pipelined after its login and
// bytes the upstream sent after its tagged OK, already in the read buffers,
// go first. There is no deadline: an IDLE may last for hours (TCP keepalive
// finds dead peers).
//
// An idle proxied connection should cost little memory (thousands stay
// open in IDLE): the login-time read buffers are dropped, the session's own
// goroutine copies one direction, and each direction reads into a small
// buffer, taking a large pooled one only while data streams.
func (s *session) pipe(acct *proxy.Account, up *upstream, log *slog.Logger) {
	start := time.Now()
	s.mu.Lock()
	s.proxying = true
	client := s.conn
	client.SetDeadline(time.Time{})
	s.mu.Unlock()
	up.conn.SetDeadline(time.Time{})
	fromApp, fromUp := takeBuffered(s.br), takeBuffered(up.br)
	s.br, s.cr.br, up.br = nil, nil, nil

	var (
		once  sync.Once
		first copyResult
		grace *time.Timer
	)
	// ended runs for each direction as it ends; the first one passes a
	// clean EOF on as a half-close (or closes both on an error) and gives
	// the other direction closeGrace to finish.
	ended := func(r copyResult) {
		if r.err != nil && !errors.Is(r.err, net.ErrClosed) {
			log.Debug("copy ended with an error", "from", r.from, "err", r.err)
		}
		once.Do(func() {
			first = r
			switch {
			case r.err != nil:
				s.close()
			case r.from == "app":
				closeWrite(up.conn)
			default:
				closeWrite(client)
			}
			grace = time.AfterFunc(closeGrace, s.close)
		})
	}
	appDone := make(chan copyResult, 1)
	go func() {
		n, err := copyPending(up.conn, client, fromApp)
		r := copyResult{"app", n, err}
		ended(r)
		appDone <- r
	}()
	n, err := copyPending(client, up.conn, fromUp)
	upR := copyResult{"upstream", n, err}
	ended(upR)
	appR := <-appDone
	grace.Stop()
	s.close()

	s.srv.relay.Observer().Transferred(acct.Info(), appR.n, upR.n)
	log.Info("session ended", "bytes_in", appR.n, "bytes_out", upR.n, "closed_first", first.from,
		"duration", time.Since(start).Round(time.Millisecond).String())
}

// takeBuffered returns a copy of what br holds (nil if nothing), so br and
// its buffer can be dropped.
func takeBuffered(br *bufio.Reader) []byte {
	if br == nil || br.Buffered() == 0 {
		return nil
	}
	b, _ := br.Peek(br.Buffered())
	return bytes.Clone(b)
}

const (
	// smallBufferSize is what an idle direction holds while it waits.
	smallBufferSize = 2 << 10
	// copyBufferSize is the pooled buffer used while data streams.
	copyBufferSize = 32 << 10
)

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// copyPending writes pending, then copies src to dst until src ends (a nil
// error) or either side fails. A read that fills the small buffer switches
// to a pooled large one; a short read returns it.
func copyPending(dst io.Writer, src io.Reader, pending []byte) (int64, error) {
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
	var big *[]byte
	defer func() {
		if big != nil {
			copyBuffers.Put(big)
		}
	}()
	for {
		m, rerr := src.Read(buf)
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
		case big == nil && m == len(buf):
			big = copyBuffers.Get().(*[]byte)
			buf = *big
		case big != nil && m < smallBufferSize:
			copyBuffers.Put(big)
			big, buf = nil, small
		}
	}
}

// closeWrite half-closes c (for TLS: sends close_notify) or, if it cannot,
// leaves it to the final close.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
