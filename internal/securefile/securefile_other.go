//go:build !windows

package securefile

import (
	"errors"
	"io/fs"
	"os"
	"strings"
)

const (
	dirMode  fs.FileMode = 0o700
	fileMode fs.FileMode = 0o600 // what os.CreateTemp creates
	// sharedBits are the group and other permission bits.
	sharedBits fs.FileMode = 0o077
)

func mkdirAll(dir string) error { return os.MkdirAll(dir, dirMode) }

// createTemp opens a new 0600 file in dir.
func createTemp(dir, pattern string) (*os.File, error) { return os.CreateTemp(dir, pattern) }

// replaceFile puts tmp in place of path; rename(2) is atomic.
func replaceFile(tmp, path string) error { return os.Rename(tmp, path) }

// linkNew gives tmp the name path unless path exists: link(2) never
// replaces, unlike rename(2).
func linkNew(tmp, path string) error { return os.Link(tmp, path) }

// syncDir makes a rename, link or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}

func checkPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	perm := fi.Mode().Perm()
	if perm&sharedBits == 0 {
		return nil
	}
	return &NotPrivateError{Path: path, Others: sharedPerms(perm), Fix: []string{"chmod go-rwx " + shellQuote(path)}}
}

// sharedPerms names the group and other permissions in perm, e.g.
// ["group r--", "others r--"] for 0644.
func sharedPerms(perm fs.FileMode) []string {
	s := perm.String() // "-rwxr-x---"
	var out []string
	if perm&0o070 != 0 {
		out = append(out, "group "+s[4:7])
	}
	if perm&0o007 != 0 {
		out = append(out, "others "+s[7:10])
	}
	return out
}

// shellQuote quotes s for a POSIX shell when it holds anything but the
// characters paths usually consist of.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
