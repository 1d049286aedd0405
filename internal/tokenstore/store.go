// Package tokenstore keeps refresh tokens at rest: one AES-256-GCM encrypted
// file per account under state_dir/tokens/, written atomically and private to
// the relay's account through securefile (mode 0600 on Unix, an explicit DACL
// on Windows).
//
// A file that does not decrypt with the current key is an error that names the
// key that wrote it, and Save never overwrites it: a wrong OAUTHRELAY_KEY must
// not silently destroy refresh tokens that the right key could still read.
// Delete is the explicit way to replace such a file (`oauthrelay login`).
//
// Seal and Unseal give the same encryption to the copy of a record that
// relay instances share (oauth.ClusterStore): one key, one format, one
// check of the key's fingerprint. Out of scope: key rotation.
package tokenstore

import (
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// ErrNotFound is returned by Load when the account has no record.
var ErrNotFound = errors.New("tokenstore: no stored token")

// ErrDecrypt is wrapped by every error about a file that exists but cannot be
// read with the current key (wrong key, corruption, tampering). Retrying does
// not help; the message says which key is expected.
var ErrDecrypt = errors.New("tokenstore: cannot decrypt token file")

// tokensDir is the subdirectory of the state directory that holds the files.
const tokensDir = "tokens"

// Store is the encrypted token store. It is safe for concurrent use; Save and
// Delete are serialised per account.
type Store struct {
	dir   string // state_dir/tokens
	state string // state_dir, for messages about the key file
	aead  cipher.AEAD
	fp    [fpLen]byte

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// Open opens (creating it as a private directory if needed, see
// securefile.MkdirAll) the store under stateDir/tokens with key, a 32-byte
// key from LoadKey.
func Open(stateDir string, key []byte) (*Store, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	if stateDir == "" {
		return nil, errors.New("tokenstore: no state directory")
	}
	dir := filepath.Join(stateDir, tokensDir)
	if err := securefile.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("tokenstore: %w", err)
	}
	return &Store{dir: dir, state: stateDir, aead: aead, fp: keyFP(key), locks: map[string]*sync.Mutex{}}, nil
}

// Dir is the directory holding the token files.
func (s *Store) Dir() string { return s.dir }

// Path is the file that holds account's record.
func (s *Store) Path(account string) string {
	return filepath.Join(s.dir, fileName(account))
}

// Load returns account's record, ErrNotFound when there is none, or an error
// wrapping ErrDecrypt when the file cannot be read with the current key.
func (s *Store) Load(account string) (Record, error) {
	if err := checkAccount(account); err != nil {
		return Record{}, err
	}
	b, err := readLimited(s.Path(account))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("tokenstore: %w", err)
	}
	return s.open(account, b)
}

// Save stores r for account, replacing the previous record atomically: a
// crash leaves either the old or the new file, never a torn one. It refuses
// to replace a file that exists but does not decrypt with the current key
// (see Delete).
func (s *Store) Save(account string, r Record) error {
	if err := checkAccount(account); err != nil {
		return err
	}
	l := s.lock(account)
	l.Lock()
	defer l.Unlock()

	path := s.Path(account)
	if b, err := readLimited(path); err == nil {
		if _, err := s.open(account, b); err != nil {
			return fmt.Errorf("%w; not overwriting it (delete it explicitly to replace it)", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tokenstore: %w", err)
	}

	r.Access = nil // access tokens are never written to disk
	data, err := encode(s.aead, s.fp, account, r)
	if err != nil {
		return err
	}
	if err := securefile.WriteFile(path, data); err != nil {
		return fmt.Errorf("tokenstore: save %s: %w", account, err)
	}
	return nil
}

// Delete removes account's record, whether or not it decrypts. It is the
// explicit escape hatch for `oauthrelay login` to replace a file written with
// another key. Deleting a missing record is not an error.
func (s *Store) Delete(account string) error {
	if err := checkAccount(account); err != nil {
		return err
	}
	l := s.lock(account)
	l.Lock()
	defer l.Unlock()
	if err := securefile.Remove(s.Path(account)); err != nil {
		return fmt.Errorf("tokenstore: delete %s: %w", account, err)
	}
	return nil
}

func (s *Store) lock(account string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.locks[account]
	if !ok {
		l = &sync.Mutex{}
		s.locks[account] = l
	}
	return l
}

// open decrypts b and turns a failure into a message an administrator can act
// on: which key wrote the file and which key is in use.
func (s *Store) open(account string, b []byte) (Record, error) {
	h, r, err := decode(s.aead, account, b)
	if err == nil {
		return r, nil
	}
	path := s.Path(account)
	cur := hex.EncodeToString(s.fp[:])
	keyHint := fmt.Sprintf("the key comes from %s when set, else %s", KeyEnv, filepath.Join(s.state, KeyFileName))
	switch {
	case errors.Is(err, errAuth) && h.fp != s.fp:
		return Record{}, fmt.Errorf("%w %s: it was encrypted with key fp %s, the current key has fp %s (%s); restore that key, or run `oauthrelay login %s` to sign in again",
			ErrDecrypt, path, hex.EncodeToString(h.fp[:]), cur, keyHint, account)
	case errors.Is(err, errAuth):
		return Record{}, fmt.Errorf("%w %s: the key fingerprint matches (%s) but the content does not authenticate: the file is corrupt, was altered or was copied from another account; run `oauthrelay login %s`",
			ErrDecrypt, path, cur, account)
	default:
		return Record{}, fmt.Errorf("%w %s: %w; run `oauthrelay login %s`", ErrDecrypt, path, err, account)
	}
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileLen+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileLen {
		return b[:maxFileLen], nil // decode rejects it as not authenticating
	}
	return b, nil
}

func checkAccount(account string) error {
	if account == "" {
		return errors.New("tokenstore: empty account name")
	}
	return nil
}

// fileName maps an account name to a file name. Names made of safe
// characters are used as they are (an administrator can find the file);
// anything else is hex-encoded (or, when long, hashed behind "_h", a letter
// hex never contains) behind a leading "_", which a verbatim name cannot
// start with, so two accounts never share a file.
func fileName(account string) string {
	if safeName(account) {
		return account + ".json.enc"
	}
	if len(account) > 64 {
		sum := sha256.Sum256([]byte(account)) // keeps the name under NAME_MAX
		return "_h" + hex.EncodeToString(sum[:]) + ".json.enc"
	}
	return "_" + hex.EncodeToString([]byte(account)) + ".json.enc"
}

func safeName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return false
		}
		if !alnum && c != '-' && c != '_' && c != '.' && c != '@' && c != '+' {
			return false
		}
	}
	return true
}
