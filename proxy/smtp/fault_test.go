package smtp

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/fakems"

	gosasl "github.com/emersion/go-sasl"
)

// appResult is where an app's attempt to send one message ended: the step
// ("AUTH", "MAIL", "RCPT", "DATA"; "" when the message was accepted) and
// the reply there.
type appResult struct {
	step string
	code int
	enh  string
}

func (r appResult) String() string {
	if r.step == "" {
		return "250 (accepted)"
	}
	return fmt.Sprintf("%d %s at %s", r.code, r.enh, r.step)
}

// attempt is one app connection that logs in and sends msg, as a legacy
// app does, stopping at the first refusal.
func (w *world) attempt(t *testing.T, msg string) appResult {
	t.Helper()
	c := w.dial()
	defer c.Close()
	step := "AUTH"
	err := c.Auth(gosasl.NewPlainClient("", username, password))
	if err == nil {
		step = "MAIL"
		err = c.Mail(mailbox, nil)
	}
	if err == nil {
		step = "RCPT"
		err = c.Rcpt(recipient, nil)
	}
	if err == nil {
		step = "DATA"
		err = data(c, msg)
	}
	if err == nil {
		return appResult{}
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: %v, want an SMTP reply (the relay must answer, not drop the app)", step, err)
	}
	return appResult{step: step, code: se.Code, enh: fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])}
}

func data(c *smtp.Client, msg string) error {
	wc, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := wc.Write([]byte(msg)); err != nil {
		return err
	}
	return wc.Close()
}

// The fault matrix: the fake Exchange cuts the relay's upstream connection
// at each step of the dialogue (a TCP reset before the greeting, during
// STARTTLS, a TLS handshake that fails, after AUTH, after MAIL, after RCPT,
// in the middle of DATA, after the final dot with and without keeping the
// message), once and on every connection. Each case gives the app the
// documented reply:
//   - once: a failure before DATA is retried on a fresh session, so the
//     app's message goes through; a failure at or after DATA gives 451
//     4.4.2, never 250 — the app keeps the message and its retry, on a new
//     connection, goes through;
//   - always: a temporary reply where it happens (454 4.7.0 at AUTH when
//     no session can be logged in, 451 4.4.2 later), never 250;
//
// and no case leaks a goroutine (goleak, in TestMain) or a file descriptor.
func TestUpstreamFaultMatrix(t *testing.T) {
	authFail := appResult{"AUTH", 454, "4.7.0"}
	lost := func(step string) appResult { return appResult{step, 451, "4.4.2"} }
	for _, tc := range []struct {
		fault        fakems.SMTPFault
		once, always appResult
	}{
		{fakems.FaultBeforeGreeting, appResult{}, authFail},
		{fakems.FaultDuringSTARTTLS, appResult{}, authFail},
		{fakems.FaultTLSHandshake, appResult{}, authFail},
		{fakems.FaultAfterAuth, appResult{}, lost("MAIL")},
		{fakems.FaultAfterMail, appResult{}, lost("MAIL")},
		{fakems.FaultAfterRcpt, appResult{}, lost("RCPT")},
		{fakems.FaultMidData, lost("DATA"), lost("DATA")},
		{fakems.FaultAfterDot, lost("DATA"), lost("DATA")},
		{fakems.FaultAfterDotKept, lost("DATA"), lost("DATA")},
	} {
		for _, always := range []bool{false, true} {
			name, want := string(tc.fault)+"/once", tc.once
			if always {
				name, want = string(tc.fault)+"/always", tc.always
			}
			fds := openFiles(t)
			t.Run(name, func(t *testing.T) {
				w := newWorld(t, worldOptions{})
				n := 1
				if always {
					n = -1
				}
				w.ms.FailSMTP(tc.fault, n)
				msg := message(mailbox, recipient, "fault "+name, "Sent through a fault.")
				got := w.attempt(t, msg)
				if got != want {
					t.Errorf("the app got %v, want %v", got, want)
				}
				kept := len(w.ms.Messages())
				if got.step == "" && kept != 1 {
					t.Errorf("the app got 250 and the fake has %d messages", kept)
				}
				if tc.fault != fakems.FaultAfterDotKept && got.step != "" && kept != 0 {
					t.Errorf("the app got %v and the fake has %d messages", got, kept)
				}
				// The app retries, as it does after a 4xx: once the fault is
				// gone the message goes through.
				w.ms.FailSMTP(tc.fault, 0)
				if got.step != "" {
					if again := w.attempt(t, msg); again.step != "" {
						t.Errorf("the app's retry got %v, want 250", again)
					}
					if want := kept + 1; len(w.ms.Messages()) != want {
						t.Errorf("after the retry the fake has %d messages, want %d", len(w.ms.Messages()), want)
					}
				}
			})
			waitOpenFiles(t, name, fds)
		}
	}
}

// openFiles counts the process's open file descriptors (Linux: the
// entries of /proc/self/fd); -1 where that cannot be read.
func openFiles(t *testing.T) int {
	t.Helper()
	if runtime.GOOS != "linux" {
		return -1
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open files: %v", err)
	}
	return len(ents)
}

// waitOpenFiles fails the test unless the open file descriptors come back
// to before (a case's sockets are closed once its cleanups ran; closing
// may lag a little behind, hence the bounded wait).
func waitOpenFiles(t *testing.T, name string, before int) {
	t.Helper()
	if before < 0 {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := openFiles(t)
		if now <= before {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %d file descriptors open after the case, %d before", name, now, before)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The token endpoint's faults, in the same matrix: 503, a gateway page,
// garbage JSON with 200, a reply slower than the relay's HTTP timeout, and
// one slow but within it. A failure is 454 4.7.0 at AUTH (the app retries),
// never a 5xx; the slow-but-in-time one goes through; none leaks a
// goroutine or a file descriptor.
func TestTokenFaultMatrix(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failure *fakems.TokenFailure
		delay   time.Duration
		want    appResult
	}{
		{"503", &fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"}, 0, appResult{"AUTH", 454, "4.7.0"}},
		{"gateway page", &fakems.TokenFailure{Status: 502, Body: "<html>Bad Gateway</html>"}, 0, appResult{"AUTH", 454, "4.7.0"}},
		{"garbage JSON", &fakems.TokenFailure{Status: 200, Body: `{"access_token": "tok`}, 0, appResult{"AUTH", 454, "4.7.0"}},
		{"timeout", nil, 2 * time.Second, appResult{"AUTH", 454, "4.7.0"}},
		{"slow", nil, 100 * time.Millisecond, appResult{}},
	} {
		fds := openFiles(t)
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{tokenFailure: tc.failure, tokenDelay: tc.delay,
				httpClient: &http.Client{Timeout: 500 * time.Millisecond}})
			got := w.attempt(t, message(mailbox, recipient, "token "+tc.name, "Sent through a token fault."))
			if got != tc.want {
				t.Errorf("the app got %v, want %v", got, tc.want)
			}
		})
		waitOpenFiles(t, tc.name, fds)
	}
}
