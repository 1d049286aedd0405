package spool

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// Get returns the envelope of message id, active or failed (Failed set).
func (s *Spool) Get(id string) (*Envelope, error) {
	if !validID(id) {
		return nil, notFound(id)
	}
	for _, p := range []string{s.activePath(id), s.failedPath(id)} {
		e, err := readEnvelope(p, id)
		if err == nil {
			return e, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, envelopeErr(id, err)
		}
	}
	return nil, s.missing(id, dirActive)
}

// envelopeErr wraps a failure to read an existing envelope: corruption is
// reported as such, anything else is the storage's.
func envelopeErr(id string, err error) error {
	var c *corruptError
	if errors.As(err, &c) {
		return fmt.Errorf("spool: message %s: %w", id, err)
	}
	return storageErr("read envelope "+id, err)
}

// List returns the active envelopes, by next attempt, then creation, then
// id. It reads envelopes only, never bodies. An envelope that cannot be
// read (corrupt since Open, or a storage error) is left out and reported
// in the error, which joins one error per such envelope; the others are
// returned either way.
func (s *Spool) List() ([]*Envelope, error) {
	envs, err := s.readDir(dirActive)
	slices.SortFunc(envs, func(a, b *Envelope) int {
		return cmp.Or(a.NextAttempt.Compare(b.NextAttempt), a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	return envs, err
}

// ListFailed returns the failed envelopes, oldest failure first; errors as
// for List.
func (s *Spool) ListFailed() ([]*Envelope, error) {
	envs, err := s.readDir(dirFailed)
	slices.SortFunc(envs, func(a, b *Envelope) int {
		return cmp.Or(a.Failed.Compare(b.Failed), cmp.Compare(a.ID, b.ID))
	})
	return envs, err
}

// readDir reads the envelopes of dir. One removed meanwhile is skipped.
func (s *Spool) readDir(dir string) ([]*Envelope, error) {
	ents, err := os.ReadDir(s.path(dir, ""))
	if err != nil {
		return nil, storageErr("list "+dir, err)
	}
	var envs []*Envelope
	var errs []error
	for _, de := range ents {
		id, ok := envelopeID(de.Name())
		if !ok {
			continue
		}
		e, err := readEnvelope(s.path(dir, de.Name()), id)
		switch {
		case err == nil:
			envs = append(envs, e)
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, envelopeErr(id, err))
		}
	}
	return envs, errors.Join(errs...)
}

// envelopeID returns the message id an envelope's file name gives; false
// for other names (securefile's dot-prefixed temp files among them).
func envelopeID(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, envelopeExt)
	return id, ok && validID(id)
}

// OpenBody opens the body of message id, active or failed, for reading.
// The caller closes it. A body stays readable through an open file even if
// the message is deleted meanwhile.
func (s *Spool) OpenBody(id string) (*os.File, error) {
	if !validID(id) {
		return nil, notFound(id)
	}
	f, err := openShared(s.bodyPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, s.missing(id, dirBody)
	}
	if err != nil {
		return nil, storageErr("open body", err)
	}
	return f, nil
}

// Update replaces the envelope of active message env.ID atomically. If the
// message is no longer active (delivered and deleted, failed, deleted by
// `oauthrelay queue delete`) it returns ErrNotFound and writes nothing: a
// deleted message is never brought back. Only the delivery state should
// change (recipients, attempts, next attempt, errors, InFlight); the
// caller holds the claim.
func (s *Spool) Update(env *Envelope) error {
	if err := env.validate(); err != nil {
		return fmt.Errorf("spool: update: invalid envelope: %w", err)
	}
	data, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("spool: encode envelope: %w", err)
	}
	return s.locked(func() error { return s.replaceActive(env.ID, data) })
}

// replaceActive writes data as the envelope of id if id is active. The
// caller holds the lock, so nothing removes it between the check and the
// rename.
func (s *Spool) replaceActive(id string, data []byte) error {
	if _, err := os.Lstat(s.activePath(id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return s.missing(id, dirActive)
		}
		return storageErr("stat envelope", err)
	}
	if err := securefile.WriteFile(s.activePath(id), data); err != nil {
		return storageErr("write envelope", err)
	}
	return nil
}

// change applies fn to the active envelope of id and writes it, under the
// lock, and returns what was written.
func (s *Spool) change(id string, fn func(*Envelope)) (*Envelope, error) {
	if !validID(id) {
		return nil, notFound(id)
	}
	var out *Envelope
	err := s.locked(func() error {
		e, err := readEnvelope(s.activePath(id), id)
		if errors.Is(err, fs.ErrNotExist) {
			return s.missing(id, dirActive)
		}
		if err != nil {
			return envelopeErr(id, err)
		}
		fn(e)
		data, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("spool: encode envelope: %w", err)
		}
		if err := securefile.WriteFile(s.activePath(id), data); err != nil {
			return storageErr("write envelope", err)
		}
		out = e
		return nil
	})
	return out, err
}

// Retry makes active message id due now.
func (s *Spool) Retry(id string) error {
	now := s.now()
	_, err := s.change(id, func(e *Envelope) { e.NextAttempt = now })
	return err
}

// BeginAttempt marks active message id InFlight (durably) and counts the
// attempt, before the caller contacts the upstream; the caller holds the
// claim. interrupted reports that the mark was already set: an earlier
// attempt ended without recording its outcome, so the upstream may have
// the message already and this attempt may deliver a duplicate. The
// caller clears InFlight with the Update that records the outcome.
func (s *Spool) BeginAttempt(id string) (env *Envelope, interrupted bool, err error) {
	now := s.now()
	env, err = s.change(id, func(e *Envelope) {
		interrupted = !e.InFlight.IsZero()
		e.InFlight = now
		e.Attempts++
	})
	if err != nil {
		return nil, false, err
	}
	return env, interrupted, nil
}

// Delete removes message id, active or failed, envelope first: a crash in
// between leaves a body without an envelope, which Open removes.
func (s *Spool) Delete(id string) error {
	if !validID(id) {
		return notFound(id)
	}
	return s.locked(func() error {
		found := false
		for _, p := range []string{s.activePath(id), s.failedPath(id)} {
			if _, err := os.Lstat(p); err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					return storageErr("stat envelope", err)
				}
				continue
			}
			found = true
			if err := securefile.Remove(p); err != nil {
				return storageErr("remove envelope", err)
			}
		}
		if !found {
			return s.missing(id, dirActive)
		}
		if err := securefile.Remove(s.bodyPath(id)); err != nil {
			return storageErr("remove body", err)
		}
		return nil
	})
}

// Fail moves active message id to the failed area with reason: its
// envelope, with Failed set to now and InFlight cleared, is written to
// failed/ and the active one removed; the body stays where it is. Record
// the recipients' final states with Update first. A crash between the two
// steps leaves both envelopes, and Open completes the move.
func (s *Spool) Fail(id, reason string) error {
	if !validID(id) {
		return notFound(id)
	}
	now := s.now()
	return s.locked(func() error {
		e, err := readEnvelope(s.activePath(id), id)
		if errors.Is(err, fs.ErrNotExist) {
			return s.missing(id, dirActive)
		}
		if err != nil {
			return envelopeErr(id, err)
		}
		e.Failed, e.FailReason, e.InFlight = now, reason, time.Time{}
		data, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("spool: encode envelope: %w", err)
		}
		if err := securefile.WriteFile(s.failedPath(id), data); err != nil {
			return storageErr("write failed envelope", err)
		}
		if err := securefile.Remove(s.activePath(id)); err != nil {
			return storageErr("remove envelope", err)
		}
		return nil
	})
}

// ExpireFailed deletes the failed messages whose failure is older than
// keepFailed at now, and returns their ids. Failed envelopes that cannot be
// read are left alone and reported in the error.
func (s *Spool) ExpireFailed(keepFailed time.Duration, now time.Time) ([]string, error) {
	var removed []string
	err := s.locked(func() error {
		envs, rerr := s.readDir(dirFailed)
		for _, e := range envs {
			if e.Failed.Add(keepFailed).After(now) {
				continue
			}
			if err := securefile.Remove(s.failedPath(e.ID)); err != nil {
				return errors.Join(rerr, storageErr("remove failed envelope", err))
			}
			if err := securefile.Remove(s.bodyPath(e.ID)); err != nil {
				return errors.Join(rerr, storageErr("remove body", err))
			}
			removed = append(removed, e.ID)
		}
		return rerr
	})
	return removed, err
}

// Stats sums up the queue, for metrics and the status page.
type Stats struct {
	// Depth counts active messages; InFlight those marked by
	// BeginAttempt and not yet updated; Failed those in the failed area.
	Depth, InFlight, Failed int
	// Oldest is the creation time of the oldest active message, and
	// NextAttempt the earliest due one; zero when the queue is empty.
	Oldest, NextAttempt time.Time
	// Accounts has the same figures per account (Failed counted there too).
	Accounts map[string]*AccountStats
}

// AccountStats are one account's queue figures.
type AccountStats struct {
	Depth, InFlight, Failed int
	Oldest, NextAttempt     time.Time
}

// Stats reads every envelope (not the bodies). Envelopes that cannot be
// read are left out and reported in the error, as for List.
func (s *Spool) Stats() (Stats, error) {
	active, aerr := s.List()
	failed, ferr := s.ListFailed()
	st := Stats{Accounts: map[string]*AccountStats{}}
	account := func(name string) *AccountStats {
		if st.Accounts[name] == nil {
			st.Accounts[name] = &AccountStats{}
		}
		return st.Accounts[name]
	}
	for _, e := range active {
		a := account(e.Account)
		st.Depth++
		a.Depth++
		if !e.InFlight.IsZero() {
			st.InFlight++
			a.InFlight++
		}
		st.Oldest, a.Oldest = earliest(st.Oldest, e.Created), earliest(a.Oldest, e.Created)
		st.NextAttempt, a.NextAttempt = earliest(st.NextAttempt, e.NextAttempt), earliest(a.NextAttempt, e.NextAttempt)
	}
	for _, e := range failed {
		st.Failed++
		account(e.Account).Failed++
	}
	return st, errors.Join(aerr, ferr)
}

// earliest is the earlier of a and b, a zero a counting as unset.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// Claim takes the exclusive right to deliver active message id, until
// release is called (release is idempotent). ErrClaimed if another claim,
// in this process or another, holds it; ErrNotFound if it is not active.
// A claim does not stop Delete: the claimant's next Update then returns
// ErrNotFound.
func (s *Spool) Claim(id string) (release func(), err error) {
	if !validID(id) {
		return nil, notFound(id)
	}
	f, err := openShared(s.bodyPath(id))
	if err != nil {
		// A deleted message: its body is gone, or on Windows still
		// there but pending deletion, which refuses a new open.
		if _, serr := os.Lstat(s.activePath(id)); errors.Is(serr, fs.ErrNotExist) {
			return nil, s.missing(id, dirActive)
		}
		return nil, storageErr("open body", err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("%w: %s", ErrClaimed, id)
		}
		return nil, storageErr("lock body", err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			unlock(f)
			f.Close()
		})
	}
	// Between the open and the lock the message may have been failed or
	// deleted by someone who held the claim.
	if _, err := os.Lstat(s.activePath(id)); err != nil {
		release()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, s.missing(id, dirActive)
		}
		return nil, storageErr("stat envelope", err)
	}
	return release, nil
}
