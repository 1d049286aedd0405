//go:build unix

package spool

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// eintrRetries bounds the retries of a lock call interrupted by a signal
// (Go's handlers use SA_RESTART, so one is already rare).
const eintrRetries = 100

// errLocked is what tryLock returns when another claim holds the lock.
var errLocked = errors.New("locked")

// openShared opens path for reading. On Unix any open file may be renamed
// or removed; see the Windows version for why this exists.
func openShared(path string) (*os.File, error) { return os.Open(path) }

// tryLock takes an exclusive flock(2) on f without waiting: errLocked if
// another open file holds one. flock belongs to the open file, so two
// opens in one process exclude each other, and the kernel drops it when
// the process dies.
func tryLock(f *os.File) error { return flock(f, unix.LOCK_EX|unix.LOCK_NB) }

// lockWait takes an exclusive flock(2) on f, waiting for it.
func lockWait(f *os.File) error { return flock(f, unix.LOCK_EX) }

func unlock(f *os.File) error { return flock(f, unix.LOCK_UN) }

func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	cerr := rc.Control(func(fd uintptr) {
		for range eintrRetries {
			ferr = unix.Flock(int(fd), how)
			if ferr != unix.EINTR {
				return
			}
		}
	})
	switch {
	case cerr != nil:
		return cerr
	case ferr == unix.EWOULDBLOCK:
		return errLocked
	case ferr != nil:
		return &os.PathError{Op: "flock", Path: f.Name(), Err: ferr}
	}
	return nil
}

// noSpace reports a full file system (ENOSPC) or an exhausted quota
// (EDQUOT).
func noSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}
