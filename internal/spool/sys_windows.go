//go:build windows

package spool

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// errLocked is what tryLock returns when another claim holds the lock.
var errLocked = errors.New("locked")

// lockOffsetHigh places the locked byte far beyond the end of any file:
// LockFileEx locks are mandatory, and a lock on the body's own bytes would
// stop every other handle, the deliverer's reader among them, from reading
// them. Locking past the end of a file is allowed.
const lockOffsetHigh = 0x7fffffff

// openShared opens path for reading with FILE_SHARE_DELETE as well, which
// os.Open leaves out: while a claim or a reader holds a body or an
// envelope open, Delete, Fail and the atomic replace of an envelope must
// still be able to remove or rename it, as on Unix.
func openShared(path string) (*os.File, error) {
	p, err := windows.UTF16PtrFromString(path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	h, err := windows.CreateFile(p, windows.GENERIC_READ,
		windows.FILE_SHARE_READ|windows.FILE_SHARE_WRITE|windows.FILE_SHARE_DELETE, nil,
		windows.OPEN_EXISTING, windows.FILE_ATTRIBUTE_NORMAL, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(h), path), nil
}

// tryLock takes an exclusive LockFileEx lock on f without waiting:
// errLocked if another handle holds it. Windows releases it when the
// process ends.
func tryLock(f *os.File) error {
	err := lockFileEx(f, windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY)
	if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
		return errLocked
	}
	return err
}

// lockWait takes an exclusive LockFileEx lock on f, waiting for it (f is
// opened for synchronous I/O).
func lockWait(f *os.File) error { return lockFileEx(f, windows.LOCKFILE_EXCLUSIVE_LOCK) }

func lockFileEx(f *os.File, flags uint32) error {
	ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
	if err := windows.LockFileEx(windows.Handle(f.Fd()), flags, 0, 1, 0, &ol); err != nil {
		return &os.PathError{Op: "LockFileEx", Path: f.Name(), Err: err}
	}
	return nil
}

func unlock(f *os.File) error {
	ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
	if err := windows.UnlockFileEx(windows.Handle(f.Fd()), 0, 1, 0, &ol); err != nil {
		return &os.PathError{Op: "UnlockFileEx", Path: f.Name(), Err: err}
	}
	return nil
}

// syncDir does nothing, as in securefile: Windows cannot flush a directory
// through a handle. NTFS journals the body's rename, and the envelope's
// move that follows is written through by securefile, which flushes the
// journal up to it.
// noSpace reports a full disk or an exhausted quota.
func noSpace(err error) bool {
	return errors.Is(err, windows.ERROR_DISK_FULL) || errors.Is(err, windows.ERROR_HANDLE_DISK_FULL) ||
		errors.Is(err, windows.ERROR_DISK_QUOTA_EXCEEDED)
}
