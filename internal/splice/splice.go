// Package splice is the byte-level machinery of a proxied session, shared by
// the front ends that speak a protocol themselves until the app has logged in
// and then copy bytes both ways untouched (IMAP and POP3): a bounded
// line reader for the text before the copy, and the two-way copy after it.
//
// It lives under internal/ rather than beside the front ends because the
// upstream logins (internal/upstream) read the servers' lines with the same
// reader, and nothing under internal/ may import proxy.
//
// Out of scope: parsing any protocol, deadlines during the copy (an IMAP IDLE
// lasts hours; TCP keepalive finds dead peers), metrics and logs of the
// session (the caller reports Result).
package splice

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
)

// ErrLineTooLong is ReadLine's error for a line longer than its bound.
var ErrLineTooLong = errors.New("line too long")

// ReadLine reads a line of at most max octets, without its CRLF (a bare LF
// is accepted too, as servers and apps in the wild send it). A longer line
// is ErrLineTooLong: the reader is then in the middle of the line and the
// stream cannot be resynchronised. The line is a new slice, not the
// reader's buffer. End of input before any octet is io.EOF; inside a line,
// io.ErrUnexpectedEOF.
func ReadLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > max+2 {
			return nil, ErrLineTooLong
		}
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > max {
		return nil, ErrLineTooLong
	}
	return line, nil
}

// TakeBuffered returns a copy of what br holds and has not been read (nil
// if nothing), so that br and its buffer can be dropped before a long copy:
// these are the bytes a peer pipelined after the last line the caller
// read, and Pipe sends them first.
func TakeBuffered(br *bufio.Reader) []byte {
	if br == nil || br.Buffered() == 0 {
		return nil
	}
	b, _ := br.Peek(br.Buffered())
	return bytes.Clone(b)
}

// LiteralMarker reports whether an IMAP line ends with a literal
// announcement "{n}" (RFC 9051 §4.3) or "{n+}" (RFC 7888) outside a quoted
// string; sync is false for the non-synchronising form. The pre-auth
// command reader and the upstream login's response reader both use it.
func LiteralMarker(line []byte) (n int, sync, ok bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false, false
	}
	num := line[open+1 : len(line)-1]
	sync = true
	if len(num) > 0 && num[len(num)-1] == '+' {
		num, sync = num[:len(num)-1], false
	}
	if len(num) == 0 || len(num) > 10 {
		return 0, false, false
	}
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, false, false
		}
	}
	// Inside an unterminated quoted string the brace is text.
	inQuote := false
	for i := 0; i < open; i++ {
		switch {
		case line[i] == '\\' && inQuote:
			i++
		case line[i] == '"':
			inQuote = !inQuote
		}
	}
	if inQuote {
		return 0, false, false
	}
	v, err := strconv.Atoi(string(num))
	if err != nil {
		return 0, false, false
	}
	return v, sync, true
}
