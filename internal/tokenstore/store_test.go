package tokenstore

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func noEnv(string) (string, bool) { return "", false }

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("invoices"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load of missing record: %v, want ErrNotFound", err)
	}
	want := Record{RefreshToken: "rt-1", Scopes: []string{"a", "b"}, Updated: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := s.Save("invoices", want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("invoices")
	if err != nil {
		t.Fatal(err)
	}
	if got.RefreshToken != want.RefreshToken || strings.Join(got.Scopes, " ") != "a b" || !got.Updated.Equal(want.Updated) {
		t.Fatalf("Load = %+v, want %+v", got, want)
	}

	fi, err := os.Stat(filepath.Join(dir, "tokens", "invoices.json.enc"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(s.Path("invoices"))
	if bytes.Contains(raw, []byte("rt-1")) {
		t.Error("refresh token stored in clear")
	}
	di, _ := os.Stat(filepath.Join(dir, "tokens"))
	if di.Mode().Perm() != 0o700 {
		t.Errorf("tokens dir mode %v, want 0700", di.Mode().Perm())
	}

	// A second Save replaces; no temp files are left behind.
	if err := s.Save("invoices", Record{RefreshToken: "rt-2"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load("invoices"); got.RefreshToken != "rt-2" {
		t.Fatalf("after second Save: %q", got.RefreshToken)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "tokens"))
	if len(ents) != 1 {
		t.Fatalf("tokens dir holds %d entries, want 1", len(ents))
	}

	// A new Store over the same directory (a restart) reads it.
	s2, _ := Open(dir, testKey(1))
	if got, err := s2.Load("invoices"); err != nil || got.RefreshToken != "rt-2" {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestWrongKeyIsNamedAndNotOverwritten(t *testing.T) {
	dir := t.TempDir()
	s1, _ := Open(dir, testKey(1))
	if err := s1.Save("a", Record{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(s1.Path("a"))

	s2, _ := Open(dir, testKey(2))
	_, err := s2.Load("a")
	if !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Load with wrong key: %v, want ErrDecrypt", err)
	}
	for _, want := range []string{Fingerprint(testKey(1)), Fingerprint(testKey(2)), KeyEnv, filepath.Join(dir, "key")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if err := s2.Save("a", Record{RefreshToken: "other"}); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Save over undecryptable file: %v, want ErrDecrypt", err)
	}
	after, _ := os.ReadFile(s1.Path("a"))
	if !bytes.Equal(before, after) {
		t.Fatal("Save overwrote a file it could not decrypt")
	}
	// The explicit escape hatch.
	if err := s2.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Save("a", Record{RefreshToken: "new"}); err != nil {
		t.Fatal(err)
	}
	if r, err := s2.Load("a"); err != nil || r.RefreshToken != "new" {
		t.Fatalf("after Delete+Save: %+v %v", r, err)
	}
	if err := s2.Delete("missing"); err != nil {
		t.Fatalf("Delete of missing record: %v", err)
	}
}

func TestCorruptAndSwappedFiles(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, testKey(1))
	if err := s.Save("a", Record{RefreshToken: "rt-a"}); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(s.Path("a"))

	// Flipped byte in the ciphertext: same key fingerprint, fails to authenticate.
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	os.WriteFile(s.Path("a"), bad, 0o600)
	if _, err := s.Load("a"); !errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt file: %v", err)
	}
	if err := s.Save("a", Record{RefreshToken: "x"}); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Save over corrupt file: %v", err)
	}

	// Truncated file.
	os.WriteFile(s.Path("a"), good[:10], 0o600)
	if _, err := s.Load("a"); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("truncated file: %v", err)
	}

	// Account a's file copied to account b: the account is additional data.
	os.WriteFile(s.Path("b"), good, 0o600)
	if _, err := s.Load("b"); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("swapped file: %v", err)
	}
}

func TestConcurrentSaves(t *testing.T) {
	s, _ := Open(t.TempDir(), testKey(3))
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acct := []string{"x", "y"}[i%2]
			if err := s.Save(acct, Record{RefreshToken: "rt"}); err != nil {
				t.Error(err)
			}
			if _, err := s.Load(acct); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

func TestFileName(t *testing.T) {
	seen := map[string]string{}
	for _, a := range []string{"invoices", "erp.main", "a@b.c", "has space", "../etc/passwd", "_x", ".hidden", "Ünïcode", strings.Repeat("z", 300), "_" + hex.EncodeToString([]byte("has space"))} {
		n := fileName(a)
		if strings.ContainsAny(n, `/\`) || strings.HasPrefix(n, ".") || len(n) > 200 {
			t.Errorf("fileName(%q) = %q: unsafe", a, n)
		}
		if prev, ok := seen[n]; ok {
			t.Errorf("fileName(%q) == fileName(%q) == %q", a, prev, n)
		}
		seen[n] = a
	}
	s, _ := Open(t.TempDir(), testKey(4))
	if err := s.Save("../etc/passwd", Record{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Load("../etc/passwd"); err != nil || r.RefreshToken != "rt" {
		t.Fatal(r, err)
	}
}

func TestKeyFromEnv(t *testing.T) {
	k := testKey(7)
	for name, v := range map[string]string{
		"hex":        hex.EncodeToString(k),
		"std":        base64.StdEncoding.EncodeToString(k),
		"raw std":    base64.RawStdEncoding.EncodeToString(k),
		"url":        base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)),
		"raw url":    base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)),
		"whitespace": "  " + hex.EncodeToString(k) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := loadKey(t.TempDir(), envMap(map[string]string{KeyEnv: v}))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != KeySize {
				t.Fatalf("len %d", len(got))
			}
		})
	}
	for name, v := range map[string]string{
		"short":   base64.StdEncoding.EncodeToString(k[:16]),
		"garbage": "not a key at all!",
		"hex-63":  hex.EncodeToString(k)[:63],
	} {
		t.Run("bad "+name, func(t *testing.T) {
			_, err := loadKey(t.TempDir(), envMap(map[string]string{KeyEnv: v}))
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), v) {
				t.Errorf("error leaks the key text: %v", err)
			}
		})
	}
}

func TestKeyFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	k1, err := loadKey(state, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(state, "key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != KeySize {
		t.Fatalf("key file mode %v size %d", fi.Mode().Perm(), fi.Size())
	}
	if di, _ := os.Stat(state); di.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v", di.Mode().Perm())
	}
	k2, err := loadKey(state, envMap(map[string]string{KeyEnv: ""})) // empty env: file
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second Key: %v, same=%v", err, bytes.Equal(k1, k2))
	}

	// Text forms in the file are accepted.
	os.WriteFile(filepath.Join(state, "key"), []byte(hex.EncodeToString(testKey(9))+"\n"), 0o600)
	if k, err := loadKey(state, noEnv); err != nil || !bytes.Equal(k, testKey(9)) {
		t.Fatalf("hex key file: %v", err)
	}
	// Wrong length is an error, and the file is not replaced.
	os.WriteFile(filepath.Join(state, "key"), []byte("short"), 0o600)
	if _, err := loadKey(state, noEnv); err == nil {
		t.Fatal("short key file accepted")
	}
	if b, _ := os.ReadFile(filepath.Join(state, "key")); string(b) != "short" {
		t.Fatal("short key file was replaced")
	}
	// Readable by others: used (with a warning).
	os.WriteFile(filepath.Join(state, "key"), testKey(5), 0o644)
	os.Chmod(filepath.Join(state, "key"), 0o644)
	if k, err := loadKey(state, noEnv); err != nil || !bytes.Equal(k, testKey(5)) {
		t.Fatalf("0644 key file: %v", err)
	}
}

func TestKeyFileConcurrentCreate(t *testing.T) {
	state := t.TempDir()
	keys := make([][]byte, 20)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := loadKey(state, noEnv)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k, keys[0]) {
			t.Fatal("concurrent first use produced different keys")
		}
	}
}

func TestFingerprint(t *testing.T) {
	if fp := Fingerprint(testKey(1)); len(fp) != 8 {
		t.Fatalf("fingerprint %q", fp)
	}
	if Fingerprint(testKey(1)) == Fingerprint(testKey(2)) {
		t.Fatal("fingerprints collide")
	}
}

func TestOpenRejectsBadKey(t *testing.T) {
	if _, err := Open(t.TempDir(), []byte("short")); err == nil {
		t.Fatal("Open accepted a 5-byte key")
	}
}

func FuzzDecode(f *testing.F) {
	s, err := Open(f.TempDir(), testKey(1))
	if err != nil {
		f.Fatal(err)
	}
	good, err := encode(s.aead, s.fp, "acct", Record{RefreshToken: "rt", Scopes: []string{"x"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "acct")
	f.Add(good[:minFileLen], "acct")
	f.Add([]byte{1, 2, 3}, "")
	f.Add([]byte{}, "acct")
	f.Add(append([]byte{2}, good[1:]...), "acct")
	f.Fuzz(func(t *testing.T, b []byte, account string) {
		_, r, err := decode(s.aead, account, b)
		// Only files this key sealed for "acct" may open (the fuzzing
		// workers each seal their own seed, so compare contents, not bytes).
		if err == nil && (account != "acct" || r.RefreshToken != "rt") {
			t.Fatalf("decode accepted forged input")
		}
		if account != "" {
			_, _ = s.open(account, b)
		}
	})
}

// loadKey is LoadKey with the environment given and the default logger.
func loadKey(stateDir string, getenv func(string) (string, bool)) ([]byte, error) {
	return LoadKey(stateDir, KeyOptions{Getenv: getenv})
}
