package delivery

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/textproto"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/spool"
)

// dsnHeaderBytes bounds how much of the original message a notification
// quotes: its header (RFC 3464 §2 allows text/rfc822-headers), never the
// body, so a bounced 150 MB message does not produce a second one. RET=FULL
// (RFC 3461 §4.3) is answered with the header too, for the same reason.
const dsnHeaderBytes = 64 << 10

// The Status (RFC 3463) of a recipient given up without a permanent reply
// of its own: RFC 3464 §2.3.4 wants a failed action to carry a 5.x.x code.
const (
	// statusExpired: the message was not delivered within MaxAge (RFC
	// 3463 X.4.7, delivery time expired).
	statusExpired = "5.4.7"
	// statusUndefined: given up for another reason (its content lost).
	statusUndefined = "5.0.0"
)

// notify queues a delivery status notification to env's sender about the
// failed recipients: none for the null sender, for a notification, or for
// recipients that asked for none (NOTIFY=NEVER, RFC 3461 §4.1). It is
// written even while the queue closes (the message is failed right
// after: a notification lost then would never be sent), and the worker is
// woken to send it.
func (q *Queue) notify(ctx context.Context, env *spool.Envelope, failed []spool.Recipient, giveUpStatus string, log *slog.Logger) {
	var want []spool.Recipient
	for _, r := range failed {
		if wantsNotify(r, "FAILURE") {
			want = append(want, r)
		}
	}
	if env.From == "" || env.Notification || len(want) == 0 {
		return
	}
	head := []byte{}
	if body, err := q.o.Spool.OpenBody(env.ID); err == nil {
		head = readHead(body)
		body.Close()
	}
	dsn := buildDSN(env, want, head, q.o.ReportingMTA, q.o.Now(), giveUpStatus)
	mail := spool.Mail{SMTPUTF8: env.Mail.SMTPUTF8}
	if !isASCII(dsn) {
		mail.Body = "8BITMIME"
	}
	n, err := q.o.Spool.Create(context.WithoutCancel(ctx), spool.Envelope{
		Account: env.Account, Mailbox: env.Mailbox, From: env.Mailbox, Mail: mail,
		Recipients:   []spool.Recipient{{Addr: env.From, Notify: []string{"NEVER"}}},
		Notification: true,
	}, bytes.NewReader(dsn), 0)
	if err != nil {
		log.Error("cannot queue the delivery status notification", "to", env.From, "err", err)
		return
	}
	log.Info("delivery status notification queued", "to", env.From, "dsn_id", n.ID)
	q.wake()
}

// expiredReason says why a message was given up after maxAge.
func expiredReason(maxAge time.Duration, last string) string {
	s := "the message could not be delivered within " + plainDuration(maxAge)
	if last != "" {
		s += "; the last attempt failed: " + last
	}
	return s
}

func failedRecipients(env *spool.Envelope) []spool.Recipient {
	var out []spool.Recipient
	for _, r := range env.Recipients {
		if r.State == spool.Failed {
			out = append(out, r)
		}
	}
	return out
}

func wantsNotify(r spool.Recipient, what string) bool {
	if len(r.Notify) == 0 {
		return what == "FAILURE" // RFC 3461 §4.1: FAILURE (and DELAY) by default
	}
	for _, n := range r.Notify {
		if strings.EqualFold(n, what) {
			return true
		}
	}
	return false
}

// buildDSN writes a delivery status notification (RFC 3464
// multipart/report) for the failed recipients of env, from the mailbox the
// account sends as to the envelope sender. head is the start of the
// original message (its header is quoted). A recipient refused
// permanently is reported with the upstream's reply (its Status and
// Diagnostic-Code); one given up has env.LastError, the reason in plain
// words, and giveUpStatus, with the upstream's last reply to it, if any,
// as its Diagnostic-Code.
func buildDSN(env *spool.Envelope, failed []spool.Recipient, head []byte, reportingMTA string, now time.Time, giveUpStatus string) []byte {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fmt.Fprintf(&b, "From: Mail Delivery System <%s>\r\n", env.Mailbox)
	fmt.Fprintf(&b, "To: <%s>\r\n", env.From)
	fmt.Fprintf(&b, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&b, "Date: %s\r\n", now.Format(time.RFC1123Z))
	// The spool id makes it unique, and the same if a crash makes the
	// relay write it twice, so the sender's client can collapse the two.
	fmt.Fprintf(&b, "Message-ID: <dsn.%s@%s>\r\n", env.ID, reportingMTA)
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\n") // RFC 3834: no auto-reply loops
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status; boundary=%q\r\n\r\n", mw.Boundary())

	text, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	fmt.Fprintf(text, "This is the oauthrelay mail relay at %s.\r\n\r\n", reportingMTA)
	fmt.Fprintf(text, "Your message could not be delivered to the following recipients:\r\n\r\n")
	for _, r := range failed {
		fmt.Fprintf(text, "  <%s>: %s\r\n", r.Addr, oneLine(recipientReason(env, r)))
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
		fmt.Fprintf(status, "Final-Recipient: %s; %s\r\n", addressType(r.Addr), r.Addr)
		fmt.Fprintf(status, "Action: failed\r\n")
		se, isReply := parseReply(r.Reply)
		if isReply && permanentReply(se) {
			fmt.Fprintf(status, "Status: %s\r\n", statusOf(se))
		} else {
			fmt.Fprintf(status, "Status: %s\r\n", giveUpStatus)
		}
		if isReply {
			fmt.Fprintf(status, "Diagnostic-Code: smtp; %s\r\n", oneLine(r.Reply))
		}
		fmt.Fprintf(status, "Last-Attempt-Date: %s\r\n", now.Format(time.RFC1123Z))
	}

	headers, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/rfc822-headers"}})
	headers.Write(headerBlock(head))
	mw.Close()
	return b.Bytes()
}

// recipientReason says in words why failed recipient r of env was not
// delivered: the upstream's permanent refusal, or the reason the message
// was given up, with the last reply to r when there was one.
func recipientReason(env *spool.Envelope, r spool.Recipient) string {
	se, isReply := parseReply(r.Reply)
	switch {
	case isReply && permanentReply(se):
		return r.Reply
	case r.Reply != "" && !strings.Contains(env.LastError, r.Reply):
		return orDefault(env.LastError, "the message was given up") + " (the last reply for this recipient: " + r.Reply + ")"
	}
	return orDefault(env.LastError, orDefault(r.Reply, "the message was given up"))
}

// parseReply reads a reply as the queue records it ("550 5.1.1 text", or
// "550 text" without an enhanced code); false for anything else, such as
// the plain words of describe.
func parseReply(s string) (*smtp.SMTPError, bool) {
	codeText, rest, _ := strings.Cut(s, " ")
	code, err := strconv.Atoi(codeText)
	if len(codeText) != 3 || err != nil || code < 200 || code > 599 {
		return nil, false
	}
	se := &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: rest}
	if enh, msg, _ := strings.Cut(rest, " "); enh != "" {
		var c smtp.EnhancedCode
		if n, _ := fmt.Sscanf(enh, "%d.%d.%d", &c[0], &c[1], &c[2]); n == 3 && strings.Count(enh, ".") == 2 && c[0] == code/100 {
			se.EnhancedCode, se.Message = c, msg
		}
	}
	return se, true
}

// statusOf is the Status of a permanent refusal: its enhanced code, or
// 5.0.0 (permanent, unspecified) when it has none.
func statusOf(se *smtp.SMTPError) string {
	if se.EnhancedCode == smtp.NoEnhancedCode {
		return statusUndefined
	}
	return fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
}

// addressType is the address type of a Final-Recipient: utf-8 for an
// internationalised address (RFC 6533 §3), rfc822 otherwise.
func addressType(addr string) string {
	if isASCII([]byte(addr)) {
		return "rfc822"
	}
	return "utf-8"
}

// headerBlock returns the header of a message start, up to the empty line
// that ends it, with CRLF line ends (an app may have sent bare LF); a
// header longer than dsnHeaderBytes is cut at its last complete line.
func headerBlock(head []byte) []byte {
	cut := len(head) >= dsnHeaderBytes // readHead stopped: the last line may be cut
	if cut {
		head = head[:dsnHeaderBytes]
	}
	var out bytes.Buffer
	for len(head) > 0 {
		line, rest, complete := bytes.Cut(head, []byte("\n"))
		if !complete && cut {
			break
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // the end of the header
		}
		out.Write(line)
		out.WriteString("\r\n")
		head = rest
	}
	return out.Bytes()
}

// oneLine folds a (possibly multi-line) reply into one line, so it fits a
// DSN field and never brings a bare line end into the message.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// plainDuration writes d in words, in days, hours and minutes ("5 days",
// "1 hour 30 minutes"), as an administrator would write queue.max_age.
func plainDuration(d time.Duration) string {
	if d < time.Minute {
		return d.String()
	}
	var parts []string
	for _, u := range []struct {
		d          time.Duration
		one, other string
	}{{24 * time.Hour, "day", "days"}, {time.Hour, "hour", "hours"}, {time.Minute, "minute", "minutes"}} {
		if n := d / u.d; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, plural(int(n), u.one, u.other)))
			d -= n * u.d
		}
	}
	return strings.Join(parts, " ")
}

// readHead reads up to dsnHeaderBytes of a message.
func readHead(r io.Reader) []byte {
	b, _ := io.ReadAll(io.LimitReader(r, dsnHeaderBytes))
	return b
}
