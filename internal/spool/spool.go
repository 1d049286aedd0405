package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// Subdirectories and files of the root (see the package comment).
const (
	dirTmp        = "tmp"
	dirBody       = "body"
	dirActive     = "active"
	dirFailed     = "failed"
	dirQuarantine = "quarantine"
	lockName      = "lock"
	envelopeExt   = ".json"
)

// DefaultLeftoverAge is how old a temp file or a body without an envelope
// must be before Open removes it. A body still being received is written to
// at least every 10 minutes (the SMTP front end's idle limit for a message,
// RFC 5321 §4.5.3.2.6 allows more but no app needs it), so an hour never
// catches one still in use by another process.
const DefaultLeftoverAge = time.Hour

// Options tune a Spool; the zero value is the default.
type Options struct {
	// LeftoverAge: see DefaultLeftoverAge, used when zero.
	LeftoverAge time.Duration
	// Now is the clock of the envelopes' times (Created, NextAttempt by
	// Retry, InFlight, Failed) and of ids; nil means time.Now. File ages
	// (LeftoverAge) are real time.
	Now func() time.Time
}

// Spool is a queue directory, safe for concurrent use by goroutines and
// processes (see the package comment).
type Spool struct {
	root        string
	now         func() time.Time
	leftoverAge time.Duration

	// mu serialises this process's holders of the lock file: flock
	// excludes other open files, not other goroutines sharing one.
	mu   sync.Mutex
	lock *os.File
}

// Recovery is what Open found and did.
type Recovery struct {
	// Quarantined are the corrupt messages moved to quarantine/; the
	// caller logs one line each.
	Quarantined []Quarantined
	// Leftovers counts the temp files and bodies without an envelope that
	// were removed (interrupted Creates and Deletes).
	Leftovers int
	// NotPrivate is the *securefile.NotPrivateError when others may read
	// the root directory, for the caller to warn about; nil otherwise.
	NotPrivate error
}

// Quarantined is one message moved aside by recovery.
type Quarantined struct {
	// ID is the message id, or the envelope's file name when that is not
	// an id.
	ID string
	// Reason says what was wrong, e.g. "body missing".
	Reason string
	// Dir is where the envelope, the body (if any) and a reason file are.
	Dir string
}

// Open opens the spool at root, creating its directories if needed, and
// recovers it (see the package comment). The caller must Close it.
func Open(root string, opts Options) (*Spool, *Recovery, error) {
	s := &Spool{root: root, now: opts.Now, leftoverAge: opts.LeftoverAge}
	if s.now == nil {
		s.now = time.Now
	}
	if s.leftoverAge <= 0 {
		s.leftoverAge = DefaultLeftoverAge
	}
	for _, d := range []string{dirTmp, dirBody, dirActive, dirFailed, dirQuarantine} {
		if err := securefile.MkdirAll(filepath.Join(root, d)); err != nil {
			return nil, nil, storageErr("open spool", err)
		}
	}
	lock, err := openLockFile(filepath.Join(root, lockName))
	if err != nil {
		return nil, nil, err
	}
	s.lock = lock
	rec := &Recovery{}
	if err := securefile.CheckPrivate(root); err != nil {
		var np *securefile.NotPrivateError
		if !errors.As(err, &np) {
			s.Close()
			return nil, nil, storageErr("check spool permissions", err)
		}
		rec.NotPrivate = err
	}
	if err := s.locked(func() error { return s.recover(rec) }); err != nil {
		s.Close()
		return nil, nil, err
	}
	return s, rec, nil
}

// openLockFile opens (creating on first use) the file whose lock
// serialises changes of envelopes.
func openLockFile(path string) (*os.File, error) {
	if err := securefile.WriteNew(path, nil); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, storageErr("create lock file", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, storageErr("open lock file", err)
	}
	return f, nil
}

// Close releases the spool's lock file. Claims stay valid until released.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

// Root is the spool's directory.
func (s *Spool) Root() string { return s.root }

// locked runs fn holding the lock file: the exclusion of every change of an
// envelope against other goroutines and processes. fn makes a few file
// operations and never waits on the network.
func (s *Spool) locked(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return fmt.Errorf("%w: spool closed", ErrUnavailable)
	}
	if err := lockWait(s.lock); err != nil {
		return storageErr("lock spool", err)
	}
	defer unlock(s.lock)
	return fn()
}

func (s *Spool) path(dir, name string) string { return filepath.Join(s.root, dir, name) }

func (s *Spool) bodyPath(id string) string   { return s.path(dirBody, id) }
func (s *Spool) activePath(id string) string { return s.path(dirActive, id+envelopeExt) }
func (s *Spool) failedPath(id string) string { return s.path(dirFailed, id+envelopeExt) }

// missing is the error for a file of message id that is not there:
// ErrNotFound, unless the directory itself is gone (the spool removed under
// the relay), which is ErrUnavailable.
func (s *Spool) missing(id, dir string) error {
	if _, err := os.Stat(filepath.Join(s.root, dir)); err != nil {
		return storageErr("spool directory", err)
	}
	return notFound(id)
}

// readEnvelope reads and validates the envelope at path for message id.
// A missing file is fs.ErrNotExist; a corrupt one a *corruptError.
func readEnvelope(path, id string) (*Envelope, error) {
	f, err := openShared(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEnvelopeBytes+1))
	if err != nil {
		return nil, &corruptError{reason: "envelope unreadable", err: err}
	}
	if len(b) > maxEnvelopeBytes {
		return nil, &corruptError{reason: fmt.Sprintf("envelope larger than %d bytes", maxEnvelopeBytes)}
	}
	return parseEnvelope(b, id)
}
