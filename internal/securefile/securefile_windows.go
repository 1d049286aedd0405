//go:build windows

package securefile

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// tempAttempts bounds the random names tried for a temp file; with 130
// random bits per name a second attempt is already a curiosity.
const tempAttempts = 100

// currentUserSID is the SID of the user the process runs as: the service
// account under the service manager, the administrator for `oauthrelay
// login`.
func currentUserSID() (string, error) {
	tu, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		return "", fmt.Errorf("current user: %w", err)
	}
	return tu.User.Sid.String(), nil
}

// privateAttributes returns the SECURITY_ATTRIBUTES that create a private
// directory (dir) or file: the security descriptor is in place from the
// first instant, so there is no window in which another user could open a
// handle (Windows checks access when a handle is opened, not on each read).
func privateAttributes(dir bool) (*windows.SecurityAttributes, error) {
	self, err := currentUserSID()
	if err != nil {
		return nil, err
	}
	sd, err := windows.SecurityDescriptorFromString(privateSDDL(self, dir))
	if err != nil {
		return nil, fmt.Errorf("security descriptor: %w", err)
	}
	sa := &windows.SecurityAttributes{SecurityDescriptor: sd}
	sa.Length = uint32(unsafe.Sizeof(*sa))
	return sa, nil
}

func mkdirAll(dir string) error {
	sa, err := privateAttributes(true)
	if err != nil {
		return err
	}
	return mkdirAllWith(dir, sa)
}

// mkdirAllWith creates the missing directories of dir, parents first, each
// with sa. The recursion is bounded by the number of path elements.
func mkdirAllWith(dir string, sa *windows.SecurityAttributes) error {
	if fi, err := os.Stat(dir); err == nil {
		if fi.IsDir() {
			return nil
		}
		return &os.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllWith(parent, sa); err != nil {
			return err
		}
	}
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	err = windows.CreateDirectory(p, sa)
	runtime.KeepAlive(sa)
	if err != nil {
		if fi, serr := os.Lstat(dir); serr == nil && fi.IsDir() {
			return nil // created meanwhile by another process
		}
		return &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	return nil
}

// createTemp creates a new private file in dir, named by pattern with its
// last "*" replaced by a random string, opened for writing and shared with
// no one until it is closed.
func createTemp(dir, pattern string) (*os.File, error) {
	sa, err := privateAttributes(false)
	if err != nil {
		return nil, err
	}
	prefix, suffix := pattern, ""
	if i := strings.LastIndex(pattern, "*"); i >= 0 {
		prefix, suffix = pattern[:i], pattern[i+1:]
	}
	for range tempAttempts {
		name := filepath.Join(dir, prefix+rand.Text()+suffix)
		p, err := windows.UTF16PtrFromString(name)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		h, err := windows.CreateFile(p, windows.GENERIC_READ|windows.GENERIC_WRITE, 0, sa,
			windows.CREATE_NEW, windows.FILE_ATTRIBUTE_NORMAL, 0)
		runtime.KeepAlive(sa)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		return os.NewFile(uintptr(h), name), nil
	}
	return nil, &os.PathError{Op: "createtemp", Path: filepath.Join(dir, pattern), Err: fs.ErrExist}
}

// replaceFile puts tmp in place of path. The moved file keeps its own
// security descriptor; MOVEFILE_WRITE_THROUGH returns only once the rename
// is on disk, which is what the directory fsync does on Unix.
func replaceFile(tmp, path string) error {
	return move(tmp, path, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH)
}

// linkNew gives tmp the name path unless path exists: without
// MOVEFILE_REPLACE_EXISTING the move fails with ERROR_ALREADY_EXISTS, which
// matches fs.ErrExist. Unlike a hard link it also works on FAT and ReFS
// volumes without link support.
func linkNew(tmp, path string) error {
	return move(tmp, path, windows.MOVEFILE_WRITE_THROUGH)
}

func move(from, to string, flags uint32) error {
	pf, err := windows.UTF16PtrFromString(from)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	pt, err := windows.UTF16PtrFromString(to)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	if err := windows.MoveFileEx(pf, pt, flags); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// syncDir does nothing: Windows cannot flush a directory through a handle,
// and the moves above are written through.
func syncDir(string) error { return nil }

func checkPrivate(path string) error {
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.OWNER_SECURITY_INFORMATION|windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		return &os.PathError{Op: "GetNamedSecurityInfo", Path: path, Err: err}
	}
	self, err := currentUserSID()
	if err != nil {
		return err
	}
	owner := ""
	if o, _, err := sd.Owner(); err == nil && o != nil {
		owner = o.String()
	}
	aces, err := daclEntries(sd)
	if err != nil {
		return &os.PathError{Op: "read DACL", Path: path, Err: err}
	}
	bad := offendingACEs(aces, self, owner)
	if len(bad) == 0 {
		return nil
	}
	others := make([]string, len(bad))
	for i, a := range bad {
		others[i] = describeACE(a, accountName(a.SID))
	}
	return &NotPrivateError{Path: path, Others: others, Fix: windowsFix(path, self, bad)}
}

// daclEntries walks sd's DACL, inherited entries included (which
// GetExplicitEntriesFromAcl would leave out). A missing or NULL DACL grants
// everyone everything, and is reported as such.
func daclEntries(sd *windows.SECURITY_DESCRIPTOR) ([]aceEntry, error) {
	everyone := []aceEntry{{Type: aceAllowed, Mask: genericAll, SID: sidEveryone}}
	dacl, _, err := sd.DACL()
	if errors.Is(err, windows.ERROR_OBJECT_NOT_FOUND) {
		return everyone, nil
	}
	if err != nil {
		return nil, err
	}
	if dacl == nil {
		return everyone, nil
	}
	aces := make([]aceEntry, 0, dacl.AceCount)
	for i := range uint32(dacl.AceCount) {
		var ace *windows.ACCESS_ALLOWED_ACE
		if err := windows.GetAce(dacl, i, &ace); err != nil {
			return nil, fmt.Errorf("ACE %d: %w", i, err)
		}
		e := aceEntry{Type: ace.Header.AceType, Flags: ace.Header.AceFlags, Mask: uint32(ace.Mask)}
		switch e.Type {
		case aceAllowed, aceDenied, aceAllowedCallback, aceDeniedCallback:
			// These share ACCESS_ALLOWED_ACE's layout: the SID starts at SidStart.
			e.SID = (*windows.SID)(unsafe.Pointer(&ace.SidStart)).String()
		}
		aces = append(aces, e)
	}
	return aces, nil
}

// accountName is DOMAIN\name for sid, or a well-known name, or "".
func accountName(sid string) string {
	if s, err := windows.StringToSid(sid); err == nil {
		if acct, dom, _, err := s.LookupAccount(""); err == nil {
			if dom == "" {
				return acct
			}
			return dom + `\` + acct
		}
	}
	return wellKnownName(sid)
}
