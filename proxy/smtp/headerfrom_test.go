package smtp

import (
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// With enforce_header_from, every address of the From header must match
// allowed_from; a refusal is 550 5.7.1 in plain words, nothing is sent
// upstream, and the session goes on.
func TestEnforceHeaderFrom(t *testing.T) {
	w := newWorld(t, worldOptions{enforceHeaderFrom: true})
	c := w.login()
	big := strings.Repeat("x", 70<<10) // a header larger than 64 KiB
	for _, tc := range []struct {
		name, header string
		ok           bool
		reason       string
	}{
		{"allowed", "From: invoices@contoso.com\r\n", true, ""},
		{"display name", "From: Invoices <invoices@contoso.com>\r\n", true, ""},
		{"folded, encoded name", "From: =?utf-8?q?Fr=C3=A9d=C3=A9ric?=\r\n <invoices@contoso.com>\r\n", true, ""},
		{"unknown charset", "From: =?x-unknown?q?abc?= <ap@billing.contoso.com>\r\n", true, ""},
		{"two allowed", "From: invoices@contoso.com, ap@billing.contoso.com\r\n", true, ""},
		{"lower-case field", "from: INVOICES@contoso.com\r\n", true, ""},
		{"not allowed", "From: ceo@contoso.com\r\n", false, "ceo@contoso.com"},
		{"one of two not allowed", "From: invoices@contoso.com,\r\n\tceo@contoso.com\r\n", false, "ceo@contoso.com"},
		{"second From field", "From: invoices@contoso.com\r\nFrom: ceo@contoso.com\r\n", false, "ceo@contoso.com"},
		{"quoted spoof", "From: \"invoices@contoso.com\" <ceo@contoso.com>\r\n", false, "ceo@contoso.com"},
		{"missing", "Sender: invoices@contoso.com\r\n", false, "no From header"},
		{"empty group", "From: undisclosed:;\r\n", false, "no address"},
		{"unparsable", "From: <<invoices@contoso.com\r\n", false, "could not be parsed"},
		{"header too large", "From: invoices@contoso.com\r\nX-Big: " + big + "\r\n", false, "larger than 64 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(w.ms.Messages())
			body := tc.header + "To: " + recipient + "\r\nSubject: " + tc.name + "\r\n\r\nbody\r\n"
			_, err := send(c, mailbox, []string{recipient}, body)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				msgs := w.waitMessages(before + 1)
				if got := string(msgs[before].Data); got != body {
					t.Fatalf("upstream got %q, want %q", got, body)
				}
				return
			}
			se := wantCode(t, err, 550, "5.7.1")
			if !strings.Contains(se.Message, tc.reason) {
				t.Errorf("reply %q does not say %q", se.Message, tc.reason)
			}
			// Nothing went upstream, and the session goes on.
			if _, err := send(c, mailbox, []string{recipient}, message(mailbox, recipient, "after "+tc.name, "x")); err != nil {
				t.Fatalf("next message on the session: %v", err)
			}
			msgs := w.waitMessages(before + 1)
			if len(msgs) != before+1 || !strings.Contains(string(msgs[before].Data), "Subject: after "+tc.name) {
				t.Fatalf("upstream has %d messages, want %d ending with the next one", len(msgs), before+1)
			}
		})
	}
}

// The check reads the header only: a large message still streams through
// whole.
func TestEnforceHeaderFromStreams(t *testing.T) {
	w := newWorld(t, worldOptions{enforceHeaderFrom: true, ms: fakems.Options{DiscardData: true}})
	c := w.login()
	body := message(mailbox, recipient, "large", strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n", 80000))
	if _, err := send(c, mailbox, []string{recipient}, body); err != nil {
		t.Fatal(err)
	}
	m := w.waitMessages(1)[0]
	if m.Size != int64(len(body)) || m.SHA256 != sha256.Sum256([]byte(body)) {
		t.Fatalf("upstream got %d bytes (want %d), digest match %v", m.Size, len(body), m.SHA256 == sha256.Sum256([]byte(body)))
	}
}

// Without the option (the default) only MAIL FROM is checked.
func TestHeaderFromNotEnforcedByDefault(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	if _, err := send(c, mailbox, []string{recipient}, message("ceo@contoso.com", recipient, "default", "x")); err != nil {
		t.Fatal(err)
	}
	w.waitMessages(1)
}
