package tokenstore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// KeyEnv is the environment variable that, when set and not empty, holds the
// store key. It wins over the key file so that containers can keep the key in
// a secret manager instead of in the state volume next to the tokens.
const KeyEnv = "OAUTHRELAY_KEY"

// KeySize is the length of a store key: AES-256.
const KeySize = 32

// KeyFileName is the key file's name inside the state directory.
const KeyFileName = "key"

// Key returns the 32-byte store key: from OAUTHRELAY_KEY (32 bytes as
// standard or URL base64, padded or not, or as 64 hex characters) when that
// is set and not empty, else from stateDir/key. A missing key file is created
// with 32 random bytes (mode 0600, in a 0700 state directory); that is how a
// fresh installation gets its key without an extra setup step.
//
// The key file may also hold the key as hex or base64 text (what `openssl
// rand -hex 32` writes). A key file that other users can read is used but
// logged as a warning through slog.Default; a key of the wrong length is an
// error, never silently replaced: replacing it would orphan every stored
// refresh token.
//
// getenv is os.LookupEnv in production; tests pass a map lookup.
func Key(stateDir string, getenv func(string) (string, bool)) ([]byte, error) {
	if getenv != nil {
		if v, ok := getenv(KeyEnv); ok && strings.TrimSpace(v) != "" {
			k, err := parseKeyText(v)
			if err != nil {
				return nil, fmt.Errorf("tokenstore: %s: %w", KeyEnv, err)
			}
			return k, nil
		}
	}
	if stateDir == "" {
		return nil, errors.New("tokenstore: no state directory for the key file and " + KeyEnv + " is not set")
	}
	path := filepath.Join(stateDir, KeyFileName)
	k, err := readKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKeyFile(stateDir, path)
	}
	return k, err
}

// Fingerprint is a short, non-secret name for a key: the first 8 hex
// characters of its SHA-256. It is stored in every token file so a decrypt
// failure can say which key wrote the file. For a key file it equals
// `sha256sum state_dir/key | cut -c1-8`.
func Fingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:4])
}

// parseKeyText decodes the text forms of a key. The error never contains
// the text: it is a secret.
func parseKeyText(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*KeySize {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		k, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(k) != KeySize {
			return nil, fmt.Errorf("key decodes to %d bytes, want %d (generate one with: openssl rand -base64 32)", len(k), KeySize)
		}
		return k, nil
	}
	return nil, fmt.Errorf("key is neither %d hex characters nor base64 of %d bytes (generate one with: openssl rand -base64 32)", 2*KeySize, KeySize)
}

func readKeyFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenstore: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("tokenstore: key file %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		slog.Default().Warn("token store key file is readable by other users; chmod 600 it",
			slog.String("path", path), slog.String("mode", fi.Mode().Perm().String()))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenstore: key file: %w", err)
	}
	if len(b) == KeySize {
		return b, nil
	}
	k, err := parseKeyText(string(b))
	if err != nil {
		return nil, fmt.Errorf("tokenstore: key file %s (%d bytes, want %d raw bytes): %w", path, len(b), KeySize, err)
	}
	return k, nil
}

// createKeyFile writes a new random key. It links a fully written temp file
// into place so that two processes starting at once (serve and login) never
// see a half-written key and agree on one winner.
func createKeyFile(stateDir, path string) ([]byte, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("tokenstore: create state directory: %w", err)
	}
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("tokenstore: generate key: %w", err)
	}
	tmp, err := os.CreateTemp(stateDir, ".key-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("tokenstore: create key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := writeSync(tmp, k); err != nil {
		return nil, fmt.Errorf("tokenstore: write key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKeyFile(path) // another process won the race
		}
		return nil, fmt.Errorf("tokenstore: create key file: %w", err)
	}
	if err := syncDir(stateDir); err != nil {
		return nil, fmt.Errorf("tokenstore: create key file: %w", err)
	}
	return k, nil
}

// writeSync writes b, fsyncs and closes f. f is 0600 (os.CreateTemp).
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

// syncDir makes a rename or link in dir durable.
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
