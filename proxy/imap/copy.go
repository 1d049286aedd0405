package imap

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
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
func (s *session) pipe(acct *proxy.Account, up *upstream, log *slog.Logger) {
	start := time.Now()
	s.mu.Lock()
	s.proxying = true
	client := s.conn
	client.SetDeadline(time.Time{})
	s.mu.Unlock()
	up.conn.SetDeadline(time.Time{})

	results := make(chan copyResult, 2)
	go func() {
		n, err := copyBuffered(up.conn, client, s.br)
		results <- copyResult{"app", n, err}
	}()
	go func() {
		n, err := copyBuffered(client, up.conn, up.br)
		results <- copyResult{"upstream", n, err}
	}()

	var in, out int64
	record := func(r copyResult) {
		if r.from == "app" {
			in = r.n
		} else {
			out = r.n
		}
		if r.err != nil && !errors.Is(r.err, net.ErrClosed) {
			log.Debug("copy ended with an error", "from", r.from, "err", r.err)
		}
	}
	first := <-results
	record(first)
	if first.err == nil {
		// A clean EOF: pass the half-close on and let the other direction
		// finish what it has.
		if first.from == "app" {
			closeWrite(up.conn)
		} else {
			closeWrite(client)
		}
	} else {
		s.close()
	}
	t := time.AfterFunc(closeGrace, s.close)
	record(<-results)
	t.Stop()
	s.close()

	s.srv.relay.Observer().Transferred(acct, in, out)
	log.Info("session ended", "bytes_in", in, "bytes_out", out, "closed_first", first.from,
		"duration", time.Since(start).Round(time.Millisecond).String())
}

// copyBufferSize is the buffer of each direction of the copy.
const copyBufferSize = 32 << 10

// copyBuffered copies what br has buffered from src, then src itself, to
// dst, until src ends (a nil error) or either side fails.
func copyBuffered(dst io.Writer, src io.Reader, br *bufio.Reader) (int64, error) {
	var n int64
	if k := br.Buffered(); k > 0 {
		b, _ := br.Peek(k)
		m, err := dst.Write(b)
		n += int64(m)
		if err != nil {
			return n, err
		}
		br.Discard(k)
	}
	m, err := io.CopyBuffer(dst, src, make([]byte, copyBufferSize))
	return n + m, err
}

// closeWrite half-closes c (for TLS: sends close_notify) or, if it cannot,
// leaves it to the final close.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
