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
	"runtime"
	"strings"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// KeyEnv is the environment variable that, when set and not empty, holds the
// store key. It wins over the key file so that containers can keep the key in
// a secret manager instead of in the state volume next to the tokens.
const KeyEnv = "OAUTHRELAY_KEY"

// KeySize is the length of a store key: AES-256.
const KeySize = 32

// KeyFileName is the key file's name inside the state directory.
const KeyFileName = "key"

// KeyOptions are LoadKey's inputs besides the state directory.
type KeyOptions struct {
	// Getenv looks up OAUTHRELAY_KEY: os.LookupEnv in production, a map
	// lookup in tests. Nil means no environment: the key file is used.
	Getenv func(string) (string, bool)
	// Logger receives the warning about a key file other users can read,
	// so that it follows the configured log format. Nil means
	// slog.Default(): a warning about the key is never silently dropped.
	Logger *slog.Logger
}

// LoadKey returns the 32-byte store key: from OAUTHRELAY_KEY (32 bytes as
// standard or URL base64, padded or not, or as 64 hex characters) when that
// is set and not empty, else from stateDir/key. A missing key file is created
// with 32 random bytes, private to the relay's account (securefile: mode
// 0600 in a 0700 state directory on Unix, an explicit DACL on Windows); that
// is how a fresh installation gets its key without an extra setup step.
//
// The key file may also hold the key as hex or base64 text (what `openssl
// rand -hex 32` writes). A key of the wrong length is an error, never
// silently replaced: replacing it would orphan every stored refresh token.
//
// A key file other users can read is refused on Windows and used with a
// warning on Unix (see refuseSharedKey).
func LoadKey(stateDir string, o KeyOptions) ([]byte, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Getenv != nil {
		if v, ok := o.Getenv(KeyEnv); ok && strings.TrimSpace(v) != "" {
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
	k, err := readKeyFile(path, log)
	if errors.Is(err, fs.ErrNotExist) {
		return createKeyFile(stateDir, path, log)
	}
	return k, err
}

// refuseSharedKey decides what a key file readable by others means. On
// Windows it is refused: the usual cause is a state directory under
// %ProgramData%, whose inherited ACL lets every local user read, so the
// key (and with it every refresh token) is exposed on a shared machine, and
// the check is new there, so no working setup relies on the exposure. On
// Unix it stays a warning, as before: the key files readable by others
// that exist in practice are secret mounts in single-user containers (a
// Kubernetes secret volume is 0644 unless defaultMode says otherwise,
// Docker secrets are 0444), where refusing would stop a relay at upgrade
// without protecting anyone.
const refuseSharedKey = runtime.GOOS == "windows"

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

func readKeyFile(path string, log *slog.Logger) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenstore: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("tokenstore: key file %s is not a regular file", path)
	}
	if err := checkKeyPrivate(path, fi, log); err != nil {
		return nil, err
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

// checkKeyPrivate refuses or warns about a key file others can read (see
// refuseSharedKey). The log line names who has access, never the key.
func checkKeyPrivate(path string, fi fs.FileInfo, log *slog.Logger) error {
	err := securefile.CheckPrivate(path)
	var np *securefile.NotPrivateError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &np):
		return fmt.Errorf("tokenstore: key file: %w", err)
	case refuseSharedKey:
		return fmt.Errorf("tokenstore: refusing the key file: %w", err)
	}
	log.Warn("token store key file is readable by other users; chmod 600 it",
		slog.String("path", path), slog.String("mode", fi.Mode().Perm().String()),
		slog.String("access", strings.Join(np.Others, ", ")),
		slog.String("fix", strings.Join(np.Fix, "; ")))
	return nil
}

// createKeyFile writes a new random key. securefile.WriteNew links a fully
// written temp file into place, so two processes starting at once (serve
// and login) never see a half-written key and agree on one winner.
func createKeyFile(stateDir, path string, log *slog.Logger) ([]byte, error) {
	if err := securefile.MkdirAll(stateDir); err != nil {
		return nil, fmt.Errorf("tokenstore: state directory: %w", err)
	}
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("tokenstore: generate key: %w", err)
	}
	err := securefile.WriteNew(path, k)
	if errors.Is(err, fs.ErrExist) {
		return readKeyFile(path, log) // another process won the race
	}
	if err != nil {
		return nil, fmt.Errorf("tokenstore: create key file: %w", err)
	}
	return k, nil
}
