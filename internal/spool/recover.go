package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// Names inside a quarantine directory.
const (
	quarantineEnvelope = "envelope.json"
	quarantineBody     = "body"
	quarantineReason   = "reason"
	// quarantineNames bounds the names tried for a quarantine directory
	// (the first is free unless two recoveries ran within a nanosecond).
	quarantineNames = 100
)

// recover is Open's check of the spool; the caller holds the lock.
func (s *Spool) recover(rec *Recovery) error {
	if err := s.finishFails(); err != nil {
		return err
	}
	good := map[string]bool{} // ids with a valid envelope and body
	for _, dir := range []string{dirActive, dirFailed} {
		if err := s.checkDir(dir, rec, good); err != nil {
			return err
		}
	}
	return s.removeLeftovers(rec, good)
}

// finishFails completes a Fail interrupted between writing the failed
// envelope and removing the active one: the failed one is the newer.
func (s *Spool) finishFails() error {
	ents, err := os.ReadDir(s.path(dirFailed, ""))
	if err != nil {
		return storageErr("list failed", err)
	}
	for _, de := range ents {
		id, ok := envelopeID(de.Name())
		if !ok {
			continue
		}
		if _, err := os.Lstat(s.activePath(id)); err == nil {
			if err := securefile.Remove(s.activePath(id)); err != nil {
				return storageErr("finish interrupted fail", err)
			}
		}
	}
	return nil
}

// checkDir checks the envelopes of dir and their bodies, quarantines what
// is corrupt, removes old securefile temp files, and adds the good ids to
// good.
func (s *Spool) checkDir(dir string, rec *Recovery, good map[string]bool) error {
	ents, err := os.ReadDir(s.path(dir, ""))
	if err != nil {
		return storageErr("list "+dir, err)
	}
	for _, de := range ents {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, "."):
			if err := s.removeIfOld(rec, dir, name); err != nil {
				return err
			}
			continue
		case de.IsDir() || !strings.HasSuffix(name, envelopeExt):
			continue // not ours; left alone
		}
		id, ok := envelopeID(name)
		if !ok {
			if err := s.quarantine(rec, dir, name, "", "file name is not a message id"); err != nil {
				return err
			}
			continue
		}
		reason := s.check(dir, id)
		if reason == "" {
			good[id] = true
			continue
		}
		if err := s.quarantine(rec, dir, name, id, reason); err != nil {
			return err
		}
	}
	return nil
}

// check returns why message id's envelope in dir or its body is corrupt,
// or "" when both are sound.
func (s *Spool) check(dir, id string) string {
	e, err := readEnvelope(s.path(dir, id+envelopeExt), id)
	var c *corruptError
	switch {
	case errors.As(err, &c):
		return c.Error()
	case err != nil:
		return "envelope unreadable: " + err.Error()
	case dir == dirFailed && e.Failed.IsZero():
		return "failed envelope without a failure time"
	}
	return s.checkBody(id, e.Size)
}

// checkBody returns why message id's body is not the size bytes Create
// wrote, or "".
func (s *Spool) checkBody(id string, size int64) string {
	fi, err := os.Lstat(s.bodyPath(id))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "body missing"
	case err != nil:
		return "body unreadable: " + err.Error()
	case !fi.Mode().IsRegular():
		return "body unreadable: not a regular file (" + fi.Mode().Type().String() + ")"
	case fi.Size() < size:
		return fmt.Sprintf("body truncated: %d bytes of %d", fi.Size(), size)
	case fi.Size() > size:
		return fmt.Sprintf("body is %d bytes, longer than the %d recorded", fi.Size(), size)
	}
	f, err := openShared(s.bodyPath(id))
	if err != nil {
		return "body unreadable: " + err.Error()
	}
	f.Close()
	return ""
}

// quarantine moves the envelope file dir/name and, for a message id, its
// body into a new directory of quarantine/ with a reason file. The reason
// is written first and the envelope moved last, so a crash in between
// leaves the envelope where the next Open quarantines it again.
func (s *Spool) quarantine(rec *Recovery, dir, name, id, reason string) error {
	qdir, err := s.newQuarantineDir(name)
	if err != nil {
		return err
	}
	if err := securefile.WriteNew(filepath.Join(qdir, quarantineReason), []byte(reason+"\n")); err != nil {
		return storageErr("write quarantine reason", err)
	}
	if id != "" {
		err := os.Rename(s.bodyPath(id), filepath.Join(qdir, quarantineBody))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return storageErr("quarantine body", err)
		}
	}
	if err := os.Rename(s.path(dir, name), filepath.Join(qdir, quarantineEnvelope)); err != nil {
		return storageErr("quarantine envelope", err)
	}
	for _, d := range []string{qdir, s.path(dirBody, ""), s.path(dir, "")} {
		if err := securefile.SyncDir(d); err != nil {
			return storageErr("sync "+d, err)
		}
	}
	if id == "" {
		id = name
	}
	rec.Quarantined = append(rec.Quarantined, Quarantined{ID: id, Reason: reason, Dir: qdir})
	return nil
}

// newQuarantineDir creates quarantine/<name>.<unix nanoseconds>, a name
// no earlier recovery used.
func (s *Spool) newQuarantineDir(name string) (string, error) {
	base := strings.TrimSuffix(name, envelopeExt)
	stamp := time.Now().UnixNano()
	for i := range int64(quarantineNames) {
		qdir := s.path(dirQuarantine, fmt.Sprintf("%s.%d", base, stamp+i))
		if _, err := os.Lstat(qdir); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := securefile.MkdirAll(qdir); err != nil {
			return "", storageErr("create quarantine directory", err)
		}
		return qdir, nil
	}
	return "", fmt.Errorf("%w: no free quarantine directory name for %s", ErrUnavailable, name)
}

// removeLeftovers removes what interrupted Creates and Deletes left: temp
// files in tmp/ and bodies without a good envelope, once older than the
// leftover age (younger ones may belong to a Create in progress in
// another process, which takes no lock).
func (s *Spool) removeLeftovers(rec *Recovery, good map[string]bool) error {
	for _, dir := range []string{dirTmp, dirBody} {
		ents, err := os.ReadDir(s.path(dir, ""))
		if err != nil {
			return storageErr("list "+dir, err)
		}
		for _, de := range ents {
			if dir == dirBody && good[de.Name()] {
				continue
			}
			if err := s.removeIfOld(rec, dir, de.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeIfOld removes the regular file dir/name if it was last written
// longer than the leftover age ago. Ages are real time (file times), not
// Options.Now.
func (s *Spool) removeIfOld(rec *Recovery, dir, name string) error {
	p := s.path(dir, name)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return storageErr("stat leftover", err)
	}
	if !fi.Mode().IsRegular() || time.Since(fi.ModTime()) < s.leftoverAge {
		return nil
	}
	if err := securefile.Remove(p); err != nil {
		return storageErr("remove leftover", err)
	}
	rec.Leftovers++
	return nil
}
