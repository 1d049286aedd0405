package smtpclient

import (
	"bytes"
	"encoding/base64"
	"io"
)

var base64Std = base64.StdEncoding

// stuffer writes a message for DATA (RFC 5321 §4.5.2): a line that starts
// with "." gets another one, bare LF line ends become CRLF, and finish ends
// the last line and writes the terminating ".". It works a line at a time
// with bytes.IndexByte instead of a byte at a time, and produces exactly
// what net/textproto's dot writer produces (a fuzz test holds it to that),
// including its reading of runs of CR: an LF ends a CRLF only after an odd
// run of CRs.
type stuffer struct {
	w     io.Writer
	bol   bool // at the beginning of a line
	crOdd bool // what was written ends with an odd run of CRs
	wrote bool // anything was written
}

func (s *stuffer) write(p []byte) error {
	if len(p) > 0 {
		s.wrote = true
	}
	for len(p) > 0 {
		if s.bol && p[0] == '.' {
			if _, err := s.w.Write(dotByte); err != nil {
				return err
			}
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if _, err := s.w.Write(p); err != nil {
				return err
			}
			s.bol = false
			s.trackCR(p)
			return nil
		}
		line := p[:i]
		s.trackCR(line)
		crlf := s.crOdd
		if crlf {
			line = p[:i+1]
		}
		if _, err := s.w.Write(line); err != nil {
			return err
		}
		if !crlf {
			if _, err := s.w.Write(crlfBytes); err != nil {
				return err
			}
		}
		s.bol, s.crOdd = true, false
		p = p[i+1:]
	}
	return nil
}

// trackCR updates crOdd after b was written.
func (s *stuffer) trackCR(b []byte) {
	n := len(b) - len(bytes.TrimRight(b, "\r"))
	if n == len(b) {
		s.crOdd = s.crOdd != (n%2 == 1)
	} else {
		s.crOdd = n%2 == 1
	}
}

// finish ends an unterminated last line and writes the final dot. An
// empty message becomes one empty line, as net/textproto makes it.
func (s *stuffer) finish() error {
	if !s.bol || !s.wrote {
		end := crlfBytes
		if s.crOdd {
			end = crlfBytes[1:]
		}
		if _, err := s.w.Write(end); err != nil {
			return err
		}
	}
	_, err := s.w.Write(dotCRLF)
	return err
}

var (
	dotByte   = []byte{'.'}
	crlfBytes = []byte("\r\n")
	dotCRLF   = []byte(".\r\n")
)
