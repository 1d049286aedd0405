package spool

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Each kind of corruption found at Open moves that message, and only it,
// to quarantine/ with its reason; the other message stays deliverable.
func TestRecoveryQuarantines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spoil  func(t *testing.T, s *Spool, id string) (file string) // returns the envelope's file name
		reason string
		body   bool // the body is kept in quarantine
	}{
		{"body missing", func(t *testing.T, s *Spool, id string) string {
			must(t, os.Remove(s.bodyPath(id)))
			return id + envelopeExt
		}, "body missing", false},
		{"body unreadable", func(t *testing.T, s *Spool, id string) string {
			must(t, os.Remove(s.bodyPath(id)))
			must(t, os.Mkdir(s.bodyPath(id), 0o700))
			return id + envelopeExt
		}, "body unreadable: not a regular file", true},
		{"body truncated", func(t *testing.T, s *Spool, id string) string {
			must(t, os.Truncate(s.bodyPath(id), 1000))
			return id + envelopeExt
		}, "body truncated: 1000 bytes of 2000", true},
		{"body longer", func(t *testing.T, s *Spool, id string) string {
			must(t, os.Truncate(s.bodyPath(id), 2001))
			return id + envelopeExt
		}, "body is 2001 bytes, longer than the 2000 recorded", true},
		{"envelope not JSON", func(t *testing.T, s *Spool, id string) string {
			b, err := os.ReadFile(s.activePath(id))
			must(t, err)
			must(t, os.WriteFile(s.activePath(id), b[:len(b)/2], 0o600))
			return id + envelopeExt
		}, "envelope is not valid JSON", true},
		{"envelope invalid", func(t *testing.T, s *Spool, id string) string {
			rewrite(t, s.activePath(id), `"rcpts":[`, `"rcpts":[],"x":[`)
			return id + envelopeExt
		}, "envelope is invalid: no recipients", true},
		{"envelope of another id", func(t *testing.T, s *Spool, id string) string {
			other := newID(time.Now())
			must(t, os.Rename(s.activePath(id), s.activePath(other)))
			must(t, os.Rename(s.bodyPath(id), s.bodyPath(other)))
			return other + envelopeExt
		}, "envelope is invalid: id", true},
		{"envelope of a newer format", func(t *testing.T, s *Spool, id string) string {
			rewrite(t, s.activePath(id), `"v":1`, `"v":2`)
			return id + envelopeExt
		}, "envelope is invalid: format version 2", true},
		{"file name not an id", func(t *testing.T, s *Spool, id string) string {
			must(t, os.Rename(s.activePath(id), filepath.Join(s.Root(), dirActive, "invoice.json")))
			return "invoice.json"
		}, "file name is not a message id", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _, err := Open(dir, Options{})
			must(t, err)
			bad, good := create(t, s, 1), create(t, s, 2)
			file := tc.spoil(t, s, bad.ID)
			s.Close()

			s, rec := openSpool(t, dir, Options{})
			if len(rec.Quarantined) != 1 {
				t.Fatalf("quarantined %+v, want one", rec.Quarantined)
			}
			q := rec.Quarantined[0]
			if !strings.HasPrefix(q.Reason, tc.reason) {
				t.Errorf("reason %q, want %q...", q.Reason, tc.reason)
			}
			reason, err := os.ReadFile(filepath.Join(q.Dir, quarantineReason))
			if err != nil || strings.TrimSpace(string(reason)) != q.Reason {
				t.Errorf("reason file %q, %v", reason, err)
			}
			if _, err := os.Stat(filepath.Join(q.Dir, quarantineEnvelope)); err != nil {
				t.Errorf("envelope not in quarantine: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(q.Dir, quarantineBody)); (err == nil) != tc.body {
				t.Errorf("body in quarantine: %v, want %v", err == nil, tc.body)
			}
			if _, err := os.Lstat(filepath.Join(dir, dirActive, file)); !os.IsNotExist(err) {
				t.Errorf("corrupt envelope %s still active: %v", file, err)
			}
			envs, err := s.List()
			if err != nil || len(envs) != 1 || envs[0].ID != good.ID {
				t.Fatalf("List after recovery: %v, %v; want only %s", envs, err, good.ID)
			}
			if bodyDigest(t, s, good.ID) != digest(t, message(2, 2000)) {
				t.Error("the sound message's body changed")
			}
		})
	}
}

// A message failed in the failed area is checked too.
func TestRecoveryQuarantinesFailed(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir, Options{})
	must(t, err)
	e := create(t, s, 1)
	must(t, s.Fail(e.ID, "550 5.1.1 unknown"))
	must(t, os.Remove(s.bodyPath(e.ID)))
	s.Close()
	_, rec := openSpool(t, dir, Options{})
	if len(rec.Quarantined) != 1 || rec.Quarantined[0].ID != e.ID || rec.Quarantined[0].Reason != "body missing" {
		t.Fatalf("quarantined %+v", rec.Quarantined)
	}
	if n := names(t, filepath.Join(dir, dirFailed)); len(n) != 0 {
		t.Errorf("failed/ still holds %q", n)
	}
}

// Temp files and bodies without an envelope are removed once older than
// the leftover age; younger ones (a Create in progress elsewhere) stay.
func TestRecoveryRemovesLeftovers(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir, Options{})
	must(t, err)
	e := create(t, s, 1)
	oldTmp, newTmp := filepath.Join(dir, dirTmp, "a.1"), filepath.Join(dir, dirTmp, "b.2")
	oldBody, newBody := s.bodyPath(newID(time.Now())), s.bodyPath(newID(time.Now()))
	oldEnvTemp := filepath.Join(dir, dirActive, "."+e.ID+".json.123.tmp")
	for _, p := range []string{oldTmp, newTmp, oldBody, newBody, oldEnvTemp} {
		must(t, os.WriteFile(p, []byte("partial"), 0o600))
	}
	for _, p := range []string{oldTmp, oldBody, oldEnvTemp, s.bodyPath(e.ID), s.activePath(e.ID)} {
		age(t, p, 2*time.Hour)
	}
	s.Close()

	s, rec := openSpool(t, dir, Options{})
	if rec.Leftovers != 3 || len(rec.Quarantined) != 0 {
		t.Errorf("leftovers %d, quarantined %v; want 3 and none", rec.Leftovers, rec.Quarantined)
	}
	for _, p := range []string{oldTmp, oldBody, oldEnvTemp} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
	for _, p := range []string{newTmp, newBody, s.bodyPath(e.ID)} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	if _, err := s.Get(e.ID); err != nil {
		t.Errorf("old but complete message: %v", err)
	}
}

// A Fail interrupted after the failed envelope was written is completed.
func TestRecoveryFinishesInterruptedFail(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir, Options{})
	must(t, err)
	e := create(t, s, 1)
	active, err := os.ReadFile(s.activePath(e.ID))
	must(t, err)
	must(t, s.Fail(e.ID, "550 no"))
	must(t, os.WriteFile(s.activePath(e.ID), active, 0o600)) // as if the crash came before its removal
	s.Close()

	s, rec := openSpool(t, dir, Options{})
	if len(rec.Quarantined) != 0 {
		t.Errorf("quarantined %v", rec.Quarantined)
	}
	if envs, _ := s.List(); len(envs) != 0 {
		t.Errorf("still active: %v", envs)
	}
	got, err := s.Get(e.ID)
	if err != nil || got.FailReason != "550 no" {
		t.Errorf("Get: %+v, %v", got, err)
	}
}

// A spool root others can read is reported, not refused.
func TestRecoveryReportsNotPrivate(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("modes")
	}
	dir := t.TempDir()
	must(t, os.Chmod(dir, 0o755))
	_, rec := openSpool(t, dir, Options{})
	if rec.NotPrivate == nil || !strings.Contains(rec.NotPrivate.Error(), "chmod go-rwx") {
		t.Errorf("NotPrivate: %v", rec.NotPrivate)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// rewrite replaces old with new in the file at path, which must hold old.
func rewrite(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s does not hold %q: %s", path, old, b)
	}
	must(t, os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o600))
}
