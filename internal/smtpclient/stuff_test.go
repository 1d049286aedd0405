package smtpclient

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// reference is what net/textproto's dot writer (the byte-at-a-time
// implementation go-smtp uses) makes of p.
func reference(p []byte) []byte {
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	w := textproto.NewWriter(bw).DotWriter()
	w.Write(p)
	w.Close()
	return buf.Bytes()
}

// ours writes p in chunks of n bytes.
func ours(p []byte, n int) []byte {
	var buf bytes.Buffer
	s := &stuffer{w: &buf, bol: true}
	for len(p) > 0 {
		k := min(n, len(p))
		s.write(p[:k])
		p = p[k:]
	}
	s.finish()
	return buf.Bytes()
}

func TestStufferMatchesTextproto(t *testing.T) {
	for _, in := range []string{
		"", "a", ".", "..", "a\r\n", ".a\r\n.b\r\n", "a\n.b\nc", "a\r\n.\r\n", "x\r", "x\r\n\r\n.",
		"Subject: x\r\n\r\n.leading dot\r\nend\r\n", "bare\nlf\n", "\r\n.\r\n.\r\n",
	} {
		for _, n := range []int{1, 2, 3, 1 << 20} {
			got, want := ours([]byte(in), n), reference([]byte(in))
			if !bytes.Equal(got, want) {
				t.Errorf("%q in chunks of %d: got %q, want %q", in, n, got, want)
			}
		}
	}
}

func FuzzStuffer(f *testing.F) {
	f.Add([]byte("a\r\n.b\nc\r"), 3)
	f.Fuzz(func(t *testing.T, p []byte, n int) {
		if n <= 0 {
			n = 1
		}
		if got, want := ours(p, n), reference(p); !bytes.Equal(got, want) {
			t.Fatalf("chunks of %d: got %q, want %q", n, got, want)
		}
	})
}

func BenchmarkStuffer(b *testing.B) {
	msg := bytes.Repeat([]byte("0123456789012345678901234567890123456789012345678901234567890123456789abcdef\r\n"), 1<<14)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		s := &stuffer{w: discard{}, bol: true}
		s.write(msg)
		s.finish()
	}
}

func BenchmarkTextprotoDotWriter(b *testing.B) {
	msg := bytes.Repeat([]byte("0123456789012345678901234567890123456789012345678901234567890123456789abcdef\r\n"), 1<<14)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		w := textproto.NewWriter(bufio.NewWriter(discard{})).DotWriter()
		w.Write(msg)
		w.Close()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
