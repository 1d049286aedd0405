package spool

import (
	"errors"
	"fmt"
)

// Errors of the spool, matched with errors.Is. The storage errors wrap the
// cause as well, so the log line can name it.
var (
	// ErrNotFound: no message with that id (in the state the operation
	// needs: active for Update, Retry, Fail, Claim and BeginAttempt).
	ErrNotFound = errors.New("spool: no such message")
	// ErrClaimed: another claim (in this process or another) holds the
	// message.
	ErrClaimed = errors.New("spool: message is claimed by another delivery")
	// ErrTooBig: the body exceeded the size limit given to Create; nothing
	// was stored. RFC 5321 §4.5.3.1.10 answers it with 552.
	ErrTooBig = errors.New("spool: message exceeds the size limit")
	// ErrNoSpace: the file system is full or the quota is exhausted
	// (ENOSPC, EDQUOT; ERROR_DISK_FULL on Windows). Temporary: the SMTP
	// front end answers 452 4.3.1 (RFC 3463 §3.4), never 250.
	ErrNoSpace = errors.New("spool: no space left for the queue")
	// ErrUnavailable: any other failure of the spool's own storage (the
	// directory removed or unwritable, an I/O error). Also 452 4.3.1.
	ErrUnavailable = errors.New("spool: queue storage unavailable")
)

// ReadError is a failure to read the message body handed to Create: the
// app's side (a disconnect, a timeout), not the spool's. Nothing was
// stored.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "spool: read message body: " + e.Err.Error() }

func (e *ReadError) Unwrap() error { return e.Err }

// storageErr classifies a failure of the spool's own file operation op:
// ErrNoSpace for a full disk or quota, ErrUnavailable for anything else.
// Both the class and the cause stay reachable through errors.Is.
func storageErr(op string, err error) error {
	kind := ErrUnavailable
	if noSpace(err) {
		kind = ErrNoSpace
	}
	return fmt.Errorf("%w (%s: %w)", kind, op, err)
}

// notFound is the error for a message id that is not there.
func notFound(id string) error { return fmt.Errorf("%w: %s", ErrNotFound, id) }
