package graph

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

const (
	mbox     = "invoices@contoso.onmicrosoft.com"
	clientID = "11111111-1111-1111-1111-111111111111"
	secret   = "s3cret"
)

// world is a fake Microsoft 365 with one mailbox the app may send as.
func world(t *testing.T) *fakems.Server {
	t.Helper()
	s, err := fakems.Start(t.Context(), fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.AddMailbox(mbox, "")
	s.AddApp(fakems.App{ClientID: clientID, Secret: secret})
	s.GrantApp(clientID, mbox)
	return s
}

func newTokens(t *testing.T, s *fakems.Server) *testutil.GraphTokens {
	return testutil.NewGraphTokens(s.TokenURL, clientID, secret, s.HTTPClient())
}

// fastSleep is Retry-After divided by 1000: the waits are taken, in order,
// without the test waiting seconds.
func fastSleep(ctx context.Context, d time.Duration) error { return sleep(ctx, d/1000) }

func client(s *fakems.Server, o ...func(*Options)) *Client {
	opts := Options{URL: s.GraphURL, Mailbox: mbox, HTTPClient: s.HTTPClient(), Sleep: fastSleep}
	for _, f := range o {
		f(&opts)
	}
	return New(opts)
}

// message builds a MIME message with attachments of the given sizes, To
// b@example.com and Cc c@example.com.
func message(t *testing.T, sizes ...int) ([]byte, [][]byte) {
	return testutil.MIMEMessage([]string{"From: " + mbox, "To: Bee <b@example.com>", "Cc: c@example.com", "Subject: invoice",
		fmt.Sprintf("Message-ID: <inv-%d@erp.example>", rand.Int()), "X-ERP-Batch: 42"}, sizes...)
}

func send(t *testing.T, c *Client, tk TokenSource, msg []byte, rcpts ...string) (Result, error) {
	t.Helper()
	return c.Send(t.Context(), Message{Rcpts: rcpts, Body: bytes.NewReader(msg), Size: int64(len(msg)), SaveToSentItems: true, Host: "relay.test", Tokens: tk})
}

// TestSendEnvelopeIsTheTruth: a Bcc only in the envelope is delivered, a
// Cc only in the header is not; the app's X- header and Message-ID go as
// they are.
func TestSendEnvelopeIsTheTruth(t *testing.T) {
	s := world(t)
	msg, _ := message(t)
	res, err := send(t, client(s), newTokens(t, s), msg, "b@example.com", "hidden@example.com")
	if err != nil {
		t.Fatal(err)
	}
	got := s.GraphMessages()
	if len(got) != 1 || res.Via != "sendMail" {
		t.Fatalf("%d messages, via %s", len(got), res.Via)
	}
	if r := strings.Join(got[0].Recipients, ","); r != "b@example.com,hidden@example.com" {
		t.Errorf("Graph delivers to %s", r)
	}
	if !bytes.Contains(got[0].MIME, []byte("X-ERP-Batch: 42\r\n")) || got[0].InternetMessageID != res.MessageID {
		t.Errorf("headers lost: %s vs %s", got[0].InternetMessageID, res.MessageID)
	}
	_, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	if !bytes.HasSuffix(got[0].MIME, body) {
		t.Error("body changed")
	}
}

// TestSendLarge: a 3.5 MB message goes as a draft with its attachment
// POSTed; one of 4.6 MB with an attachment through an upload session and a
// small second one by POST; all byte for byte.
func TestSendLarge(t *testing.T) {
	t.Run("3.5MB", func(t *testing.T) { testSendLarge(t, 2_600_000) })
	t.Run("4.6MB", func(t *testing.T) { testSendLarge(t, 3_300_000, 100_000) })
}

func testSendLarge(t *testing.T, sizes ...int) {
	s := world(t)
	msg, atts := message(t, sizes...)
	res, err := send(t, client(s), newTokens(t, s), msg, "b@example.com")
	if err != nil {
		t.Fatal(err)
	}
	got := s.GraphMessages()
	if res.Via != "draft" || len(got) != 1 || len(got[0].Attachments) != len(sizes) {
		t.Fatalf("via %s, %d messages", res.Via, len(got))
	}
	for i, a := range got[0].Attachments {
		if a.SHA256 != sha256.Sum256(atts[i]) || a.Name != fmt.Sprintf("inv%d.pdf", i) || a.ContentType != "application/pdf" {
			t.Errorf("attachment %d: %s %s %d bytes, changed", i, a.Name, a.ContentType, a.Size)
		}
	}
	for i, a := range got[0].Attachments {
		if a.Uploaded != (len(atts[i]) >= smallAttachment) {
			t.Errorf("attachment %d of %d bytes: uploaded %v", i, len(atts[i]), a.Uploaded)
		}
	}
	if st := s.GraphStats(); st.LargestRequest > RequestLimit {
		t.Errorf("a request of %d bytes", st.LargestRequest)
	}
	if strings.Join(got[0].Recipients, ",") != "b@example.com" {
		t.Errorf("recipients %v", got[0].Recipients)
	}
}

// TestSendThrottled: a storm of 429s with Retry-After is waited out.
func TestSendThrottled(t *testing.T) {
	s := world(t)
	s.FailGraphSends(4, fakems.GraphFailure{Status: 429, RetryAfter: 3 * time.Second})
	msg, _ := message(t)
	if _, err := send(t, client(s), newTokens(t, s), msg, "b@example.com"); err != nil {
		t.Fatal(err)
	}
	if n := len(s.GraphMessages()); n != 1 {
		t.Fatalf("%d messages", n)
	}
	s.FailGraphSends(maxAttempts, fakems.GraphFailure{Status: 503})
	_, err := send(t, client(s), newTokens(t, s), msg, "b@example.com")
	var ge *Error
	if !asError(err, &ge) || ge.Status != 503 || !ge.Temporary() {
		t.Fatalf("after %d 503s: %v", maxAttempts, err)
	}
}

// TestSend504ThatHadSent: the 504 came after the message was sent; Sent
// Items shows it, so it is not sent again. Without Mail.Read it is, and the
// duplicate is reported.
func TestSend504ThatHadSent(t *testing.T) {
	s := world(t)
	msg, _ := message(t)
	s.FailGraphSends(1, fakems.GraphFailure{Status: 504, AfterSend: true})
	res, err := send(t, client(s), newTokens(t, s), msg, "b@example.com")
	if err != nil || !res.FoundInSent || res.DuplicatePossible || len(s.GraphMessages()) != 1 {
		t.Fatalf("%+v %v, %d sent", res, err, len(s.GraphMessages()))
	}

	s.SetGraphPermissions(clientID, "Mail.Send")
	dups := 0
	c := client(s, func(o *Options) { o.OnDuplicatePossible = func() { dups++ } })
	s.FailGraphSends(1, fakems.GraphFailure{Status: 504, AfterSend: true})
	res, err = send(t, c, newTokens(t, s), msg, "b@example.com")
	if err != nil || !res.DuplicatePossible || dups != 1 || len(s.GraphMessages()) != 3 {
		t.Fatalf("%+v %v, %d sent, %d duplicates reported", res, err, len(s.GraphMessages()), dups)
	}
}

// TestSendTimeoutThatHadSent: the answer came after the client gave up
// (its timeout), though Graph had sent it: found in Sent Items, not sent
// again.
func TestSendTimeoutThatHadSent(t *testing.T) {
	s := world(t)
	msg, _ := message(t)
	s.FailGraphSends(1, fakems.GraphFailure{AfterSend: true, Delay: 3 * time.Second})
	c := client(s, func(o *Options) {
		o.HTTPClient = s.HTTPClient()
		o.HTTPClient.Timeout = 300 * time.Millisecond
	})
	res, err := send(t, c, newTokens(t, s), msg, "b@example.com")
	if err != nil || !res.FoundInSent || len(s.GraphMessages()) != 1 {
		t.Fatalf("%+v %v, %d sent", res, err, len(s.GraphMessages()))
	}
}

// TestSendConcurrency: 16 senders through one Client never pass Graph's 4
// concurrent requests (the fake would answer 429).
func TestSendConcurrency(t *testing.T) {
	s := world(t)
	s.SetGraphLatency(5 * time.Millisecond)
	c, tk := client(s), newTokens(t, s)
	msg, _ := message(t)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := send(t, c, tk, msg, "b@example.com"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if st := s.GraphStats(); st.Throttled != 0 || len(s.GraphMessages()) != 16 {
		t.Fatalf("%+v, %d sent", st, len(s.GraphMessages()))
	}
}

// TestSendRefusals: Graph's refusals reach the caller with their codes.
func TestSendRefusals(t *testing.T) {
	s := world(t)
	msg, _ := message(t)
	tk := newTokens(t, s)
	_, err := send(t, client(s), tk, bytes.ReplaceAll(msg, []byte("From: "+mbox), []byte("From: ceo@contoso.onmicrosoft.com")), "b@example.com")
	var ge *Error
	if !asError(err, &ge) || ge.Status != 403 || ge.Code != "ErrorSendAsDenied" {
		t.Errorf("send as: %v", err)
	}
	s.SetMailboxRESTDisabled(mbox, true)
	if _, err = send(t, client(s), tk, msg, "b@example.com"); !asError(err, &ge) || ge.Code != "MailboxNotEnabledForRESTAPI" {
		t.Errorf("REST: %v", err)
	}
	s.SetMailboxRESTDisabled(mbox, false)
	s.SetGraphPermissions(clientID, "Mail.Send")
	big, _ := message(t, 3_500_000)
	if _, err = send(t, client(s), newTokens(t, s), big, "b@example.com"); !asError(err, &ge) || ge.Code != "ErrorAccessDenied" || ge.Op != "create draft" {
		t.Errorf("no Mail.ReadWrite: %v", err)
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}
