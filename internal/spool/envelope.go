package spool

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// formatVersion is the version of the envelope's JSON; an envelope of
// another version fails validation (and is quarantined) rather than being
// half understood.
const formatVersion = 1

// maxEnvelopeBytes bounds what is read of an envelope file. 500 recipients
// (Exchange's per-message limit) with long replies stay far below it; a
// larger file is corrupt.
const maxEnvelopeBytes = 8 << 20

// State is where one recipient stands.
type State string

const (
	// Pending: not yet accepted by the upstream; to be tried (again).
	Pending State = "pending"
	// Delivered: the upstream accepted the recipient and the message.
	Delivered State = "delivered"
	// Failed: refused permanently, or given up; a DSN is due.
	Failed State = "failed"
)

// Mail holds the MAIL FROM parameters a later delivery needs.
type Mail struct {
	// Size is the SIZE= the app declared (RFC 1870), 0 if none.
	Size int64 `json:"size,omitzero"`
	// Body is BODY= (RFC 6152, RFC 3030): "7BIT", "8BITMIME",
	// "BINARYMIME", or "" when not given.
	Body string `json:"body,omitzero"`
	// SMTPUTF8 is set when the app asked for it (RFC 6531 §3.4).
	SMTPUTF8 bool `json:"smtputf8,omitzero"`
	// Ret is RET= (RFC 3461 §4.3): "FULL", "HDRS" or "".
	Ret string `json:"ret,omitzero"`
	// EnvID is ENVID= (RFC 3461 §4.4), xtext-decoded.
	EnvID string `json:"envid,omitzero"`
}

// Recipient is one RCPT TO with its own delivery state.
type Recipient struct {
	Addr  string `json:"addr"`
	State State  `json:"state"`
	// Reply is the upstream's last reply for this recipient, as
	// "451 4.7.0 text", for the message log and the DSN.
	Reply string `json:"reply,omitzero"`
	// Notify is NOTIFY= (RFC 3461 §4.1): "NEVER", or any of "SUCCESS",
	// "FAILURE", "DELAY"; empty when not given.
	Notify []string `json:"notify,omitzero"`
	// ORcpt is ORCPT= (RFC 3461 §4.2) as "addr-type;address", the form of
	// the DSN's Original-Recipient field (RFC 3464 §2.3.1).
	ORcpt string `json:"orcpt,omitzero"`
}

// Envelope is everything about a queued message except its body.
type Envelope struct {
	Version int    `json:"v"`
	ID      string `json:"id"`
	// Account is the relay account the app logged in as; Mailbox the
	// upstream mailbox it sends as.
	Account string `json:"account"`
	Mailbox string `json:"mailbox"`
	// From is the reverse-path without brackets; "" is the null sender.
	From       string      `json:"from"`
	Mail       Mail        `json:"mail,omitzero"`
	Recipients []Recipient `json:"rcpts"`
	// Size is the body's length in bytes, as written by Create.
	Size int64 `json:"size"`
	// MessageID is the header's Message-ID field (with its brackets), if
	// Create found one in the first 64 KiB.
	MessageID   string    `json:"message_id,omitzero"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts,omitzero"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitzero"`
	// InFlight is set by BeginAttempt before the upstream is contacted
	// and cleared (zero) by the Update that records the outcome.
	InFlight time.Time `json:"in_flight,omitzero"`
	// Failed and FailReason are set by Fail.
	Failed     time.Time `json:"failed,omitzero"`
	FailReason string    `json:"fail_reason,omitzero"`
	// Notification marks a delivery status notification the relay wrote
	// itself: when it fails, no notification is sent about it (RFC 3461
	// §6.2: no DSN about a DSN).
	Notification bool `json:"dsn,omitzero"`
}

// Pending counts the recipients still to be delivered.
func (e *Envelope) Pending() int {
	n := 0
	for _, r := range e.Recipients {
		if r.State == Pending {
			n++
		}
	}
	return n
}

// clone returns a deep copy, so a caller's envelope and the spool's never
// share a slice.
func (e *Envelope) clone() *Envelope {
	c := *e
	c.Recipients = slices.Clone(e.Recipients)
	for i := range c.Recipients {
		c.Recipients[i].Notify = slices.Clone(e.Recipients[i].Notify)
	}
	return &c
}

// validate reports the first reason e cannot be a stored envelope. The
// addresses and parameters end up in SMTP commands and exported header
// fields, so control characters (CR, LF above all) are refused.
func (e *Envelope) validate() error {
	switch {
	case e.Version != formatVersion:
		return fmt.Errorf("format version %d, want %d", e.Version, formatVersion)
	case !validID(e.ID):
		return fmt.Errorf("id %q is not a message id", e.ID)
	case e.Account == "":
		return errors.New("no account")
	case e.Mailbox == "":
		return errors.New("no mailbox")
	case len(e.Recipients) == 0:
		return errors.New("no recipients")
	case e.Size < 0:
		return fmt.Errorf("size %d", e.Size)
	case e.Created.IsZero():
		return errors.New("no creation time")
	case !oneOf(e.Mail.Body, "", "7BIT", "8BITMIME", "BINARYMIME"):
		return fmt.Errorf("BODY=%q", e.Mail.Body)
	case !oneOf(e.Mail.Ret, "", "FULL", "HDRS"):
		return fmt.Errorf("RET=%q", e.Mail.Ret)
	}
	for name, v := range map[string]string{"account": e.Account, "mailbox": e.Mailbox, "from": e.From,
		"ENVID": e.Mail.EnvID, "message id": e.MessageID} {
		if hasControl(v) {
			return fmt.Errorf("%s %q has control characters", name, v)
		}
	}
	for i, r := range e.Recipients {
		if err := r.validate(); err != nil {
			return fmt.Errorf("recipient %d: %w", i+1, err)
		}
	}
	return nil
}

func (r *Recipient) validate() error {
	switch {
	case r.Addr == "":
		return errors.New("no address")
	case hasControl(r.Addr) || hasControl(r.ORcpt):
		return fmt.Errorf("address %q or ORCPT %q has control characters", r.Addr, r.ORcpt)
	case !oneOf(string(r.State), string(Pending), string(Delivered), string(Failed)):
		return fmt.Errorf("state %q", r.State)
	}
	for _, n := range r.Notify {
		if !oneOf(n, "NEVER", "SUCCESS", "FAILURE", "DELAY") {
			return fmt.Errorf("NOTIFY=%q", n)
		}
	}
	return nil
}

func oneOf(v string, allowed ...string) bool { return slices.Contains(allowed, v) }

// hasControl reports C0 controls and DEL; UTF-8 (RFC 6531) is allowed.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// parseEnvelope decodes and validates an envelope file's content; id is
// the id its file name gives, which the content must repeat.
func parseEnvelope(b []byte, id string) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, &corruptError{reason: "envelope is not valid JSON", err: err}
	}
	if err := e.validate(); err != nil {
		return nil, &corruptError{reason: "envelope is invalid", err: err}
	}
	if e.ID != id {
		return nil, &corruptError{reason: "envelope is invalid", err: fmt.Errorf("id %q in a file named %q", e.ID, id)}
	}
	return &e, nil
}

// corruptError is an envelope (or body) recovery must quarantine.
type corruptError struct {
	reason string
	err    error
}

func (e *corruptError) Error() string {
	if e.err == nil {
		return e.reason
	}
	return e.reason + ": " + e.err.Error()
}

func (e *corruptError) Unwrap() error { return e.err }

// Message ids: 10 characters of milliseconds since 1970 and 16 random ones,
// in lowercase Crockford base32 (26 characters, like a ULID). They sort by
// creation time to the millisecond, are safe in URLs and file names, and do
// not collide on case-insensitive file systems.
const (
	idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	idTimeLen  = 10
	idLen      = idTimeLen + 16 // 80 random bits
)

// newID returns a fresh message id for a message created at now.
func newID(now time.Time) string {
	var b [idLen]byte
	ms := uint64(max(now.UnixMilli(), 0))
	for i := idTimeLen - 1; i >= 0; i-- {
		b[i] = idAlphabet[ms&31]
		ms >>= 5
	}
	var r [idLen - idTimeLen]byte
	rand.Read(r[:]) // never fails (crypto/rand, Go 1.24+)
	for i, v := range r {
		b[idTimeLen+i] = idAlphabet[v&31]
	}
	return string(b[:])
}

// validID reports whether s has the shape of a message id, which is what
// makes it safe to join to a directory.
func validID(s string) bool {
	return len(s) == idLen && strings.Trim(s, idAlphabet) == ""
}
