package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// wantKind checks that err is an *Error of kind k for IMAP and returns it.
func wantKind(t *testing.T, err error, k Kind) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want *Error", err, err)
	}
	if e.Kind != k {
		t.Errorf("kind %s, want %s: %v", e.Kind, k, err)
	}
	return e
}

func wantReason(t *testing.T, e *Error, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(e.Reason, s) {
			t.Errorf("reason %q lacks %q", e.Reason, s)
		}
	}
}

// The relay's login at the fake Exchange with a real token source: the OK
// carries no capabilities, so they are asked for; the session is usable
// after it (EXAMINE, LOGOUT), and the observer heard one success.
func TestIMAPFakeMS(t *testing.T) {
	w := newWorld(t)
	cred := w.source(t, testMailbox, testSecret)
	ctx := testCtx(t)
	s, err := IMAP(ctx, w.target(events.IMAP, testMailbox), cred)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"IMAP4rev1", "MOVE", "UIDPLUS"} {
		if !hasCap(s.Caps, c) {
			t.Errorf("caps %q lack %s", s.Caps, c)
		}
	}
	if s.Text != "AUTHENTICATE completed." {
		t.Errorf("text %q", s.Text)
	}
	if _, ok := s.Conn.(*tls.Conn); !ok {
		t.Errorf("conn is a %T, want TLS", s.Conn)
	}
	if len(s.Warnings) != 0 || len(s.Pending) != 0 {
		t.Errorf("warnings %q, pending %q", s.Warnings, s.Pending)
	}
	if err := s.Examine(ctx, "INBOX"); err != nil {
		t.Errorf("EXAMINE: %v", err)
	}
	if err := s.Logout(ctx); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	wantUpstreams(t, w.obs, "imap:invoices:ok")
	if n := cred.invalidated.Load(); n != 0 {
		t.Errorf("token invalidated %d times", n)
	}
}

// With CheckMailbox the same login fails at once, as Refused, with what
// Exchange said; the accepted token is kept. A granted mailbox passes.
func TestIMAPCheckMailbox(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	tgt := w.target(events.IMAP, notGranted)
	tgt.CheckMailbox = true
	e := wantKind(t, func() error { _, err := IMAP(ctx, tgt, w.source(t, notGranted, testSecret)); return err }(), Refused)
	wantReason(t, e, "cannot open mailbox "+notGranted, "STATUS INBOX", "User is authenticated but not connected", "Add-MailboxPermission")
	tgt = w.target(events.IMAP, testMailbox)
	tgt.CheckMailbox = true
	s, err := IMAP(ctx, tgt, w.source(t, testMailbox, testSecret))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// Exchange accepts the token of an app without FullAccess and then fails
// every command: the login passes (as the relay's would), EXAMINE shows it,
// with what to do about it.
func TestIMAPExamineNotConnected(t *testing.T) {
	w := newWorld(t)
	ctx := testCtx(t)
	s, err := IMAP(ctx, w.target(events.IMAP, notGranted), w.source(t, notGranted, testSecret))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e := wantKind(t, s.Examine(ctx, "INBOX"), Refused)
	wantReason(t, e, "EXAMINE INBOX", "BAD User is authenticated but not connected", "cannot open the mailbox", "Add-MailboxPermission")
	if e.Proto != events.IMAP || e.Addr != w.fake.IMAPAddr {
		t.Errorf("error names %s %s", e.Proto, e.Addr)
	}
}

// The fake refuses a token for a mailbox it does not have: Refused, with
// Microsoft's hint, the token invalidated, the refusal observed.
func TestIMAPFakeMSRefused(t *testing.T) {
	w := newWorld(t)
	cred := w.source(t, ghost, testSecret)
	_, err := IMAP(testCtx(t), w.target(events.IMAP, ghost), cred)
	e := wantKind(t, err, Refused)
	wantReason(t, e, "NO AUTHENTICATE failed.", "IMAP.AccessAsApp")
	if n := cred.invalidated.Load(); n != 1 {
		t.Errorf("token invalidated %d times, want 1", n)
	}
	wantUpstreams(t, w.obs, "imap:invoices:rejected")
}

// Token failures are classified and the upstream is not contacted (nor
// observed).
func TestIMAPTokenFailures(t *testing.T) {
	t.Run("needs sign-in", func(t *testing.T) {
		w := newWorld(t)
		_, err := IMAP(testCtx(t), w.target(events.IMAP, testMailbox), w.source(t, testMailbox, "the-secret-ID-not-its-value"))
		e := wantKind(t, err, NeedsSignIn)
		if e.Err == nil || e.Proto != events.IMAP {
			t.Errorf("error %+v", e)
		}
		wantUpstreams(t, w.obs)
	})
	t.Run("transient", func(t *testing.T) {
		w := newWorld(t)
		w.fake.FailTokenRequests(10, fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"})
		_, err := IMAP(testCtx(t), w.target(events.IMAP, testMailbox), w.source(t, testMailbox, testSecret))
		wantKind(t, err, Unavailable)
		wantUpstreams(t, w.obs)
	})
}

// xoauth2Line checks an XOAUTH2 response in a scripted upstream: base64 of
// the account's mailbox and the token.
func xoauth2Line(t *testing.T, b64, token string) {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Errorf("upstream script: bad base64 %q", b64)
		return
	}
	user, tok, err := sasl.ParseXOAuth2Response(b)
	if err != nil || user != testMailbox || tok != token {
		t.Errorf("upstream script: XOAUTH2 user %q, token %q, err %v", user, tok, err)
	}
}

const scriptToken = "scripted-token"

// STARTTLS upstream, no capabilities in the greeting, no SASL-IR (the token
// after "+"), capabilities in an untagged response during AUTHENTICATE, and
// bytes right after the tagged OK: they are Pending, then EXAMINE reads
// through them.
func TestIMAPScriptedStartTLS(t *testing.T) {
	lc := testutil.NewLocalCert(t)
	cert, err := tls.LoadX509KeyPair(lc.CertFile, lc.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hello\r\n")
		expectLine(t, br, "oar1 STARTTLS")
		io.WriteString(c, "oar1 OK go ahead\r\n")
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			t.Errorf("upstream script: TLS: %v", err)
			return
		}
		br = bufio.NewReader(tc)
		expectLine(t, br, "oar2 CAPABILITY")
		io.WriteString(tc, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\noar2 OK done\r\n")
		if l := expectLine(t, br, "oar3 AUTHENTICATE XOAUTH2"); l != "oar3 AUTHENTICATE XOAUTH2" {
			t.Errorf("upstream script: an initial response without SASL-IR: %q", l)
		}
		io.WriteString(tc, "+ \r\n")
		xoauth2Line(t, expectLine(t, br, ""), scriptToken)
		io.WriteString(tc, "* CAPABILITY IMAP4rev1 IDLE X-SCRIPTED\r\noar3 OK Welcome\r\n* 3 EXISTS\r\n")
		expectLine(t, br, `oar4 EXAMINE "INBOX"`)
		io.WriteString(tc, "* FLAGS (\\Seen)\r\noar4 OK [READ-ONLY] done\r\n* 4 EXISTS\r\n")
		expectLine(t, br, "oar5 LOGOUT")
		io.WriteString(tc, "* BYE bye\r\noar5 OK done\r\n")
	})
	tgt := scriptedTarget(addr, config.TLSStartTLS, nil)
	tgt.TLS = lc.ClientTLS()
	ctx := testCtx(t)
	s, err := IMAP(ctx, tgt, staticCreds{token: scriptToken})
	if err != nil {
		t.Fatal(err)
	}
	if s.Caps != "IMAP4rev1 IDLE X-SCRIPTED" || s.Text != "Welcome" || string(s.Pending) != "* 3 EXISTS\r\n" {
		t.Errorf("caps %q, text %q, pending %q", s.Caps, s.Text, s.Pending)
	}
	if _, ok := s.Conn.(*tls.Conn); !ok {
		t.Errorf("conn is a %T, want TLS", s.Conn)
	}
	if err := s.Examine(ctx, "INBOX"); err != nil {
		t.Errorf("EXAMINE: %v", err)
	}
	if string(s.Pending) != "* 4 EXISTS\r\n" {
		t.Errorf("pending after EXAMINE %q", s.Pending)
	}
	if err := s.Logout(ctx); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// SASL-IR: the token on the AUTHENTICATE line, the capabilities from the
// OK's code, nothing asked for; literals in responses are skipped.
func TestIMAPScriptedSASLIR(t *testing.T) {
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hello\r\n")
		l := expectLine(t, br, "oar1 AUTHENTICATE XOAUTH2 ")
		xoauth2Line(t, strings.TrimPrefix(l, "oar1 AUTHENTICATE XOAUTH2 "), scriptToken)
		io.WriteString(c, "* ID (\"name\" {5}\r\nfake} \"x\" \"y\")\r\noar1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")
		expectLine(t, br, "x NOOP")
		io.WriteString(c, "x OK noop\r\n")
	})
	ctx, cancel := context.WithTimeout(context.Background(), scriptLimit)
	s, err := IMAP(ctx, scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Caps != "IMAP4rev1 IDLE MOVE" || s.Text != "Logged in" || len(s.Pending) != 0 || len(s.Warnings) != 0 {
		t.Errorf("caps %q, text %q, pending %q, warnings %q", s.Caps, s.Text, s.Pending, s.Warnings)
	}
	// The login's context ending later does not touch the session.
	cancel()
	io.WriteString(s.Conn, "x NOOP\r\n")
	l, err := splice.ReadLine(bufio.NewReader(s.Conn), 1024)
	if err != nil || string(l) != "x OK noop" {
		t.Errorf("NOOP after the login: %q, %v", l, err)
	}
}

// The deadline of the login's context is cleared from the connection: the
// session is used after it has passed.
func TestIMAPDeadlineCleared(t *testing.T) {
	const loginDeadline = time.Second
	answered := make(chan struct{})
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hello\r\n")
		expectLine(t, br, "oar1 AUTHENTICATE XOAUTH2 ")
		io.WriteString(c, "oar1 OK [CAPABILITY IMAP4rev1] ok\r\n")
		expectLine(t, br, "x NOOP")
		<-answered
		io.WriteString(c, "x OK late\r\n")
	})
	ctx, cancel := context.WithTimeout(context.Background(), loginDeadline)
	defer cancel()
	dl, _ := ctx.Deadline()
	s, err := IMAP(ctx, scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	io.WriteString(s.Conn, "x NOOP\r\n")
	<-ctx.Done()
	time.Sleep(time.Until(dl) + 50*time.Millisecond)
	close(answered)
	l, err := splice.ReadLine(bufio.NewReader(s.Conn), 1024)
	if err != nil || string(l) != "x OK late" {
		t.Errorf("read after the login's deadline: %q, %v", l, err)
	}
}

// Exchange's state after accepting an app without FullAccess: CAPABILITY
// after login is refused too. The login goes on without capabilities, and
// the caller is told why.
func TestIMAPScriptedCapabilityRefused(t *testing.T) {
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hello\r\n")
		expectLine(t, br, "oar1 AUTHENTICATE XOAUTH2 ")
		io.WriteString(c, "oar1 OK AUTHENTICATE completed.\r\n")
		expectLine(t, br, "oar2 CAPABILITY")
		io.WriteString(c, "oar2 BAD User is authenticated but not connected.\r\n")
	})
	s, err := IMAP(testCtx(t), scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Caps != "" || len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "cannot open the mailbox") {
		t.Errorf("caps %q, warnings %q", s.Caps, s.Warnings)
	}
}

// An OK without capabilities and none seen: CAPABILITY is asked after
// login; an upstream without AUTH=XOAUTH2 is tried anyway, with a warning.
func TestIMAPScriptedCapabilityAfterLogin(t *testing.T) {
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1] hello\r\n")
		expectLine(t, br, "oar1 AUTHENTICATE XOAUTH2")
		io.WriteString(c, "+ \r\n")
		expectLine(t, br, "")
		io.WriteString(c, "oar1 OK AUTHENTICATE completed.\r\n")
		expectLine(t, br, "oar2 CAPABILITY")
		io.WriteString(c, "* CAPABILITY IMAP4 IMAP4rev1 IDLE\r\noar2 OK CAPABILITY completed.\r\n")
	})
	s, err := IMAP(testCtx(t), scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Caps != "IMAP4 IMAP4rev1 IDLE" || len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "AUTH=XOAUTH2") {
		t.Errorf("caps %q, warnings %q", s.Caps, s.Warnings)
	}
}

// The ways an upstream says no, or cannot answer: the kind, whether the
// token is invalidated, and what the observer hears.
func TestIMAPScriptedRefusals(t *testing.T) {
	tests := []struct {
		name       string
		greeting   string
		after      string // the upstream's answer after the token
		kind       Kind
		reason     []string
		invalidate bool
		observed   string
	}{
		{"error challenge then NO", "", "+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\n<empty>oar2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n",
			Refused, []string{"NO [AUTHENTICATIONFAILED] Invalid credentials", "challenge: status 401"}, true, "rejected"},
		{"error challenge then OK", "", "+ eyJzdGF0dXMiOiI0MDEifQ==\r\n<empty>oar2 OK odd\r\n",
			Refused, []string{"OK odd", "status 401"}, true, "rejected"},
		{"two challenges", "", "+ eyJzdGF0dXMiOiI0MDEifQ==\r\n<empty>+ again\r\n",
			Unavailable, []string{"AUTHENTICATE failed"}, false, "unavailable"},
		{"NO", "", "oar2 NO AUTHENTICATE failed.\r\n",
			Refused, []string{"NO AUTHENTICATE failed.", "IMAP.AccessAsApp"}, true, "rejected"},
		{"BAD", "", "oar2 BAD Invalid base64 data\r\n", Refused, []string{"BAD Invalid base64 data"}, true, "rejected"},
		{"NO UNAVAILABLE", "", "oar2 NO [UNAVAILABLE] Backend down\r\n",
			Unavailable, []string{"NO [UNAVAILABLE] Backend down"}, false, "unavailable"},
		{"connection dropped", "", "<close>", Unavailable, []string{"AUTHENTICATE failed"}, false, "unavailable"},
		{"line too long", "", strings.Repeat("x", maxUpstreamLine+1) + "\r\n", Unavailable, []string{"AUTHENTICATE failed"}, false, "unavailable"},
		{"literal too big", "", "* X {99999999}\r\n", Unavailable, []string{"AUTHENTICATE failed"}, false, "unavailable"},
		{"BYE greeting", "* BYE [UNAVAILABLE] server shutting down\r\n", "",
			Unavailable, []string{"BYE at greeting: server shutting down"}, false, "unavailable"},
		{"PREAUTH greeting", "* PREAUTH hello\r\n", "", Unavailable, []string{"unexpected greeting: PREAUTH hello"}, false, "unavailable"},
		{"no greeting", "<close>", "", Unavailable, []string{"no greeting"}, false, "unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
				switch tt.greeting {
				case "<close>":
					return
				case "":
				default:
					io.WriteString(c, tt.greeting)
					return
				}
				io.WriteString(c, "* OK hello\r\n")
				expectLine(t, br, "oar1 CAPABILITY")
				io.WriteString(c, "* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2\r\noar1 OK done\r\n")
				line := expectLine(t, br, "oar2 AUTHENTICATE XOAUTH2 ")
				xoauth2Line(t, strings.TrimPrefix(line, "oar2 AUTHENTICATE XOAUTH2 "), scriptToken)
				for _, part := range strings.SplitAfter(tt.after, "\r\n") {
					switch {
					case part == "<close>":
						return
					case strings.HasPrefix(part, "<empty>"):
						if l := expectLine(t, br, ""); l != "" {
							t.Errorf("upstream script: want an empty response to the challenge, got %q", l)
						}
						part = strings.TrimPrefix(part, "<empty>")
					}
					io.WriteString(c, part)
				}
				// Wait for the relay to hang up.
				br.ReadByte()
			})
			obs := &recorder{}
			cred := &countingCreds{Credentials: staticCreds{token: scriptToken}}
			_, err := IMAP(testCtx(t), scriptedTarget(addr, config.TLSNone, obs), cred)
			e := wantKind(t, err, tt.kind)
			wantReason(t, e, tt.reason...)
			if got := cred.invalidated.Load() == 1; got != tt.invalidate {
				t.Errorf("invalidated: %v, want %v", got, tt.invalidate)
			}
			wantUpstreams(t, obs, "imap:invoices:"+tt.observed)
		})
	}
}

// STARTTLS refused, or bytes after its OK (injected before the handshake):
// the login stops, unavailable.
func TestIMAPScriptedStartTLSFailures(t *testing.T) {
	for _, tt := range []struct{ name, reply, reason string }{
		{"refused", "oar1 NO not now\r\n", "STARTTLS refused: NO not now"},
		{"injected", "oar1 OK go ahead\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n", "data after its STARTTLS reply"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
				io.WriteString(c, "* OK hello\r\n")
				expectLine(t, br, "oar1 STARTTLS")
				io.WriteString(c, tt.reply)
				br.ReadByte()
			})
			_, err := IMAP(testCtx(t), scriptedTarget(addr, config.TLSStartTLS, nil), staticCreds{token: scriptToken})
			wantReason(t, wantKind(t, err, Unavailable), tt.reason)
		})
	}
}

// An upstream that never answers: the context's end breaks the login off.
func TestIMAPCancelled(t *testing.T) {
	accepted := make(chan struct{})
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		close(accepted)
		br.ReadByte() // until the relay hangs up
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := IMAP(ctx, scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
		done <- err
	}()
	<-accepted
	cancel()
	select {
	case err := <-done:
		e := wantKind(t, err, Unavailable)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled in it", err)
		}
		wantReason(t, e, "cancelled")
	case <-time.After(scriptLimit):
		t.Fatal("the login was not interrupted")
	}
}

// EXAMINE refused (Exchange's "not connected"), or the connection lost on
// the way (BYE): Refused with the hint, Unavailable naming the BYE.
func TestIMAPExamineScripted(t *testing.T) {
	for _, tt := range []struct {
		name, reply string
		kind        Kind
		reason      []string
	}{
		{"not connected", "oar2 BAD User is authenticated but not connected.\r\n", Refused,
			[]string{"EXAMINE Sent Items: the upstream replied BAD User is authenticated but not connected.", "cannot open the mailbox"}},
		{"no such mailbox", "oar2 NO [NONEXISTENT] Unknown Mailbox\r\n", Refused, []string{"NO [NONEXISTENT] Unknown Mailbox"}},
		{"BYE", "* BYE [UNAVAILABLE] going down\r\n", Unavailable, []string{"BYE [UNAVAILABLE] going down"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
				io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hello\r\n")
				expectLine(t, br, "oar1 AUTHENTICATE XOAUTH2 ")
				io.WriteString(c, "oar1 OK [CAPABILITY IMAP4rev1] ok\r\n")
				expectLine(t, br, `oar2 EXAMINE "Sent Items"`)
				io.WriteString(c, tt.reply)
			})
			ctx := testCtx(t)
			s, err := IMAP(ctx, scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			wantReason(t, wantKind(t, s.Examine(ctx, "Sent Items"), tt.kind), tt.reason...)
		})
	}
}

func TestQuoteMailbox(t *testing.T) {
	if q, err := quoteMailbox(`a"b\c d`); err != nil || q != `"a\"b\\c d"` {
		t.Errorf("quoted %q, %v", q, err)
	}
	for _, bad := range []string{"a\r\nb LOGOUT", "Entwürfe", "a\x00"} {
		if _, err := quoteMailbox(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestParseResponse is proxy/imap's, moved here with the parser.
func TestParseResponse(t *testing.T) {
	r := parseResponse("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] Ready")
	if r.tag != "*" || r.status != "OK" || capabilityCode(r.code) != "IMAP4rev1 AUTH=XOAUTH2 SASL-IR" || r.text != "Ready" {
		t.Errorf("greeting: %+v", r)
	}
	r = parseResponse("oar2 ok AUTHENTICATE completed.")
	if r.tag != "oar2" || r.status != "OK" || r.code != "" || r.text != "AUTHENTICATE completed." {
		t.Errorf("tagged: %+v", r)
	}
	r = parseResponse("+ eyJzdGF0dXMiOiI0MDAifQ==")
	if r.tag != "+" || r.text != "eyJzdGF0dXMiOiI0MDAifQ==" {
		t.Errorf("continuation: %+v", r)
	}
	r = parseResponse("+")
	if r.tag != "+" || r.text != "" {
		t.Errorf("bare continuation: %+v", r)
	}
	r = parseResponse("* CAPABILITY IMAP4rev1 IDLE")
	if r.status != "CAPABILITY" || r.text != "IMAP4rev1 IDLE" {
		t.Errorf("capability: %+v", r)
	}
	if !hasCap("IMAP4rev1 sasl-ir", "SASL-IR") || hasCap("IMAP4rev1", "SASL-IR") {
		t.Error("hasCap")
	}
}

func TestParseResponseTable(t *testing.T) {
	tests := []struct {
		line                    string
		tag, status, code, text string
	}{
		{"* OK [CAPABILITY IMAP4rev1 IDLE] ready", "*", "OK", "CAPABILITY IMAP4rev1 IDLE", "ready"},
		{"oar1 no [UNAVAILABLE] down", "oar1", "NO", "UNAVAILABLE", "down"},
		{"* CAPABILITY IMAP4rev1 SASL-IR", "*", "CAPABILITY", "", "IMAP4rev1 SASL-IR"},
		{"+ eyJ9", "+", "", "", "eyJ9"},
		{"+", "+", "", "", ""},
		{"oar2 OK [READ-ONLY", "oar2", "OK", "", "[READ-ONLY"},
	}
	for _, tt := range tests {
		r := parseResponse(tt.line)
		if r.tag != tt.tag || r.status != tt.status || r.code != tt.code || r.text != tt.text {
			t.Errorf("%q: %+v", tt.line, r)
		}
	}
}

func TestLiteralMarker(t *testing.T) {
	tests := []struct {
		line string
		n    int
		ok   bool
	}{
		{"* 1 FETCH (BODY[] {5}", 5, true},
		{"* 1 FETCH (BODY[] {5+}", 5, true},
		{"* OK {}", 0, false},
		{"* OK {x}", 0, false},
		{`* OK "{5}`, 0, false},
		{`* OK "a\"" {5}`, 5, true},
		{"* OK {99999999999}", 0, false},
		{"}", 0, false},
	}
	for _, tt := range tests {
		if n, _, ok := splice.LiteralMarker([]byte(tt.line)); n != tt.n || ok != tt.ok {
			t.Errorf("%q: %d %v, want %d %v", tt.line, n, ok, tt.n, tt.ok)
		}
	}
}
