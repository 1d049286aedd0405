package graph

import (
	"bufio"
	"bytes"
	"io"
	"net/mail"
	"strings"
	"testing"
)

// fuzzRcpts are the envelope recipients a fuzz input picks from, by the
// bits of its mask: valid addresses, as the SMTP front end only lets
// valid ones through, in several spellings of case.
var fuzzRcpts = []string{"a@example.net", "B@Example.net", "c@example.org", "d.e@example.com", "f+tag@example.net"}

// FuzzRewriteHeader: whatever the app's header says, the copy Graph gets
// names exactly the envelope's recipients in To, Cc and Bcc (when its
// header can be read back at all), has a Message-ID, and keeps the blank
// line that ends the header. Graph delivers to the header's recipients, so
// this is the property that keeps a Bcc delivered and a header-only
// recipient not.
func FuzzRewriteHeader(f *testing.F) {
	f.Add([]byte("From: x@contoso.com\r\nTo: a@example.net, z@example.net\r\nCc: \"C\" <c@example.org>\r\nSubject: s\r\n\r\n"), uint8(0b111))
	f.Add([]byte("To: undisclosed-recipients:;\r\nBcc: b@example.net\r\nMessage-ID: <1@x>\r\n\r\n"), uint8(0b10))
	f.Add([]byte("To: a@example.net,\r\n a@example.net\r\nTO: =?utf-8?q?A?= <A@EXAMPLE.NET>\r\n\r\n"), uint8(1))
	f.Add([]byte("Subject: no recipients\n\n"), uint8(0b11111))
	f.Fuzz(func(t *testing.T, input []byte, mask uint8) {
		// As the sender reads it: the header section, up to its blank line.
		head, err := ReadHeader(bufio.NewReader(bytes.NewReader(input)))
		if err != nil {
			return
		}
		var rcpts []string
		for i, r := range fuzzRcpts {
			if mask&(1<<i) != 0 {
				rcpts = append(rcpts, r)
			}
		}
		out, rw, err := RewriteHeader(head, rcpts, "relay.test")
		if err != nil {
			return
		}
		if rw.MessageID == "" {
			t.Fatal("no Message-ID")
		}
		msg, err := mail.ReadMessage(bytes.NewReader(out))
		if err != nil {
			return // a header that cannot be read back: Graph's problem too
		}
		got := map[string]bool{}
		for _, field := range []string{"To", "Cc", "Bcc"} {
			for _, v := range msg.Header[textprotoKey(field)] {
				list, err := mail.ParseAddressList(v)
				if err != nil {
					if strings.TrimSpace(v) != "" && !isGroupOnly(v) {
						t.Fatalf("%s: %q left in the copy sent, not an address list: %v", field, v, err)
					}
					continue
				}
				for _, a := range list {
					got[fold(a.Address)] = true
				}
			}
		}
		want := map[string]bool{}
		for _, r := range rcpts {
			want[fold(r)] = true
		}
		for a := range got {
			if !want[a] {
				t.Fatalf("header recipient %s is not in the envelope %q:\n%s", a, rcpts, out)
			}
		}
		for a := range want {
			if !got[a] {
				t.Fatalf("envelope recipient %s is not in the header:\n%s", a, out)
			}
		}
	})
}

// textprotoKey is the canonical form net/mail keys header fields by.
func textprotoKey(s string) string { return strings.ToUpper(s[:1]) + strings.ToLower(s[1:]) }

// FuzzSplitMessage walks any message as the large-message path does: it
// never panics, always ends, and never hands over more attachment bytes,
// or writes a longer draft, than base64 can make of the input.
func FuzzSplitMessage(f *testing.F) {
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" +
		"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"))
	f.Add([]byte("Content-Disposition: attachment; filename=x.bin\r\n\r\nraw"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var draft bytes.Buffer
		var attached int64
		_ = splitMessage(bytes.NewReader(msg), &draft, func(a attachment, content io.Reader) error {
			n, err := io.Copy(io.Discard, bufio.NewReader(content))
			attached += n
			return err
		})
		if limit := int64(len(msg))*2 + 4096; attached > limit || int64(draft.Len()) > limit {
			t.Fatalf("from %d bytes: %d bytes of attachments, a draft of %d", len(msg), attached, draft.Len())
		}
	})
}
