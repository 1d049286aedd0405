package tokenstore

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// ErrOtherKey is wrapped, with ErrDecrypt, by Unseal when the bytes were
// sealed with a key of another fingerprint: relay instances that share
// refresh tokens must share the key too.
var ErrOtherKey = errors.New("sealed with another key")

// Seal encrypts r for account exactly as Save writes a token file (the
// same format, key and additional data), for a copy kept elsewhere: the
// store relay instances share. Access tokens are kept (see Record.Access).
func (s *Store) Seal(account string, r Record) ([]byte, error) {
	if err := checkAccount(account); err != nil {
		return nil, err
	}
	return encode(s.aead, s.fp, account, r)
}

// Unseal decrypts what Seal made for account. Its errors wrap ErrDecrypt;
// bytes sealed with another key wrap ErrOtherKey as well and name both
// keys' fingerprints, so that a key that differs between instances is
// told apart from corruption.
func (s *Store) Unseal(account string, b []byte) (Record, error) {
	h, r, err := decode(s.aead, account, b)
	if err == nil {
		return r, nil
	}
	cur := hex.EncodeToString(s.fp[:])
	switch {
	case errors.Is(err, errAuth) && h.fp != s.fp:
		return Record{}, fmt.Errorf("%w: %w: key fp %s, this relay's key has fp %s", ErrDecrypt, ErrOtherKey, hex.EncodeToString(h.fp[:]), cur)
	case errors.Is(err, errAuth):
		return Record{}, fmt.Errorf("%w: the key fingerprint matches (%s) but the content does not authenticate (corrupt, altered, or another account's)", ErrDecrypt, cur)
	default:
		return Record{}, fmt.Errorf("%w: %w", ErrDecrypt, err)
	}
}

// KeyFingerprint is the fingerprint of the store's key, as Fingerprint
// gives it and as sealed bytes carry it.
func (s *Store) KeyFingerprint() string { return hex.EncodeToString(s.fp[:]) }
