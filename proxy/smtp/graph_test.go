package smtp

// The Graph path (issue "Microsoft Graph path") end to end: an app speaks
// SMTP to the relay's front end, the relay sends through the fake's Graph
// over HTTPS with the fake's certificate, and the fake reassembles what it
// would deliver.

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"

	gosasl "github.com/emersion/go-sasl"
)

// raceEnabled is set under the race detector (race_test.go), which makes
// the 40 MB case take over a minute.
var raceEnabled bool

func (w *world) waitGraph(n int) []fakems.GraphMessage {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msgs, err := w.ms.WaitGraphMessages(ctx, n)
	if err != nil {
		w.t.Fatalf("waiting for %d Graph messages: %v", n, err)
	}
	return msgs
}

// Envelope-only recipients (Bcc, as Python's smtplib send_message puts
// them: out of the header, into RCPT) are delivered; a header recipient
// the envelope lacks is not. The app sees Graph's 202 as 250.
func TestGraphEnvelopeIsTheTruthSmtplib(t *testing.T) {
	py := testutil.Tool(t, "python3")
	w := newWorld(t, worldOptions{upstream: "graph"})
	host, port, _ := strings.Cut(w.addr, ":")
	script := `
import smtplib, sys
from email.message import EmailMessage
host, port, user, pw, frm = sys.argv[1:]
m = EmailMessage()
m["From"], m["To"], m["Cc"], m["Bcc"], m["Subject"] = frm, "customer@example.net", "cc@example.net", "hidden@example.net", "invoice 4711"
m["Message-ID"] = "<inv4711@erp.example>"
m.set_content("Invoice 4711.")
with smtplib.SMTP(host, int(port), timeout=30) as s:
    s.login(user, pw)
    # the app keeps cc@example.net out of the envelope: it must not get it
    refused = s.send_message(m, to_addrs=["customer@example.net", "hidden@example.net"])
    print("refused", refused)
`
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script, host, port, username, password, mailbox).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "refused {}") {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	m := w.waitGraph(1)[0]
	if got := strings.Join(m.Recipients, ","); got != "customer@example.net,hidden@example.net" {
		t.Errorf("Graph delivers to %s, want the envelope's customer and hidden", got)
	}
	if m.InternetMessageID != "<inv4711@erp.example>" || m.Via != "sendMail" || m.AppOnly != true {
		t.Errorf("%+v", m)
	}
	if !strings.Contains(w.log.String(), "removed_header_recipients=[cc@example.net]") {
		t.Error("the removed header recipient was not logged")
	}
	if n := len(w.ms.Messages()); n != 0 {
		t.Errorf("%d messages went over SMTP", n)
	}
}

// A 1 KB, a 3.5 MB, a 4.9 MB and a 40 MB message (with attachments) arrive
// byte for byte after the fake reassembles them, in direct and queue
// delivery (40 MB not with -short or the race detector).
func TestGraphSizes(t *testing.T) {
	for _, queue := range []bool{false, true} {
		t.Run(fmt.Sprintf("queue=%v", queue), func(t *testing.T) {
			w := newWorld(t, worldOptions{upstream: "graph", queue: queue, ms: fakems.Options{}})
			sizes := [][]int{{600}, {2_600_000}, {3_400_000, 200_000}}
			if !testing.Short() && !raceEnabled {
				sizes = append(sizes, []int{30_000_000, 100_000})
			}
			for i, sz := range sizes {
				msg, atts := testutil.MIMEMessage([]string{"From: " + mailbox, "To: " + recipient,
					fmt.Sprintf("Message-ID: <size%d@erp.example>", i), "Subject: sizes"}, sz...)
				c := w.login()
				text, err := send(c, mailbox, []string{recipient}, string(msg))
				if err != nil {
					t.Fatalf("%d bytes: %v", len(msg), err)
				}
				c.Quit()
				got := w.waitGraph(i + 1)[i]
				// What Graph would deliver: sendMail's MIME as it came, a
				// draft's reassembled with the attachments uploaded.
				delivered, err := testutil.Attachments(got.MIME)
				if err != nil || len(delivered) != len(atts) {
					t.Fatalf("%d bytes: %d attachments (%v), want %d (via %s)", len(msg), len(delivered), err, len(atts), got.Via)
				}
				for j := range atts {
					if sha256.Sum256(delivered[j]) != sha256.Sum256(atts[j]) {
						t.Errorf("%d bytes, attachment %d changed", len(msg), j)
					}
				}
				if !queue && !strings.Contains(text, "queued by Microsoft Graph") {
					t.Errorf("reply %q", text)
				}
				t.Logf("%d bytes via %s", len(msg), got.Via)
			}
		})
	}
}

// 429s with Retry-After are waited out; the app never sees them. Past what
// the relay waits, the app gets 451 4.7.0 and keeps the message.
func TestGraphThrottled(t *testing.T) {
	w := newWorld(t, worldOptions{upstream: "graph"})
	w.ms.FailGraphSends(2, fakems.GraphFailure{Status: 429, RetryAfter: time.Second})
	c := w.login()
	msg := message(mailbox, recipient, "throttled", "body")
	if _, err := send(c, mailbox, []string{recipient}, msg); err != nil {
		t.Fatal(err)
	}
	w.ms.FailGraphSends(1, fakems.GraphFailure{Status: 429, RetryAfter: time.Hour})
	_, err := send(c, mailbox, []string{recipient}, msg)
	wantCode(t, err, 451, "4.7.0")
	w.ms.FailGraphSends(1, fakems.GraphFailure{Status: 503, RetryAfter: time.Hour})
	_, err = send(c, mailbox, []string{recipient}, msg)
	wantCode(t, err, 451, "4.4.1")
	if n := len(w.ms.GraphMessages()); n != 1 {
		t.Errorf("%d messages sent", n)
	}
}

// A 504 after Graph had sent the message: Sent Items has it, the app gets
// 250, and there is no second copy.
func TestGraph504ThatHadSent(t *testing.T) {
	w := newWorld(t, worldOptions{upstream: "graph"})
	w.ms.FailGraphSends(1, fakems.GraphFailure{Status: 504, AfterSend: true})
	if _, err := send(w.login(), mailbox, []string{recipient}, message(mailbox, recipient, "504", "body")); err != nil {
		t.Fatal(err)
	}
	if n := len(w.ms.GraphMessages()); n != 1 {
		t.Errorf("%d copies sent", n)
	}
	if !strings.Contains(w.log.String(), "the message is in Sent Items: not sent again") {
		t.Error("not logged")
	}
}

// Graph's refusals reach the app as 550 5.7.x with the reason and the fix
// in plain words (and the log).
func TestGraphRefusals(t *testing.T) {
	w := newWorld(t, worldOptions{upstream: "graph"})
	c := w.login()
	other := "ar@billing.contoso.com" // allowed_from, but no Send As
	_, err := send(c, other, []string{recipient}, message(other, recipient, "send as", "body"))
	if se := wantCode(t, err, 550, "5.7.60"); !strings.Contains(se.Message, "Add-RecipientPermission") {
		t.Errorf("send as: %q", se.Message)
	}
	w.ms.SetMailboxRESTDisabled(mailbox, true)
	_, err = send(c, mailbox, []string{recipient}, message(mailbox, recipient, "rest", "body"))
	if se := wantCode(t, err, 550, "5.7.1"); !strings.Contains(se.Message, "MailboxNotEnabledForRESTAPI") {
		t.Errorf("REST: %q", se.Message)
	}
	w.ms.SetMailboxRESTDisabled(mailbox, false)
	w.ms.SetGraphPermissions(clientID, "Mail.Send")
	big, _ := testutil.MIMEMessage([]string{"From: " + mailbox, "To: " + recipient}, 3_500_000)
	_, err = send(c, mailbox, []string{recipient}, string(big))
	if se := wantCode(t, err, 550, "5.7.1"); !strings.Contains(se.Message, "Mail.ReadWrite") {
		t.Errorf("no Mail.ReadWrite: %q", se.Message)
	}
	if !strings.Contains(w.log.String(), "fix=") {
		t.Error("no fix in the log")
	}
	if n := len(w.ms.GraphMessages()); n != 0 {
		t.Errorf("%d messages sent", n)
	}
}

// ErrorAccessDenied at send (no Mail.Send): the new Graph token carries no
// Mail.Send role, and the app is told which permission and PowerShell.
func TestGraphAccessDenied(t *testing.T) {
	w := newWorld(t, worldOptions{upstream: "graph"})
	w.ms.SetGraphPermissions(clientID)
	_, err := send(w.login(), mailbox, []string{recipient}, message(mailbox, recipient, "denied", "body"))
	if se := wantCode(t, err, 550, "5.7.1"); !strings.Contains(se.Message, "Mail.Send") || !strings.Contains(se.Message, "New-ManagementRoleAssignment") {
		t.Errorf("%q", se.Message)
	}
}

// upstream: auto with SMTP AUTH off for the tenant: the first login gets
// 535 5.7.139 from Exchange, the relay moves to Graph (logged once), the
// app's AUTH and message succeed, and the next message goes through Graph
// without trying SMTP.
func TestGraphAutoSwitches(t *testing.T) {
	for _, queue := range []bool{false, true} {
		t.Run(fmt.Sprintf("queue=%v", queue), func(t *testing.T) {
			w := newWorld(t, worldOptions{upstream: "auto", queue: queue})
			w.ms.SetTenantSMTPAuthDisabled(true)
			for i := range 2 {
				if _, err := send(w.login(), mailbox, []string{recipient}, message(mailbox, recipient, fmt.Sprint("auto ", i), "body")); err != nil {
					t.Fatal(err)
				}
			}
			w.waitGraph(2)
			if n := strings.Count(w.log.String(), "mail now goes through Microsoft Graph"); n != 1 {
				t.Errorf("the move was logged %d times", n)
			}
			if n := len(w.ms.Messages()); n != 0 {
				t.Errorf("%d went over SMTP", n)
			}
		})
	}
}

// upstream: auto with SMTP AUTH on stays on SMTP.
func TestGraphAutoStaysOnSMTP(t *testing.T) {
	w := newWorld(t, worldOptions{upstream: "auto"})
	if _, err := send(w.login(), mailbox, []string{recipient}, message(mailbox, recipient, "smtp", "body")); err != nil {
		t.Fatal(err)
	}
	w.waitMessages(1)
	if n := len(w.ms.GraphMessages()); n != 0 {
		t.Errorf("%d went through Graph", n)
	}
}

// Queue mode: 250 at once, delivered through Graph by the worker; a
// refusal fails the message (no retry) with the reason.
func TestGraphQueue(t *testing.T) {
	w := newWorld(t, worldOptions{upstream: "graph", queue: true})
	text, err := send(w.login(), mailbox, []string{recipient, "bcc@example.net"}, message(mailbox, recipient, "queued", "body"))
	if err != nil || !queuedAs.MatchString(text) {
		t.Fatalf("%q %v", text, err)
	}
	m := w.waitGraph(1)[0]
	if !slices.Equal(m.Recipients, []string{recipient, "bcc@example.net"}) {
		t.Errorf("recipients %v", m.Recipients)
	}
}

// Graph token failures at AUTH: the identity platform down is 454 4.7.0
// (the app retries), a refused client secret 535 5.7.8 needs attention.
func TestGraphTokenFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failure fakems.TokenFailure
		code    int
		enh     string
	}{
		{"unavailable", fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"}, 454, "4.7.0"},
		{"bad secret", fakems.TokenFailure{Status: 401, Error: "invalid_client", AADSTS: 7000215, Description: "Invalid client secret provided."}, 535, "5.7.8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{upstream: "graph", tokenFailure: &tc.failure})
			err := w.dial().Auth(gosasl.NewPlainClient("", username, password))
			wantCode(t, err, tc.code, tc.enh)
			if !strings.Contains(w.log.String(), "Graph token") {
				t.Error("the log does not say it was the Graph token")
			}
		})
	}
}
