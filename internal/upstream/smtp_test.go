package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// wantReply checks that err is a refusal carrying the SMTP reply code.
func wantReply(t *testing.T, err error, code int) *Error {
	t.Helper()
	e := wantKind(t, err, Refused)
	if e.Reply == nil || e.Reply.Code != code || e.Proto != events.SMTP {
		t.Errorf("reply %+v (%s), want %d", e.Reply, e.Proto, code)
	}
	return e
}

// The relay's SMTP login at the fake Exchange with a real token source:
// the client is ready for MAIL, the login observed once.
func TestSMTPFakeMS(t *testing.T) {
	w := newWorld(t)
	cred := w.source(t, testMailbox, testSecret)
	ctx := testCtx(t)
	c, err := SMTP(ctx, w.target(events.SMTP, testMailbox), cred)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(ctx, testMailbox, nil); err != nil {
		t.Errorf("MAIL after login: %v", err)
	}
	c.Quit(ctx)
	wantUpstreams(t, w.obs, "smtp:invoices:ok")
	if n := cred.invalidated.Load(); n != 0 {
		t.Errorf("token invalidated %d times", n)
	}
}

// Exchange's refusals of the login reach the caller as replies with the
// enhanced code and what they mean; a 535 drops the token.
func TestSMTPRefusals(t *testing.T) {
	t.Run("SMTP AUTH disabled", func(t *testing.T) {
		w := newWorld(t)
		w.fake.SetSMTPAuthDisabled(testMailbox, true)
		cred := w.source(t, testMailbox, testSecret)
		_, err := SMTP(testCtx(t), w.target(events.SMTP, testMailbox), cred)
		e := wantReply(t, err, 535)
		if got := FormatReply(e.Reply); !strings.HasPrefix(got, "535 5.7.139 ") {
			t.Errorf("reply %q", got)
		}
		wantReason(t, e, "XOAUTH2 login", "535 5.7.139", "Set-CASMailbox")
		if n := cred.invalidated.Load(); n != 1 {
			t.Errorf("token invalidated %d times, want 1", n)
		}
		wantUpstreams(t, w.obs, "smtp:invoices:rejected")
	})
	t.Run("not granted", func(t *testing.T) {
		w := newWorld(t)
		_, err := SMTP(testCtx(t), w.target(events.SMTP, notGranted), w.source(t, notGranted, testSecret))
		wantReason(t, wantReply(t, err, 535), "535 5.7.3", "New-ServicePrincipal")
	})
}

// A 4xx refusal (Exchange's three-connection limit) is Refused too: its
// reply tells the app itself to retry, and the token is kept.
func TestSMTPConcurrentLimit(t *testing.T) {
	fake, err := fakems.Start(t.Context(), fakems.Options{SMTPLimits: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	w := &world{fake: fake, obs: &recorder{}}
	fake.AddApp(fakems.App{ClientID: testClientID, Secret: testSecret})
	fake.AddMailbox(testMailbox, "mailbox-pw")
	fake.GrantApp(testClientID, testMailbox)
	cred := w.source(t, testMailbox, testSecret)
	ctx := testCtx(t)
	for range 3 {
		c, err := SMTP(ctx, w.target(events.SMTP, testMailbox), cred)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	_, err = SMTP(ctx, w.target(events.SMTP, testMailbox), cred)
	wantReason(t, wantReply(t, err, 432), "4.3.2", "3 concurrent SMTP connections")
	if n := cred.invalidated.Load(); n != 0 {
		t.Errorf("token invalidated %d times", n)
	}
}

// A server that refuses the long AUTH line as a syntax error (Dovecot
// submission) gets the token after "334".
func TestSMTPLongLineFallback(t *testing.T) {
	fake, err := fakems.Start(t.Context(), fakems.Options{SMTPMaxLineLength: 512})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	w := &world{fake: fake, obs: &recorder{}}
	fake.AddApp(fakems.App{ClientID: testClientID, Secret: testSecret})
	fake.AddMailbox(testMailbox, "mailbox-pw")
	fake.GrantApp(testClientID, testMailbox)
	ctx := testCtx(t)
	c, err := SMTP(ctx, w.target(events.SMTP, testMailbox), w.source(t, testMailbox, testSecret))
	if err != nil {
		t.Fatal(err)
	}
	c.Quit(ctx)
	wantUpstreams(t, w.obs, "smtp:invoices:ok")
}

// The probe `check` runs: MAIL FROM a sender the mailbox may not send as
// is refused (550 5.7.60) after a successful login, whose token is kept.
func TestProbeSMTP(t *testing.T) {
	w := newWorld(t)
	cred := w.source(t, testMailbox, testSecret)
	tgt := w.target(events.SMTP, testMailbox)
	ctx := testCtx(t)
	for _, sender := range []string{"", testMailbox, "billing@contoso.com"} {
		if err := ProbeSMTP(ctx, tgt, cred, sender); err != nil {
			t.Errorf("probe as %q: %v", sender, err)
		}
	}
	err := ProbeSMTP(ctx, tgt, cred, "ceo@contoso.com")
	e := wantReply(t, err, 550)
	wantReason(t, e, "MAIL FROM ceo@contoso.com", "550 5.7.60", "Add-RecipientPermission")
	if n := cred.invalidated.Load(); n != 0 {
		t.Errorf("token invalidated %d times", n)
	}
}

// Token failures are classified; the upstream is not contacted, nor
// observed. An unreachable upstream is Unavailable, and observed.
func TestSMTPUnavailable(t *testing.T) {
	t.Run("needs sign-in", func(t *testing.T) {
		w := newWorld(t)
		_, err := SMTP(testCtx(t), w.target(events.SMTP, testMailbox), w.source(t, testMailbox, "wrong"))
		wantKind(t, err, NeedsSignIn)
		wantUpstreams(t, w.obs)
	})
	t.Run("token endpoint down", func(t *testing.T) {
		w := newWorld(t)
		w.fake.FailTokenRequests(10, fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"})
		_, err := SMTP(testCtx(t), w.target(events.SMTP, testMailbox), w.source(t, testMailbox, testSecret))
		wantKind(t, err, Unavailable)
		wantUpstreams(t, w.obs)
	})
	t.Run("unreachable", func(t *testing.T) {
		obs := &recorder{}
		tgt := scriptedTarget(testutil.ClosedAddr(t), "none", obs)
		_, err := SMTP(testCtx(t), tgt, staticCreds{token: scriptToken})
		e := wantKind(t, err, Unavailable)
		if e.Reply != nil || e.Err == nil {
			t.Errorf("error %+v", e)
		}
		wantUpstreams(t, obs, "smtp:invoices:unavailable")
	})
	t.Run("TLS not trusted", func(t *testing.T) {
		w := newWorld(t)
		tgt := w.target(events.SMTP, testMailbox)
		tgt.TLS = nil // the system roots do not know the fake's CA
		_, err := SMTP(testCtx(t), tgt, w.source(t, testMailbox, testSecret))
		wantReason(t, wantKind(t, err, Unavailable), "STARTTLS")
		wantUpstreams(t, w.obs, "smtp:invoices:unavailable")
	})
}

// SMTPSize reads the SIZE the server advertises, without logging in.
func TestSMTPSize(t *testing.T) {
	w := newWorld(t)
	size, err := SMTPSize(testCtx(t), w.target(events.SMTP, testMailbox))
	if err != nil || size != 157286400 {
		t.Errorf("SIZE %d, %v", size, err)
	}
	wantUpstreams(t, w.obs)
}

func TestFormatReply(t *testing.T) {
	tests := []struct {
		se   smtp.SMTPError
		want string
	}{
		{smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}, "535 5.7.3 Authentication unsuccessful"},
		{smtp.SMTPError{Code: 421, EnhancedCode: smtp.NoEnhancedCode, Message: "closing"}, "421 closing"},
		{smtp.SMTPError{Code: 500, Message: "Line too long"}, "500 Line too long"},
	}
	for _, tt := range tests {
		if got := FormatReply(&tt.se); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.se, got, tt.want)
		}
	}
}

// The error says what failed, of which kind, and wraps its cause.
func TestErrorText(t *testing.T) {
	cause := errors.New("connection refused")
	e := &Error{Kind: Unavailable, Proto: events.IMAP, Addr: "127.0.0.1:993", Reason: "cannot connect", Err: cause}
	if got := e.Error(); got != "imap login to 127.0.0.1:993: unavailable: cannot connect: connection refused" {
		t.Errorf("%q", got)
	}
	if !errors.Is(e, cause) {
		t.Error("cause not wrapped")
	}
	if Refused.String() != "refused" || NeedsSignIn.String() != "needs_sign_in" || Kind(9).String() != "kind(9)" {
		t.Error("kind names")
	}
}

// Only a connection cut after it was made is tried again: not a refused
// dial, a timeout, a certificate the relay refuses, a reply, or a login
// whose context ended.
func TestCutOff(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	live, dead := context.Background(), func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}()
	unavailable := func(reason string, err error) error {
		return &Error{Kind: Unavailable, Proto: events.SMTP, Reason: reason, Err: err}
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"reset before the greeting", live, unavailable("greeting failed", reset), true},
		{"reset as the dial completes", live, unavailable(reasonCannotConnect, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNRESET}), true},
		{"handshake garbage", live, unavailable("STARTTLS failed", errors.New("tls: first record does not look like a TLS handshake")), true},
		{"dial refused", live, unavailable(reasonCannotConnect, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), false},
		{"timeout", live, unavailable("greeting failed", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}), false},
		{"certificate refused", live, unavailable("STARTTLS failed", &tls.CertificateVerificationError{Err: errors.New("unknown authority")}), false},
		{"a reply", live, &Error{Kind: Refused, Proto: events.SMTP, Reply: &smtp.SMTPError{Code: 421}}, false},
		{"context ended", dead, unavailable("greeting failed", reset), false},
		{"no error", live, nil, false},
	} {
		if got := cutOff(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: cutOff %v, want %v", tc.name, got, tc.want)
		}
	}
}
