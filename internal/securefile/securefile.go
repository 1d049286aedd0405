// Package securefile is the one place the relay creates private directories
// and writes private files: the token store's key, its refresh tokens, and
// anything else only the relay's own account (and the machine's
// administrators) may read.
//
// On Unix that means mode 0700 directories and 0600 files. On Windows Go
// ignores modes, and a file under %ProgramData% inherits an ACL that lets
// every local user read it; there, directories and files are created with an
// explicit, protected DACL (no inherited entries) granting full control to
// SYSTEM, BUILTIN\Administrators and the current process's user, and owned by
// that user.
//
// Writes are atomic: a temp file in the same directory is written, fsynced
// and renamed over the target (and, on Unix, the directory is fsynced), so a
// crash leaves the old file or the new one, never a torn one, and a failed
// write leaves the old content in place.
//
// Out of scope: tightening directories or files that already exist
// (MkdirAll leaves an existing directory as it is, like os.MkdirAll;
// CheckPrivate reports, the caller decides), and ACLs on Unix.
package securefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MkdirAll creates dir and any missing parents as private directories (see
// the package comment). Directories that already exist are left as they are.
func MkdirAll(dir string) error {
	if err := mkdirAll(dir); err != nil {
		return fmt.Errorf("securefile: create directory: %w", err)
	}
	return nil
}

// WriteFile replaces path with a private file holding data, atomically. The
// directory must exist (see MkdirAll). The file's previous permissions are
// not carried over: the new file is always private.
func WriteFile(path string, data []byte) error {
	return writeAtomic(path, data, replaceFile)
}

// WriteNew creates path as a private file holding data, atomically, but
// never replaces an existing file: if path exists the error wraps
// fs.ErrExist and the file is untouched. Of several processes creating the
// same file at once exactly one wins, and no one ever sees it half written;
// that is how a key is generated on first use.
func WriteNew(path string, data []byte) error {
	return writeAtomic(path, data, linkNew)
}

// CreateTemp creates a new private file in dir (os.CreateTemp's pattern),
// open for reading and writing: a message body held while it is sent on,
// which only the relay may read. The caller removes it.
func CreateTemp(dir, pattern string) (*os.File, error) {
	f, err := createTemp(dir, pattern)
	if err != nil {
		return nil, fmt.Errorf("securefile: create temp file: %w", err)
	}
	return f, nil
}

// Remove deletes path and makes the removal durable. A missing file is not an
// error, so removing twice is harmless.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("securefile: %w", err)
	}
	dir := filepath.Dir(path)
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("securefile: sync %s: %w", dir, err)
	}
	return nil
}

// CheckPrivate returns a *NotPrivateError when someone besides the file's
// owner (and, on Windows, SYSTEM and Administrators) has any access to path:
// on Unix any group or other permission bit; on Windows any DACL entry
// granting access to another account or group, such as Everyone,
// Authenticated Users or BUILTIN\Users. Other errors (a missing file, an
// unreadable security descriptor) are returned as they are, wrapped.
func CheckPrivate(path string) error {
	return checkPrivate(path)
}

// NotPrivateError says who else can reach a file and how to fix it.
type NotPrivateError struct {
	Path string
	// Others names who else has access and what access, e.g. "group r-x"
	// on Unix or `BUILTIN\Users (S-1-5-32-545): read (inherited)` on
	// Windows.
	Others []string
	// Fix holds the commands that make Path private, to be run in order.
	Fix []string
}

func (e *NotPrivateError) Error() string {
	return fmt.Sprintf("securefile: %s is accessible to others: %s; make it private with: %s",
		e.Path, strings.Join(e.Others, ", "), strings.Join(e.Fix, ", then: "))
}

// writeAtomic writes data to a private temp file next to path, fsyncs it,
// and hands it to commit, which puts it in place. Whatever happens, the temp
// file does not outlive the call.
func writeAtomic(path string, data []byte, commit func(tmp, path string) error) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := createTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return fmt.Errorf("securefile: create temp file for %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a failure; a no-op after a rename
	if err := writeSync(f, data); err != nil {
		return fmt.Errorf("securefile: write %s: %w", tmp, err)
	}
	if err := commit(tmp, path); err != nil {
		return fmt.Errorf("securefile: %w", err)
	}
	// After a link the temp name is a second name of the new file: remove
	// it before the directory sync, so the sync covers both changes.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("securefile: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("securefile: sync %s: %w", dir, err)
	}
	return nil
}

// writeSync writes b, fsyncs and closes f; f is closed on every path.
func writeSync(f *os.File, b []byte) error {
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// SyncDir makes the renames, links and removals in dir durable (a no-op on
// Windows, whose moves are written through): for callers that move files
// within private directories themselves (the spool moves bodies).
func SyncDir(dir string) error {
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("securefile: sync %s: %w", dir, err)
	}
	return nil
}
