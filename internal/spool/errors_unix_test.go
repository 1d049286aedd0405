//go:build unix

package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

// storageErr sorts the spool's own failures into the two classes the SMTP
// front end answers with 452 4.3.1, through any wrapping, and keeps the
// cause reachable.
func TestStorageErrClassification(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"ENOSPC", syscall.ENOSPC, ErrNoSpace},
		{"ENOSPC in a PathError", &fs.PathError{Op: "write", Path: "/q/tmp/x", Err: syscall.ENOSPC}, ErrNoSpace},
		{"ENOSPC wrapped twice", fmt.Errorf("securefile: write: %w", &os.LinkError{Op: "link", Err: syscall.ENOSPC}), ErrNoSpace},
		{"EDQUOT", &fs.PathError{Op: "write", Path: "/q", Err: syscall.EDQUOT}, ErrNoSpace},
		{"ENOENT", &fs.PathError{Op: "open", Path: "/q/tmp", Err: syscall.ENOENT}, ErrUnavailable},
		{"EACCES", &fs.PathError{Op: "open", Path: "/q/tmp", Err: syscall.EACCES}, ErrUnavailable},
		{"EROFS", syscall.EROFS, ErrUnavailable},
		{"EIO", syscall.EIO, ErrUnavailable},
	} {
		err := storageErr("write body file", tc.err)
		other := ErrNoSpace
		if tc.want == ErrNoSpace {
			other = ErrUnavailable
		}
		if !errors.Is(err, tc.want) || errors.Is(err, other) || !errors.Is(err, tc.err) {
			t.Errorf("%s: %v is not %v (and only that) wrapping the cause", tc.name, err, tc.want)
		}
	}
}
