package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// What the queue records of a failure, and whether it retries: the
// upstream's reply as it is, plain words otherwise, never an address or a
// network error (those go to the log).
func TestDescribeAndPermanent(t *testing.T) {
	netErr := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, Err: errors.New("connection refused")}
	quota := &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
		Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"}
	for _, tc := range []struct {
		name      string
		err       error
		want      string
		permanent bool
		reply     bool
		reason    string
	}{
		{"550 at RCPT", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"},
			"550 5.1.1 User unknown", true, true, ReasonRefused},
		{"451 at MAIL", &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try later"},
			"451 4.3.0 Try later", false, true, ReasonTemporary},
		{"a reply without an enhanced code", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.NoEnhancedCode, Message: "Rejected"},
			"554 Rejected", true, true, ReasonRefused},
		{"Exchange's daily quota", quota, "554 5.2.0 " + quota.Message, false, true, ReasonQuota},
		{"Exchange's throttling", &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
			Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"},
			"432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", false, true, ReasonLimit},
		{"the relay's own pace", errSendingLimit(testMailbox, config.DefaultLimits()),
			"451 4.7.0 " + errSendingLimit(testMailbox, config.DefaultLimits()).Reply.Message, false, true, ReasonLimit},
		{"the relay's daily count", errDailyLimit(testMailbox, 10, time.Time{}),
			"451 4.7.0 " + errDailyLimit(testMailbox, 10, time.Time{}).Reply.Message, false, true, ReasonQuota},
		{"the mailbox's sending stopped", ErrClosed, "451 4.3.2 " + ErrClosed.Message, false, true, ReasonInterrupted},
		{"Exchange's 432 at login", &upstream.Error{Kind: upstream.Refused, Reply: &smtp.SMTPError{Code: 432,
			EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded"}, Reason: "AUTH failed"},
			"432 4.3.2 Concurrent connections limit exceeded", false, true, ReasonLimit},
		{"login refused", &upstream.Error{Kind: upstream.Refused, Reply: &smtp.SMTPError{Code: 535,
			EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful"}, Reason: "AUTH failed"},
			"535 5.7.139 Authentication unsuccessful", false, true, ReasonLoginRefused},
		{"upstream unreachable", &upstream.Error{Kind: upstream.Unavailable, Addr: "127.0.0.1:1", Reason: "cannot connect", Err: netErr},
			"the upstream server was not available (cannot connect)", false, false, ReasonUnavailable},
		{"token needs a sign-in", &upstream.Error{Kind: upstream.NeedsSignIn, Reason: "the refresh token expired"},
			"the account cannot get a token and must be signed in again by an administrator (the refresh token expired)", false, false,
			ReasonNeedsSignIn},
		{"lost at DATA", &LostError{Stage: stageData, Err: netErr}, "the connection to the upstream server was lost during DATA", false, false,
			ReasonConnectionLost},
		{"timed out", fmt.Errorf("waiting for the upstream: %w", context.DeadlineExceeded), "the attempt timed out", false, false,
			ReasonTimeout},
		{"the relay stopping", fmt.Errorf("waiting to send as %s: %w", testMailbox, context.Canceled),
			"the attempt was interrupted: the relay was stopping", false, false, ReasonInterrupted},
		{"the body unreadable", &smtpclient.ReadError{Err: errors.New("read body/x: input/output error")},
			"the message could not be read from the relay's queue", false, false, ReasonUnreadable},
		{"anything else", errors.New("internal detail at 127.0.0.1"), "the attempt failed (the relay's log has the details)", false, false,
			ReasonOther},
	} {
		if got := describe(tc.err); got != tc.want {
			t.Errorf("%s: describe %q, want %q", tc.name, got, tc.want)
		}
		if got := permanent(tc.err); got != tc.permanent {
			t.Errorf("%s: permanent %v, want %v", tc.name, got, tc.permanent)
		}
		if got := isReply(tc.err); got != tc.reply {
			t.Errorf("%s: isReply %v, want %v", tc.name, got, tc.reply)
		}
		if got := reasonOf(tc.err); got != tc.reason {
			t.Errorf("%s: reasonOf %q, want %q", tc.name, got, tc.reason)
		}
		if _, ok := parseReply(describe(tc.err)); ok != tc.reply {
			t.Errorf("%s: parseReply(%q) %v, want %v", tc.name, describe(tc.err), ok, tc.reply)
		}
	}
}

// parseReply reads back what describe wrote of a reply, and nothing else.
func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		code int
		enh  smtp.EnhancedCode
		msg  string
	}{
		{"550 5.1.1 User unknown", true, 550, smtp.EnhancedCode{5, 1, 1}, "User unknown"},
		{"451 Try again later", true, 451, smtp.NoEnhancedCode, "Try again later"},
		{"250 2.0.0 OK <x@y> [Hostname=z]", true, 250, smtp.EnhancedCode{2, 0, 0}, "OK <x@y> [Hostname=z]"},
		{"550 4.1.1 class differs", true, 550, smtp.NoEnhancedCode, "4.1.1 class differs"},
		{"550", true, 550, smtp.NoEnhancedCode, ""},
		{"the upstream server was not available (cannot connect)", false, 0, smtp.EnhancedCode{}, ""},
		{"55 short", false, 0, smtp.EnhancedCode{}, ""},
		{"999 too high", false, 0, smtp.EnhancedCode{}, ""},
		{"", false, 0, smtp.EnhancedCode{}, ""},
	} {
		se, ok := parseReply(tc.in)
		if ok != tc.ok || ok && (se.Code != tc.code || se.EnhancedCode != tc.enh || se.Message != tc.msg) {
			t.Errorf("parseReply(%q) = %+v, %v; want %d %v %q, %v", tc.in, se, ok, tc.code, tc.enh, tc.msg, tc.ok)
		}
	}
}

func TestPlainDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * 24 * time.Hour:             "5 days",
		time.Hour:                      "1 hour",
		90 * time.Minute:               "1 hour 30 minutes",
		36*time.Hour + time.Minute:     "1 day 12 hours 1 minute",
		24*time.Hour + 30*time.Second:  "1 day",
		30 * time.Second:               "30s",
		2*time.Minute + 10*time.Second: "2 minutes",
	} {
		if got := plainDuration(d); got != want {
			t.Errorf("plainDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// The DSN quotes the original's header only, with CRLF line ends whatever
// the app sent, and never half a line of a header cut at the bound.
func TestHeaderBlock(t *testing.T) {
	long := "X-Long: " + strings.Repeat("a", dsnHeaderBytes) + "\r\n"
	for _, tc := range []struct{ name, in, want string }{
		{"CRLF", "Subject: s\r\nFrom: a@b\r\n\r\nbody\r\n", "Subject: s\r\nFrom: a@b\r\n"},
		{"bare LF", "Subject: s\nFrom: a@b\n\nbody\n", "Subject: s\r\nFrom: a@b\r\n"},
		{"no body", "Subject: s\r\nFrom: a@b", "Subject: s\r\nFrom: a@b\r\n"},
		{"folded", "Subject: a\r\n b\r\n\r\nbody", "Subject: a\r\n b\r\n"},
		{"cut at the bound", ("Subject: s\r\n" + long)[:dsnHeaderBytes], "Subject: s\r\n"},
	} {
		if got := string(headerBlock([]byte(tc.in))); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// Each failed recipient is reported in the fields of RFC 3464 §2.3: a
// permanent refusal with its reply's status and text, one given up with
// the give-up status, the reason in words and its last reply; ORCPT and
// ENVID are returned; an internationalised address is utf-8 (RFC 6533).
func TestBuildDSNFields(t *testing.T) {
	created := time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC)
	env := &spool.Envelope{ID: "01hqwkvsm0ydm1m6fmh95q9qtp", Account: testAccount.Name, Mailbox: testMailbox,
		From: appSender, Mail: spool.Mail{EnvID: "inv-4711"}, Created: created, MessageID: "<inv-4711@contoso.com>",
		LastError: "the message could not be delivered within 5 days; the last attempt failed: the upstream server was not available (cannot connect)",
		Recipients: []spool.Recipient{
			{Addr: "gone@example.net", State: spool.Failed, Reply: "550 5.1.1 User unknown", ORcpt: "rfc822;Gone@example.net"},
			{Addr: "slow@example.net", State: spool.Failed, Reply: "451 4.3.0 Try later"},
			{Addr: "jörg@example.net", State: spool.Failed},
		}}
	raw := buildDSN(env, env.Recipients, []byte(testMessage), "relay.test", created.Add(5*24*time.Hour), statusExpired)
	d := parseDSN(t, raw)
	if d.perMessage.Get("Original-Envelope-Id") != "inv-4711" || d.perMessage.Get("Arrival-Date") != created.Format(time.RFC1123Z) {
		t.Errorf("per-message fields %v", d.perMessage)
	}
	if got := d.header.Get("Message-ID"); got != "<dsn."+env.ID+"@relay.test>" {
		t.Errorf("Message-ID %q", got)
	}
	want := []map[string]string{
		{"Original-Recipient": "rfc822;Gone@example.net", "Final-Recipient": "rfc822; gone@example.net", "Status": "5.1.1",
			"Diagnostic-Code": "smtp; 550 5.1.1 User unknown"},
		{"Final-Recipient": "rfc822; slow@example.net", "Status": "5.4.7", "Diagnostic-Code": "smtp; 451 4.3.0 Try later"},
		{"Final-Recipient": "utf-8; jörg@example.net", "Status": "5.4.7", "Diagnostic-Code": ""},
	}
	if len(d.recipients) != len(want) {
		t.Fatalf("%d recipient groups, want %d", len(d.recipients), len(want))
	}
	for i, w := range want {
		for k, v := range w {
			if got := d.recipients[i].Get(k); got != v {
				t.Errorf("recipient %d %s: %q, want %q", i+1, k, got, v)
			}
		}
		if d.recipients[i].Get("Action") != "failed" {
			t.Errorf("recipient %d: Action %q", i+1, d.recipients[i].Get("Action"))
		}
	}
	for _, line := range []string{
		"<gone@example.net>: 550 5.1.1 User unknown",
		"<slow@example.net>: " + env.LastError + " (the last reply for this recipient: 451 4.3.0 Try later)",
		"<jörg@example.net>: " + env.LastError,
		"Message-ID of the message: <inv-4711@contoso.com>",
	} {
		if !strings.Contains(d.text, line) {
			t.Errorf("DSN text %q lacks %q", d.text, line)
		}
	}
}

// A DSN with 8-bit content (an internationalised address) is queued with
// BODY=8BITMIME and the original's SMTPUTF8, so the upstream is told what
// it carries.
func TestNotifyMarks8Bit(t *testing.T) {
	w := newQueueWorld(t, queueOptions{target: unreachable(t)})
	env := &spool.Envelope{ID: "01hqwkvsm0ydm1m6fmh95q9qtp", Account: testAccount.Name, Mailbox: testMailbox,
		From: "jörg@example.net", Mail: spool.Mail{SMTPUTF8: true}, Created: w.clock.Now(),
		Recipients: []spool.Recipient{{Addr: "gone@example.net", State: spool.Failed, Reply: "550 5.1.1 User unknown"}}}
	w.queue.notify(testCtx(t), env, env.Recipients, statusUndefined, testLogger(t))
	envs := active(t, w.spool)
	if len(envs) != 1 {
		t.Fatalf("%d messages queued, want the DSN", len(envs))
	}
	if m := envs[0].Mail; m.Body != "8BITMIME" || !m.SMTPUTF8 || !envs[0].Notification {
		t.Errorf("DSN envelope %+v", envs[0])
	}
}
