package splice

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadLine(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		max   int
		lines []string // lines read before the final error
		err   error
	}{
		{"CRLF", "a NOOP\r\nb LOGOUT\r\n", 64, []string{"a NOOP", "b LOGOUT"}, io.EOF},
		{"bare LF", "a NOOP\nb\n", 64, []string{"a NOOP", "b"}, io.EOF},
		{"empty line", "\r\n", 64, []string{""}, io.EOF},
		{"CR kept inside", "a\rb\r\n", 64, []string{"a\rb"}, io.EOF},
		{"exactly max", "abcd\r\n", 4, []string{"abcd"}, io.EOF},
		{"one over max", "abcde\r\n", 4, nil, ErrLineTooLong},
		{"over max with bare LF", "abcde\n", 4, nil, ErrLineTooLong},
		{"partial line", "a NOOP", 64, nil, io.ErrUnexpectedEOF},
		{"nothing", "", 64, nil, io.EOF},
		// Longer than the reader's 16-byte buffer: read in chunks.
		{"across buffers", strings.Repeat("x", 40) + "\r\n", 40, []string{strings.Repeat("x", 40)}, io.EOF},
		{"too long across buffers", strings.Repeat("x", 41) + "\r\n", 40, nil, ErrLineTooLong},
		{"too long without end", strings.Repeat("x", 100), 40, nil, ErrLineTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in), 16)
			var got []string
			var err error
			for range 10 {
				var l []byte
				if l, err = ReadLine(br, tt.max); err != nil {
					break
				}
				got = append(got, string(l))
			}
			if strings.Join(got, "|") != strings.Join(tt.lines, "|") || !errors.Is(err, tt.err) {
				t.Errorf("lines %q, err %v; want %q, %v", got, err, tt.lines, tt.err)
			}
		})
	}
}

// The line is the caller's: reading on does not overwrite it.
func TestReadLineOwnsItsBytes(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader("first\r\nsecond\r\n"), 16)
	a, err := ReadLine(br, 64)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ReadLine(br, 64); err != nil {
		t.Fatal(err)
	}
	if string(a) != "first" {
		t.Errorf("first line now %q", a)
	}
}

func TestTakeBuffered(t *testing.T) {
	if b := TakeBuffered(nil); b != nil {
		t.Errorf("nil reader: %q", b)
	}
	br := bufio.NewReader(strings.NewReader("a OK done\r\n* 1 EXISTS\r\n"))
	if b := TakeBuffered(br); b != nil {
		t.Errorf("nothing read yet, nothing buffered: %q", b)
	}
	if _, err := ReadLine(br, 64); err != nil {
		t.Fatal(err)
	}
	b := TakeBuffered(br)
	if string(b) != "* 1 EXISTS\r\n" {
		t.Fatalf("buffered %q", b)
	}
	// A copy: the reader's buffer may be reused.
	br.Reset(strings.NewReader("XXXXXXXXXXXXXXXXXXXXXXXXXXXX"))
	br.Peek(10)
	if string(b) != "* 1 EXISTS\r\n" {
		t.Errorf("copy changed to %q", b)
	}
}
