package testutil

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/textproto"

	"github.com/emersion/go-message/mail"
)

// MIMEMessage builds a multipart/mixed message: the header lines given
// (each without its line end; add From, To, Message-ID...), a short text
// part, and one base64 attachment of random bytes per size, named inv0.pdf,
// inv1.pdf... It returns the message and the attachments' bytes, for tests
// that check attachments arrive intact.
func MIMEMessage(header []string, sizes ...int) ([]byte, [][]byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, h := range header {
		buf.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&buf, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\n", mw.Boundary())
	w, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	w.Write([]byte("Please find the invoice attached.\r\n"))
	var atts [][]byte
	for i, n := range sizes {
		data := make([]byte, n)
		for j := 0; j < n; j += 8 {
			v := rand.Uint64()
			for k := 0; k < 8 && j+k < n; k++ {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		atts = append(atts, data)
		w, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/pdf"},
			"Content-Disposition": {fmt.Sprintf(`attachment; filename="inv%d.pdf"`, i)}, "Content-Transfer-Encoding": {"base64"}})
		enc := make([]byte, base64.StdEncoding.EncodedLen(n))
		base64.StdEncoding.Encode(enc, data)
		for len(enc) > 76 {
			w.Write(enc[:76])
			w.Write([]byte("\r\n"))
			enc = enc[76:]
		}
		w.Write(enc)
		w.Write([]byte("\r\n"))
	}
	mw.Close()
	return buf.Bytes(), atts
}

// Attachments returns the decoded attachments of a MIME message, in order
// (go-message's reading of it, not the relay's).
func Attachments(raw []byte) ([][]byte, error) {
	mr, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if _, ok := p.Header.(*mail.AttachmentHeader); ok {
			b, err := io.ReadAll(p.Body)
			if err != nil {
				return nil, err
			}
			out = append(out, b)
		}
	}
}
