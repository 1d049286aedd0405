//go:build !windows

package tokenstore

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// The warning about a key file others can read goes through the logger the
// caller passes (here JSON, as with log.format: json), names the file, who
// has access and the fix, and never the key.
func TestSharedKeyWarningUsesGivenLogger(t *testing.T) {
	state := t.TempDir()
	path := filepath.Join(state, KeyFileName)
	if err := os.WriteFile(path, testKey(5), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	k, err := LoadKey(state, KeyOptions{Getenv: noEnv, Logger: log})
	if err != nil || !bytes.Equal(k, testKey(5)) {
		t.Fatalf("0644 key file: %v", err)
	}
	var line struct {
		Level, Msg, Path, Mode, Access, Fix string
	}
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("warning is not one JSON line: %v: %q", err, buf.String())
	}
	if line.Level != "WARN" || line.Path != path || line.Mode != "-rw-r--r--" ||
		line.Access != "group r--, others r--" || line.Fix != "chmod go-rwx "+path {
		t.Errorf("warning %+v", line)
	}
	for _, secret := range []string{string(testKey(5)), hex.EncodeToString(testKey(5)), base64.StdEncoding.EncodeToString(testKey(5))} {
		if bytes.Contains(buf.Bytes(), []byte(secret)) {
			t.Fatal("the warning contains the key")
		}
	}

	// A private key file logs nothing.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if _, err := LoadKey(state, KeyOptions{Getenv: noEnv, Logger: log}); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Errorf("private key file logged %q", buf.String())
	}
}

// The directories the store creates are 0700 all the way down, the state
// directory included, when Open comes first (oauthrelay login with
// OAUTHRELAY_KEY set never creates a key file).
func TestOpenCreatesPrivateDirs(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	if _, err := Open(state, testKey(1)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{state, filepath.Join(state, "tokens")} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, fi.Mode().Perm())
		}
	}
}
