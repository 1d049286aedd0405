package graph

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
)

// maxHeaderBytes bounds the header section the relay rewrites; a longer
// one is refused (Exchange's own header limit is 256 KB).
const maxHeaderBytes = 256 << 10

// ErrHeaderTooLong is a header section over maxHeaderBytes, or one without
// an end.
var ErrHeaderTooLong = errors.New("graph: message header section too long")

// Rewrite is what the envelope changed in a message's header.
type Rewrite struct {
	// Removed are header recipients (To, Cc, Bcc) not in the envelope:
	// taken out of the copy sent, so Graph does not deliver to them.
	Removed []string
	// Added are envelope recipients in no header field: added as Bcc.
	Added []string
	// MessageID is the message's Message-ID; Generated says the relay
	// added it (RFC 6409 §8.3 lets a submission server do so), because the
	// Sent Items lookup after a timeout needs one.
	MessageID string
	Generated bool
}

// ReadHeader reads the header section of a message from r: every byte up
// to and including the blank line that ends it (or all of r for a message
// without a body). The rest of r is the body, untouched.
func ReadHeader(r *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := r.ReadSlice('\n')
		if len(head)+len(line) > maxHeaderBytes {
			return nil, ErrHeaderTooLong
		}
		head = append(head, line...)
		if err == io.EOF {
			return head, nil
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("graph: read header: %w", err)
		}
		if err == nil && (string(line) == "\r\n" || string(line) == "\n") {
			return head, nil
		}
	}
}

// RewriteHeader makes the header section head agree with the SMTP
// envelope, which is the truth: Graph delivers to the addresses of To, Cc
// and Bcc, so a recipient only in the envelope (a Bcc the app's SMTP
// library kept out of the header, as it should) is added to Bcc, and a
// header recipient the envelope does not have is removed from the copy
// sent. Only the fields that change are rewritten; the others keep their
// bytes. A missing Message-ID is added (with host after the @).
func RewriteHeader(head []byte, rcpts []string, host string) ([]byte, Rewrite, error) {
	fields, end := splitFields(head)
	want := make(map[string]bool, len(rcpts))
	for _, r := range rcpts {
		want[fold(r)] = true
	}
	seen := map[string]bool{}
	var rw Rewrite
	var out bytes.Buffer
	bcc := -1
	var bccKept []*mail.Address
	for i, f := range fields {
		name := fieldName(f)
		switch strings.ToLower(name) {
		case "message-id":
			rw.MessageID = strings.TrimSpace(fieldValue(f))
		case "to", "cc", "bcc":
			list, err := mail.ParseAddressList(fieldValue(f))
			if err != nil && strings.TrimSpace(fieldValue(f)) != "" && !isGroupOnly(fieldValue(f)) {
				// An address list Graph could not read either: dropped,
				// its recipients (if in the envelope) go as Bcc.
				rw.Removed = append(rw.Removed, strings.TrimSpace(fieldValue(f)))
				fields[i] = ""
				continue
			}
			var kept []*mail.Address
			// A name with white space before its colon (RFC 5322's
			// obsolete syntax, "To :") is written again in the usual
			// form: parsers disagree on it (net/mail reads "To " as
			// another field), and the recipients must be the same for
			// all of them.
			changed := !strings.HasPrefix(f, name+":")
			for _, a := range list {
				k := fold(a.Address)
				if !want[k] || seen[k] {
					if !want[k] {
						rw.Removed = append(rw.Removed, a.Address)
					}
					changed = true
					continue
				}
				seen[k] = true
				kept = append(kept, a)
			}
			if strings.EqualFold(name, "bcc") {
				bcc, bccKept = i, append(bccKept, kept...)
				fields[i] = ""
				continue
			}
			if changed {
				fields[i] = formatField(name, kept)
			}
		}
	}
	var added []*mail.Address
	for _, r := range rcpts {
		if k := fold(r); !seen[k] {
			seen[k] = true
			rw.Added = append(rw.Added, r)
			added = append(added, &mail.Address{Address: r})
		}
	}
	if all := append(bccKept, added...); len(all) > 0 {
		f := formatField("Bcc", all)
		if bcc >= 0 {
			fields[bcc] = f
		} else {
			fields = append(fields, f)
		}
	}
	if rw.MessageID == "" {
		rw.MessageID, rw.Generated = newMessageID(host), true
		fields = append(fields, "Message-ID: "+rw.MessageID+"\r\n")
	}
	for _, f := range fields {
		out.WriteString(f)
	}
	out.WriteString(end)
	return out.Bytes(), rw, nil
}

// isGroupOnly is an empty group ("undisclosed-recipients:;"), which
// net/mail refuses but is no recipient.
func isGroupOnly(v string) bool {
	v = strings.TrimSpace(v)
	return strings.HasSuffix(v, ":;") && !strings.Contains(v, "@")
}

// formatField renders an address field; "" (dropped) when list is empty.
func formatField(name string, list []*mail.Address) string {
	if len(list) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(name + ": ")
	for i, a := range list {
		if i > 0 {
			b.WriteString(",\r\n ")
		}
		b.WriteString(a.String())
	}
	b.WriteString("\r\n")
	return b.String()
}

// splitFields splits a header section into its fields (each with its
// folded lines and line ends) and the blank line that ends it ("" when
// the message has no body).
func splitFields(head []byte) ([]string, string) {
	var fields []string
	end := ""
	for _, line := range strings.SplitAfter(string(head), "\n") {
		switch {
		case line == "":
		case line == "\r\n" || line == "\n":
			end = line
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			fields[len(fields)-1] += line
		default:
			fields = append(fields, line)
		}
	}
	// The last line of a message without a body may lack its line end
	// (BDAT): give it one, or a field added after it would be glued to it.
	if n := len(fields); n > 0 && !strings.HasSuffix(fields[n-1], "\n") {
		fields[n-1] += "\r\n"
	}
	return fields, end
}

func fieldName(f string) string {
	name, _, _ := strings.Cut(f, ":")
	return strings.TrimSpace(name)
}

// fieldValue is the unfolded value of a field.
func fieldValue(f string) string {
	_, v, _ := strings.Cut(f, ":")
	v = strings.ReplaceAll(v, "\r\n", "")
	return strings.ReplaceAll(v, "\n", "")
}

// fold compares addresses without regard to case, as Exchange does.
func fold(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }

func newMessageID(host string) string {
	b := make([]byte, 16)
	rand.Read(b)
	if host == "" {
		host = "oauthrelay.invalid"
	}
	return "<" + hex.EncodeToString(b) + "@" + host + ">"
}
