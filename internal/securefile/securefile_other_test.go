//go:build !windows

package securefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func perm(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestMkdirAllMode(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "a", "b", "c")
	if err := MkdirAll(dir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		if p := perm(t, filepath.Join(root, d)); p != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, p)
		}
	}
	// An existing directory is left as it is, like os.MkdirAll.
	shared := filepath.Join(root, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(shared, 0o755)
	if err := MkdirAll(shared); err != nil {
		t.Fatal(err)
	}
	if p := perm(t, shared); p != 0o755 {
		t.Errorf("existing directory: mode %v, want 0755 left alone", p)
	}
}

// The written file is 0600 even when it replaces a 0644 one: the old mode is
// not carried over.
func TestWriteFileMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644)
	if err := WriteFile(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if p := perm(t, path); p != 0o600 {
		t.Fatalf("mode %v, want 0600", p)
	}
	if err := WriteNew(filepath.Join(dir, "g"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if p := perm(t, filepath.Join(dir, "g")); p != 0o600 {
		t.Fatalf("WriteNew mode %v, want 0600", p)
	}
}

// A directory the writer may not write to: the old content stays, no temp
// file appears. Root ignores directory modes, so this runs only unprivileged
// (TestWriteFileFailureKeepsOldContent covers the same for root).
func TestWriteFileReadOnlyDirKeepsOldContent(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes into a read-only directory")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	if err := WriteFile(path, []byte("new")); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("WriteFile in a read-only directory: %v, want ErrPermission", err)
	}
	if got := readString(t, path); got != "old" {
		t.Fatalf("content %q, want old", got)
	}
	onlyEntries(t, dir, "f")
}

func TestCheckPrivateModes(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		mode   fs.FileMode
		dir    bool
		others string // "" = private
	}{
		{0o600, false, ""},
		{0o400, false, ""},
		{0o700, true, ""},
		{0o644, false, "group r--, others r--"},
		{0o640, false, "group r--"},
		{0o604, false, "others r--"},
		{0o620, false, "group -w-"},
		{0o750, true, "group r-x"},
		{0o701, true, "others --x"},
	} {
		name := filepath.Join(dir, tc.mode.String())
		var err error
		if tc.dir {
			err = os.Mkdir(name, tc.mode)
		} else {
			err = os.WriteFile(name, nil, tc.mode)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(name, tc.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		err = CheckPrivate(name)
		if tc.others == "" {
			if err != nil {
				t.Errorf("%v: %v, want private", tc.mode, err)
			}
			continue
		}
		var np *NotPrivateError
		if !errors.As(err, &np) {
			t.Errorf("%v: %v, want a NotPrivateError", tc.mode, err)
			continue
		}
		if got := strings.Join(np.Others, ", "); got != tc.others || np.Path != name {
			t.Errorf("%v: others %q path %q, want %q %q", tc.mode, got, np.Path, tc.others, name)
		}
		if len(np.Fix) != 1 || np.Fix[0] != "chmod go-rwx "+name {
			t.Errorf("%v: fix %q", tc.mode, np.Fix)
		}
		if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "chmod go-rwx") {
			t.Errorf("%v: message %q names neither the file nor the fix", tc.mode, err)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/oauthrelay/key": "/var/lib/oauthrelay/key",
		"/srv/my state/key":       "'/srv/my state/key'",
		"/srv/it's/key":           `'/srv/it'\''s/key'`,
		"":                        "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
