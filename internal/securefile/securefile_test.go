package securefile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// onlyEntries fails unless dir holds exactly names: no temp file outlived a
// write.
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteFileReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := WriteFile(path, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("two")); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, path); got != "two" {
		t.Fatalf("content %q, want two", got)
	}
	onlyEntries(t, dir, "f")
}

// A failure after the data was written (the rename is refused: the target is
// a directory) leaves the target as it was and no temp file behind.
func TestWriteFileFailedCommitLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "inside"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(target, []byte("data")); err == nil {
		t.Fatal("WriteFile over a non-empty directory succeeded")
	}
	onlyEntries(t, dir, "target")
	onlyEntries(t, target, "inside")
}

// The temp file's name is longer than the target's: a name that fits but
// whose temp name does not makes the write fail before anything is replaced,
// even for root (which a read-only directory does not stop).
func TestWriteFileFailureKeepsOldContent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, strings.Repeat("n", 250)) // NAME_MAX is 255 on Linux, NTFS and APFS
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteFile(path, []byte("new"))
	if err == nil {
		t.Fatal("WriteFile succeeded; the test needs the temp name to be too long")
	}
	if !strings.Contains(err.Error(), "temp file") {
		t.Errorf("error %q does not say what failed", err)
	}
	if got := readString(t, path); got != "old" {
		t.Fatalf("content %q after a failed write, want old", got)
	}
	onlyEntries(t, dir, filepath.Base(path))
}

func TestWriteFileNeedsDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "f")
	if err := WriteFile(path, []byte("x")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("WriteFile into a missing directory: %v, want ErrNotExist", err)
	}
}

func TestWriteNewNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := WriteNew(path, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(path, []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteNew: %v, want ErrExist", err)
	}
	if got := readString(t, path); got != "first" {
		t.Fatalf("content %q, want first", got)
	}
	onlyEntries(t, dir, "key")
}

// Of writers racing to create one file exactly one wins, the others get
// ErrExist, and the file holds the winner's data in full.
func TestWriteNewConcurrentOneWinner(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	const writers = 16
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = WriteNew(path, bytes.Repeat([]byte{byte('a' + i)}, 4096))
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both won", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, fs.ErrExist):
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer won")
	}
	if got := readString(t, path); got != strings.Repeat(string(rune('a'+winner)), 4096) {
		t.Fatalf("file does not hold the winner's data in full (%d bytes)", len(got))
	}
	onlyEntries(t, dir, "key")
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := WriteFile(path, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	onlyEntries(t, dir)
	if err := Remove(path); err != nil {
		t.Fatalf("Remove of a missing file: %v", err)
	}
}

func TestMkdirAllOverFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(path, "sub")); err == nil {
		t.Fatal("MkdirAll below a file succeeded")
	}
	if err := MkdirAll(path); err == nil {
		t.Fatal("MkdirAll of a file succeeded")
	}
}

func TestCheckPrivateMissing(t *testing.T) {
	err := CheckPrivate(filepath.Join(t.TempDir(), "missing"))
	var np *NotPrivateError
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &np) {
		t.Fatalf("CheckPrivate of a missing file: %v, want ErrNotExist", err)
	}
}

// Files and directories this package creates pass its own check, on every
// platform (on Windows: the DACL it sets is one CheckPrivate accepts).
func TestCreatedIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	if err := MkdirAll(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "f")
	if err := WriteFile(path, []byte("x")); err != nil {
		t.Fatal(err)
	}
	newPath := filepath.Join(dir, "g")
	if err := WriteNew(newPath, []byte("y")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Dir(dir), dir, path, newPath} {
		if err := CheckPrivate(p); err != nil {
			t.Errorf("CheckPrivate(%s): %v", p, err)
		}
	}
}
