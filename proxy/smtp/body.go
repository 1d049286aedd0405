package smtp

import (
	"bytes"
	"io"
	"time"

	"github.com/emersion/go-smtp"
)

// bodyReader reads a DATA body from the wire and removes the transparency
// dots (RFC 5321 §4.5.2), a buffer at a time.
//
// Lines end with CRLF. At the start of a line (the start of the body, or
// after CRLF) the line "." ends the body; any other line that starts with
// "." loses that first dot and nothing else: "..x" is ".x" and ".\rX" is
// "\rX" (the CR stays; go-smtp's reader dropped it), as net/textproto's
// DotReader and Postfix read them. A bare LF or CR does not end a line, so
// "\n.\r\n" is not the end of the body and a dot after a bare LF is data:
// the relay ends a message exactly where a strict server would (no SMTP
// smuggling), and its upstream stuffer dot-stuffs every line it sends.
//
// The body's size is bounded by limit (the SIZE advertised; -1 none). A
// client that times out (DataTimeout between reads) or ends the connection
// fails the wire: its 421 reply is written and the error returned is a
// *clientError.
type bodyReader struct {
	w     *wire
	bol   bool // at the start of a line
	cr    bool // the last byte given out was CR
	limit int64
	size  int64
	err   error // sticky: io.EOF after the end marker
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	w := b.w
	n := 0
	for n < len(p) {
		avail := w.buf[w.r:w.w]
		if b.bol && len(avail) > 0 && avail[0] == '.' {
			if len(avail) == 1 || (len(avail) == 2 && avail[1] == '\r') {
				avail = nil // ".": is it the end? Read on to know.
			} else if avail[1] == '\r' && avail[2] == '\n' {
				w.r += 3
				w.endBody()
				b.err = io.EOF
				if n > 0 {
					return n, nil
				}
				return 0, io.EOF
			} else {
				w.r++ // the transparency dot
				avail = avail[1:]
				b.bol = false
			}
		}
		if len(avail) == 0 {
			if n > 0 {
				return n, nil
			}
			if err := b.fill(); err != nil {
				return 0, err
			}
			continue
		}
		b.bol = false
		seg := avail[:min(len(avail), len(p)-n)]
		if b.limit >= 0 {
			room := b.limit - b.size
			if room <= 0 {
				b.err = smtp.ErrDataTooLarge
				if n > 0 {
					return n, nil
				}
				return 0, b.err
			}
			if int64(len(seg)) > room {
				seg = seg[:room]
			}
		}
		if i := bytes.IndexByte(seg, '\n'); i >= 0 {
			seg = seg[:i+1]
			b.bol = (i > 0 && seg[i-1] == '\r') || (i == 0 && b.cr)
			b.cr = false
		} else {
			b.cr = seg[len(seg)-1] == '\r'
		}
		n += copy(p[n:], seg)
		w.r += len(seg)
		b.size += int64(len(seg))
	}
	return n, nil
}

// fill reads more of the body, at most DataTimeout after the last read.
func (b *bodyReader) fill() error {
	w := b.w
	w.raw.SetReadDeadline(time.Now().Add(w.srv.DataTimeout))
	err := w.fill()
	if err == nil {
		return nil
	}
	b.err = &clientError{reply: w.failMessage(err), err: err}
	return b.err
}

// drain reads what the session left of the body (a refused message), so
// that the reply follows its end.
func (b *bodyReader) drain() error {
	if b.err == io.EOF {
		return nil
	}
	if _, failed := b.err.(*clientError); failed {
		return b.w.err
	}
	b.err, b.limit = nil, -1
	scratch := make([]byte, 4096)
	for {
		_, err := b.Read(scratch)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return b.w.err
		}
	}
}

// clientError is a body read that failed on the client's side; reply is
// what the client was told (the connection is closed).
type clientError struct {
	reply *smtp.SMTPError
	err   error
}

func (e *clientError) Error() string { return "reading the message from the client: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// bdatReader is the BDAT message go-smtp pipes to Data. A message is
// complete only if no chunk was cut short; go-smtp's handleBdat would end
// the pipe normally after a short chunk.
type bdatReader struct {
	r io.Reader
	v *view
}

func (b bdatReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.v.cutShort() {
		return n, &clientError{reply: errClientEnded, err: io.ErrUnexpectedEOF}
	}
	return n, err
}
