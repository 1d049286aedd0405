package tokenstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// File format, version 1:
//
//	offset 0   1 byte   version (1)
//	offset 1   4 bytes  key fingerprint: SHA-256(key)[:4]
//	offset 5  12 bytes  GCM nonce (random)
//	offset 17  ...      AES-256-GCM ciphertext of the JSON Record, 16-byte tag
//
// The additional data is the 5-byte header followed by the account name: a
// file copied to another account's name, or a header edited to hide a key
// change, fails authentication.
const (
	version1   = 1
	fpLen      = 4
	headerLen  = 1 + fpLen
	nonceLen   = 12
	tagLen     = 16
	minFileLen = headerLen + nonceLen + tagLen
	// maxFileLen bounds what Load reads: a record is a few KB.
	maxFileLen = 1 << 20
)

// Record is what the store keeps per account.
type Record struct {
	RefreshToken string    `json:"refresh_token"`
	Scopes       []string  `json:"scopes,omitempty"`
	Updated      time.Time `json:"updated"`
	// SignedIn is when the sign-in that started this refresh token's chain
	// happened, and Generation how many rotations the chain has had since:
	// together they order two records of one account (Newer), so that
	// relay instances sharing a grant never replace a newer token with an
	// older one. Zero in records written before they existed: the oldest.
	SignedIn   time.Time `json:"signed_in,omitzero"`
	Generation uint64    `json:"generation,omitempty"`
	// By names the relay instance that wrote the record (cluster.instance;
	// empty on a single relay), for the log.
	By string `json:"by,omitempty"`
	// Access holds access tokens by the scopes they were requested with.
	// Only the copy in the store that relay instances share carries them
	// (encrypted like the rest), so that one instance's refresh serves
	// all; a token file never does (Save drops them).
	Access map[string]AccessToken `json:"access,omitempty"`
}

// AccessToken is an access token with its expiry, shared by relay
// instances (Record.Access).
type AccessToken struct {
	Token    string        `json:"token"`
	Expiry   time.Time     `json:"expiry"`
	Lifetime time.Duration `json:"lifetime"`
}

// Newer reports whether r is a later state of the account's grant than o:
// from a later sign-in, or a later rotation of the same sign-in's chain.
func (r Record) Newer(o Record) bool {
	if !r.SignedIn.Equal(o.SignedIn) {
		return r.SignedIn.After(o.SignedIn)
	}
	return r.Generation > o.Generation
}

// errFormat and errAuth are the two ways decode fails; the Store turns them
// into messages that name the key.
var (
	errFormat = errors.New("not a token file")
	errAuth   = errors.New("message authentication failed")
)

// header is the parsed, unauthenticated file header.
type header struct {
	version byte
	fp      [fpLen]byte
}

func keyFP(key []byte) [fpLen]byte {
	sum := sha256.Sum256(key)
	var fp [fpLen]byte
	copy(fp[:], sum[:fpLen])
	return fp
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("tokenstore: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("tokenstore: %w", err)
	}
	return cipher.NewGCM(block)
}

func additionalData(hdr []byte, account string) []byte {
	ad := make([]byte, 0, len(hdr)+len(account))
	ad = append(ad, hdr...)
	return append(ad, account...)
}

// encode seals r for account.
func encode(aead cipher.AEAD, fp [fpLen]byte, account string, r Record) ([]byte, error) {
	plain, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("tokenstore: encode record: %w", err)
	}
	out := make([]byte, headerLen+nonceLen, headerLen+nonceLen+len(plain)+aead.Overhead())
	out[0] = version1
	copy(out[1:headerLen], fp[:])
	if _, err := rand.Read(out[headerLen:]); err != nil {
		return nil, fmt.Errorf("tokenstore: nonce: %w", err)
	}
	return aead.Seal(out, out[headerLen:], plain, additionalData(out[:headerLen], account)), nil
}

// parseHeader reads the header without authenticating it: it is only used to
// name the key in an error message.
func parseHeader(b []byte) (header, error) {
	if len(b) < minFileLen {
		return header{}, fmt.Errorf("%w: %d bytes is too short", errFormat, len(b))
	}
	if b[0] != version1 {
		return header{}, fmt.Errorf("%w: unknown version %d", errFormat, b[0])
	}
	var h header
	h.version = b[0]
	copy(h.fp[:], b[1:headerLen])
	return h, nil
}

// decode opens a file's bytes for account. It must never panic on any input
// (FuzzDecode).
func decode(aead cipher.AEAD, account string, b []byte) (header, Record, error) {
	h, err := parseHeader(b)
	if err != nil {
		return h, Record{}, err
	}
	nonce := b[headerLen : headerLen+nonceLen]
	plain, err := aead.Open(nil, nonce, b[headerLen+nonceLen:], additionalData(b[:headerLen], account))
	if err != nil {
		return h, Record{}, errAuth
	}
	var r Record
	if err := json.Unmarshal(plain, &r); err != nil {
		return h, Record{}, fmt.Errorf("%w: record: %w", errFormat, err)
	}
	return h, r, nil
}
