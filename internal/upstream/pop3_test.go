package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// The relay's POP3 login at the fake Exchange with a real token source:
// implicit TLS, Exchange's +OK text, the maildrop readable (STAT sees the
// seeded message), QUIT, one success observed.
func TestPOP3FakeMS(t *testing.T) {
	w := newWorld(t)
	msg := "Subject: hi\r\n\r\nbody\r\n"
	if err := w.fake.AppendIMAP(testMailbox, "INBOX", []byte(msg)); err != nil {
		t.Fatal(err)
	}
	cred := w.source(t, testMailbox, testSecret)
	ctx := testCtx(t)
	s, err := POP3(ctx, w.target(events.POP3, testMailbox), cred)
	if err != nil {
		t.Fatal(err)
	}
	if s.Text != "User successfully authenticated." {
		t.Errorf("text %q", s.Text)
	}
	if _, ok := s.Conn.(*tls.Conn); !ok {
		t.Errorf("conn is a %T, want TLS", s.Conn)
	}
	n, size, err := s.Stat(ctx)
	if err != nil || n != 1 || size != int64(len(msg)) {
		t.Errorf("STAT: %d %d %v, want 1 %d", n, size, err, len(msg))
	}
	if err := s.Quit(ctx); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	wantUpstreams(t, w.obs, "pop3:invoices:ok")
	if n := cred.invalidated.Load(); n != 0 {
		t.Errorf("token invalidated %d times", n)
	}
}

// The fake refuses a token for a mailbox it does not have, and an app-only
// token for a mailbox the app has no FullAccess on (POP3 fails at login):
// Refused with Exchange's text and the hint, the token invalidated.
func TestPOP3FakeMSRefused(t *testing.T) {
	for _, mbox := range []string{ghost, notGranted} {
		t.Run(mbox, func(t *testing.T) {
			w := newWorld(t)
			cred := w.source(t, mbox, testSecret)
			_, err := POP3(testCtx(t), w.target(events.POP3, mbox), cred)
			e := wantKind(t, err, Refused)
			wantReason(t, e, "-ERR Authentication failure", "POP.AccessAsApp", "PopEnabled")
			if e.Proto != events.POP3 || e.Addr != w.fake.POP3Addr {
				t.Errorf("error names %s %s", e.Proto, e.Addr)
			}
			if n := cred.invalidated.Load(); n != 1 {
				t.Errorf("token invalidated %d times, want 1", n)
			}
			wantUpstreams(t, w.obs, "pop3:invoices:rejected")
		})
	}
}

// A token failure is classified; the upstream is not contacted.
func TestPOP3TokenFailure(t *testing.T) {
	w := newWorld(t)
	_, err := POP3(testCtx(t), w.target(events.POP3, testMailbox), w.source(t, testMailbox, "wrong-secret"))
	if e := wantKind(t, err, NeedsSignIn); e.Proto != events.POP3 {
		t.Errorf("proto %s", e.Proto)
	}
	wantUpstreams(t, w.obs)
}

// The ways a POP3 upstream says no, or cannot answer.
func TestPOP3ScriptedRefusals(t *testing.T) {
	tests := []struct {
		name       string
		greeting   string
		afterAuth  string // the answer to "AUTH XOAUTH2"
		after      string // the answer after the token
		kind       Kind
		reason     []string
		invalidate bool
		observed   string
	}{
		{"error challenge then -ERR", "", "+ \r\n", "+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\n<empty>-ERR Authentication failure\r\n",
			Refused, []string{"-ERR Authentication failure", "challenge: status 401"}, true, "rejected"},
		{"error challenge then +OK", "", "+\r\n", "+ eyJzdGF0dXMiOiI0MDEifQ==\r\n<empty>+OK odd\r\n",
			Refused, []string{"+OK odd", "status 401"}, true, "rejected"},
		{"-ERR AUTH", "", "+ \r\n", "-ERR [AUTH] Authentication failure\r\n", Refused, []string{"-ERR [AUTH] Authentication failure"}, true, "rejected"},
		{"-ERR SYS/TEMP", "", "+ \r\n", "-ERR [SYS/TEMP] backend down\r\n", Unavailable, []string{"-ERR [SYS/TEMP] backend down"}, false, "unavailable"},
		{"-ERR IN-USE", "", "+ \r\n", "-ERR [IN-USE] maildrop locked\r\n", Unavailable, []string{"[IN-USE]"}, false, "unavailable"},
		{"no XOAUTH2", "", "-ERR Unrecognized authentication type\r\n", "", Refused, []string{"Unrecognized authentication type"}, true, "rejected"},
		{"connection dropped", "", "+ \r\n", "<close>", Unavailable, []string{"AUTH failed"}, false, "unavailable"},
		{"not POP3", "", "+ \r\n", "HTTP/1.1 400 Bad Request\r\n", Unavailable, []string{"AUTH failed"}, false, "unavailable"},
		{"line too long", "", "+ \r\n", strings.Repeat("x", maxPOP3Line+1) + "\r\n", Unavailable, []string{"AUTH failed"}, false, "unavailable"},
		{"-ERR greeting", "-ERR [SYS/TEMP] not now\r\n", "", "", Unavailable, []string{"unexpected greeting: -ERR [SYS/TEMP] not now"}, false, "unavailable"},
		{"no greeting", "<close>", "", "", Unavailable, []string{"no greeting"}, false, "unavailable"},
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
				io.WriteString(c, "+OK ready\r\n")
				expectLine(t, br, "AUTH XOAUTH2")
				io.WriteString(c, tt.afterAuth)
				if !strings.HasPrefix(tt.afterAuth, "+") {
					br.ReadByte()
					return
				}
				xoauth2Line(t, expectLine(t, br, ""), scriptToken)
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
				br.ReadByte()
			})
			obs := &recorder{}
			cred := &countingCreds{Credentials: staticCreds{token: scriptToken}}
			_, err := POP3(testCtx(t), scriptedTarget(addr, config.TLSNone, obs), cred)
			e := wantKind(t, err, tt.kind)
			wantReason(t, e, tt.reason...)
			if got := cred.invalidated.Load() == 1; got != tt.invalidate {
				t.Errorf("invalidated: %v, want %v", got, tt.invalidate)
			}
			wantUpstreams(t, obs, "pop3:invoices:"+tt.observed)
		})
	}
}

// STLS upstream: the relay upgrades before AUTH; bytes the upstream sent
// right after its +OK to the login are Pending.
func TestPOP3ScriptedSTLS(t *testing.T) {
	lc := testutil.NewLocalCert(t)
	cert, err := tls.LoadX509KeyPair(lc.CertFile, lc.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "+OK ready\r\n")
		expectLine(t, br, "STLS")
		io.WriteString(c, "+OK Begin TLS\r\n")
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		if err := tc.Handshake(); err != nil {
			t.Errorf("upstream script: handshake: %v", err)
			return
		}
		br = bufio.NewReader(tc)
		expectLine(t, br, "AUTH XOAUTH2")
		io.WriteString(tc, "+ \r\n")
		xoauth2Line(t, expectLine(t, br, ""), scriptToken)
		io.WriteString(tc, "+OK welcome\r\n+OK extra\r\n")
		br.ReadByte()
	})
	target := scriptedTarget(addr, config.TLSStartTLS, nil)
	target.TLS = &tls.Config{RootCAs: lc.Pool}
	target.Server.Addr = strings.Replace(addr, "127.0.0.1", "localhost", 1)
	s, err := POP3(testCtx(t), target, staticCreds{token: scriptToken})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Text != "welcome" || string(s.Pending) != "+OK extra\r\n" {
		t.Errorf("text %q, pending %q", s.Text, s.Pending)
	}
}

// STLS refused: unavailable, nothing sent in the clear after it.
func TestPOP3ScriptedSTLSRefused(t *testing.T) {
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "+OK ready\r\n")
		expectLine(t, br, "STLS")
		io.WriteString(c, "-ERR no TLS here\r\n")
		if l, err := br.ReadString('\n'); err == nil {
			t.Errorf("upstream script: the relay sent %q after a refused STLS", l)
		}
	})
	_, err := POP3(testCtx(t), scriptedTarget(addr, config.TLSStartTLS, nil), staticCreds{token: scriptToken})
	wantReason(t, wantKind(t, err, Unavailable), "STLS refused: -ERR no TLS here")
}

// A login cancelled while the upstream does not answer AUTH is
// Unavailable (cancelled) at once.
func TestPOP3Cancelled(t *testing.T) {
	asked := make(chan struct{})
	addr := scriptedUpstream(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "+OK ready\r\n")
		expectLine(t, br, "AUTH XOAUTH2")
		close(asked)
		br.ReadByte() // never answers; until the relay hangs up
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := POP3(ctx, scriptedTarget(addr, config.TLSNone, nil), staticCreds{token: scriptToken})
		done <- err
	}()
	<-asked
	cancel()
	select {
	case err := <-done:
		wantReason(t, wantKind(t, err, Unavailable), "cancelled")
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled in it", err)
		}
	case <-time.After(scriptLimit):
		t.Fatal("the login was not interrupted")
	}
}
