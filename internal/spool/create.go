package spool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

const (
	// copyBufSize is the one buffer a body streams through: the memory a
	// Create costs whatever the body's size.
	copyBufSize = 256 << 10
	// headerScanSize is how much of the body's start is kept to find the
	// Message-ID field, the same bound the SMTP front end reads for
	// enforce_header_from.
	headerScanSize = 64 << 10
	// maxMessageIDLen: a header line is at most 998 characters (RFC 5322
	// §2.1.1); a longer "Message-ID" is not recorded.
	maxMessageIDLen = 998
)

// Create stores a new message: env's Account, Mailbox, From, Mail and
// Recipients (the rest is filled in: ID, Created, Size, Version, the
// recipients' state Pending when empty, NextAttempt now when zero,
// MessageID from the header when empty) and the body read from body until
// EOF. maxSize > 0 refuses a body longer than maxSize bytes with ErrTooBig.
//
// Create returns the stored envelope only once the message is durable (see
// the package comment): that is when the app may be told 250. On any error
// nothing is visible and no file is left behind: ErrNoSpace or
// ErrUnavailable for the spool's storage, ErrTooBig, a *ReadError for body,
// ctx's error when ctx ended. ctx is checked between reads of body; a Read
// that blocks is the caller's to end (the front end's deadlines do).
func (s *Spool) Create(ctx context.Context, env Envelope, body io.Reader, maxSize int64) (*Envelope, error) {
	e, err := s.newEnvelope(&env)
	if err != nil {
		return nil, err
	}
	tmp, head, err := s.receive(ctx, e, body, maxSize)
	if err != nil {
		return nil, err
	}
	if id := MessageID(head); e.MessageID == "" && !hasControl(id) {
		e.MessageID = id
	}
	if err := s.commit(ctx, e, tmp); err != nil {
		return nil, err
	}
	return e.clone(), nil
}

// newEnvelope checks what the caller gave and completes it, before any
// byte is written.
func (s *Spool) newEnvelope(in *Envelope) (*Envelope, error) {
	e := in.clone()
	now := s.now()
	e.Version = formatVersion
	e.ID = newID(now)
	e.Created = now
	if e.NextAttempt.IsZero() {
		e.NextAttempt = now
	}
	for i := range e.Recipients {
		if e.Recipients[i].State == "" {
			e.Recipients[i].State = Pending
		}
	}
	e.Size, e.Attempts, e.LastError = 0, 0, ""
	e.InFlight, e.Failed, e.FailReason = time.Time{}, time.Time{}, ""
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("spool: create: invalid envelope: %w", err)
	}
	return e, nil
}

// receive streams body into a new file in tmp/ and fsyncs it. It returns
// the temp file's path and the start of the body (for the Message-ID), and
// sets e.Size. On error the temp file is gone.
func (s *Spool) receive(ctx context.Context, e *Envelope, body io.Reader, maxSize int64) (tmp string, head []byte, err error) {
	f, err := os.CreateTemp(s.path(dirTmp, ""), e.ID+".*")
	if err != nil {
		return "", nil, storageErr("create body file", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	head, err = copyBody(ctx, f, body, maxSize, &e.Size)
	if err != nil {
		return "", nil, err
	}
	if err := f.Sync(); err != nil {
		return "", nil, storageErr("sync body file", err)
	}
	if err := f.Close(); err != nil {
		return "", nil, storageErr("close body file", err)
	}
	return f.Name(), head, nil
}

// copyBody copies r to f through one buffer, keeping the first
// headerScanSize bytes, counting into *n. The loop ends at r's EOF, an
// error, ctx's end or maxSize.
func copyBody(ctx context.Context, f *os.File, r io.Reader, maxSize int64, n *int64) ([]byte, error) {
	buf := make([]byte, copyBufSize)
	var head []byte
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("spool: create: %w", err)
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			if maxSize > 0 && *n+int64(m) > maxSize {
				return nil, fmt.Errorf("%w (%d bytes)", ErrTooBig, maxSize)
			}
			if len(head) < headerScanSize {
				head = append(head, buf[:min(m, headerScanSize-len(head))]...)
			}
			if _, err := f.Write(buf[:m]); err != nil {
				return nil, storageErr("write body file", err)
			}
			*n += int64(m)
		}
		if rerr == io.EOF {
			return head, nil
		}
		if rerr != nil {
			return nil, &ReadError{Err: rerr}
		}
	}
}

// commit moves the body into body/ and links the envelope into active/,
// each followed by an fsync of its directory: the envelope's link is the
// commit point. On error both are removed again.
func (s *Spool) commit(ctx context.Context, e *Envelope, tmp string) error {
	data, err := json.Marshal(e)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("spool: encode envelope: %w", err)
	}
	body := s.bodyPath(e.ID)
	if err := os.Rename(tmp, body); err != nil {
		os.Remove(tmp)
		return storageErr("move body file", err)
	}
	if err := securefile.SyncDir(s.path(dirBody, "")); err != nil {
		os.Remove(body)
		return storageErr("sync body directory", err)
	}
	// The last moment an app that went away leaves nothing behind.
	if err := ctx.Err(); err != nil {
		os.Remove(body)
		return fmt.Errorf("spool: create: %w", err)
	}
	if err := securefile.WriteNew(s.activePath(e.ID), data); err != nil {
		// The link may have happened with only the directory sync
		// failing: remove the envelope too, so what the app is told
		// (not accepted) is what the queue holds.
		securefile.Remove(s.activePath(e.ID))
		os.Remove(body)
		return storageErr("write envelope", err)
	}
	return nil
}

// MessageID returns the first Message-ID field (RFC 5322 §3.6.4) of the
// header at the start of msg, unfolded, whitespace collapsed; "" if none
// or if it holds control characters. msg may be cut off: a last line
// without its line end is not read when msg is headerScanSize long. The
// spool records it; the delivery's message log uses it too.
func MessageID(msg []byte) string {
	var field []byte
	cutOff := len(msg) >= headerScanSize
	for len(msg) > 0 {
		line, rest, complete := bytes.Cut(msg, []byte("\n"))
		if !complete && cutOff {
			break
		}
		msg = rest
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			field = append(field, line...) // folded (RFC 5322 §2.2.3)
			continue
		}
		if id, ok := messageIDField(field); ok {
			return id
		}
		if len(line) == 0 {
			return "" // end of the header section
		}
		field = append(field[:0], line...)
	}
	id, _ := messageIDField(field)
	return id
}

// messageIDField returns the value of field if it is a Message-ID field.
func messageIDField(field []byte) (string, bool) {
	name, value, ok := bytes.Cut(field, []byte(":"))
	if !ok || !strings.EqualFold(string(bytes.TrimRight(name, " \t")), "Message-ID") {
		return "", false
	}
	id := strings.Join(strings.Fields(string(value)), " ")
	if id == "" || len(id) > maxMessageIDLen || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", false
	}
	return id, true
}
