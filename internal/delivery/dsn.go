package delivery

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// dsnHeaderBytes bounds how much of the original message a notification
// quotes: its header (RFC 3464 §2 allows text/rfc822-headers), never the
// body, so a bounced 150 MB message does not produce a second one.
const dsnHeaderBytes = 64 << 10

// buildDSN writes a delivery status notification (RFC 3464
// multipart/report) for the failed recipients of env, from the mailbox the
// account sends as to the envelope sender. head is the start of the
// original message (its header is quoted). reason says in plain words why
// the message was given up when the recipients have no reply of their own.
func buildDSN(env *spool.Envelope, failed []spool.Recipient, head []byte, reportingMTA string, now time.Time) []byte {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fmt.Fprintf(&b, "From: Mail Delivery System <%s>\r\n", env.Mailbox)
	fmt.Fprintf(&b, "To: <%s>\r\n", env.From)
	fmt.Fprintf(&b, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\n") // RFC 3834: no auto-reply loops
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status; boundary=%q\r\n\r\n", mw.Boundary())

	text, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	fmt.Fprintf(text, "This is the oauthrelay mail relay at %s.\r\n\r\n", reportingMTA)
	fmt.Fprintf(text, "Your message could not be delivered to the following recipients:\r\n\r\n")
	for _, r := range failed {
		fmt.Fprintf(text, "  <%s>: %s\r\n", r.Addr, orDefault(r.Reply, env.LastError))
	}
	if env.MessageID != "" {
		fmt.Fprintf(text, "\r\nMessage-ID of the message: %s\r\n", env.MessageID)
	}

	status, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"message/delivery-status"}})
	fmt.Fprintf(status, "Reporting-MTA: dns; %s\r\n", reportingMTA)
	if env.Mail.EnvID != "" {
		fmt.Fprintf(status, "Original-Envelope-Id: %s\r\n", env.Mail.EnvID)
	}
	fmt.Fprintf(status, "Arrival-Date: %s\r\n", env.Created.Format(time.RFC1123Z))
	for _, r := range failed {
		fmt.Fprintf(status, "\r\n")
		if r.ORcpt != "" {
			fmt.Fprintf(status, "Original-Recipient: %s\r\n", r.ORcpt)
		}
		fmt.Fprintf(status, "Final-Recipient: rfc822; %s\r\n", r.Addr)
		fmt.Fprintf(status, "Action: failed\r\n")
		fmt.Fprintf(status, "Status: %s\r\n", statusCode(r.Reply))
		if r.Reply != "" {
			fmt.Fprintf(status, "Diagnostic-Code: smtp; %s\r\n", oneLine(r.Reply))
		}
		fmt.Fprintf(status, "Last-Attempt-Date: %s\r\n", now.Format(time.RFC1123Z))
	}

	headers, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/rfc822-headers"}})
	headers.Write(headerBlock(head))
	mw.Close()
	return b.Bytes()
}

// statusCode is the enhanced status code of a reply such as "550 5.1.1
// text", or 5.0.0 (permanent, unspecified) when it has none — a message
// given up after queue.max_age is 4.4.7 in Postfix's words, but RFC 3464
// wants a failed action to carry a 5.x.x code.
func statusCode(reply string) string {
	f := strings.Fields(reply)
	if len(f) > 1 && len(f[1]) >= 5 && f[1][0] == '5' && f[1][1] == '.' {
		return f[1]
	}
	return "5.0.0"
}

// headerBlock returns the header of a message start (up to the empty line).
func headerBlock(head []byte) []byte {
	if len(head) > dsnHeaderBytes {
		head = head[:dsnHeaderBytes]
	}
	for _, sep := range [][]byte{[]byte("\r\n\r\n"), []byte("\n\n")} {
		if i := bytes.Index(head, sep); i >= 0 {
			return head[:i+len(sep)/2]
		}
	}
	return head
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// readHead reads up to dsnHeaderBytes of a message.
func readHead(r io.Reader) []byte {
	b, _ := io.ReadAll(io.LimitReader(r, dsnHeaderBytes))
	return b
}
