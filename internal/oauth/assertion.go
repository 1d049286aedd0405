package oauth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// clientAssertionType is RFC 7523 §2.2's client_assertion_type.
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionLifetime is the exp of a client assertion. Entra accepts up to
// ten minutes; a fresh assertion is signed for every request anyway.
const assertionLifetime = 10 * time.Minute

// assertionSigner signs client assertions (Entra "certificate credentials")
// with the key of an uploaded certificate, so no shared secret exists.
type assertionSigner struct {
	key     *rsa.PrivateKey
	x5tS256 string // base64url(SHA-256(cert DER)): how Entra finds the certificate
}

// loadAssertionSigner reads the certificate (first CERTIFICATE block) and the
// RSA private key (PKCS#1 or PKCS#8; the two may share one file) and checks
// that they belong together: a mismatch would otherwise surface only as an
// AADSTS700027 at the first token request.
func loadAssertionSigner(certFile, keyFile string) (*assertionSigner, error) {
	if keyFile == "" {
		keyFile = certFile
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	var cert *x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			if cert, err = x509.ParseCertificate(b.Bytes); err != nil {
				return nil, fmt.Errorf("client certificate %s: %w", certFile, err)
			}
			break
		}
	}
	if cert == nil {
		return nil, fmt.Errorf("client certificate %s: no PEM CERTIFICATE block", certFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	key, err := parseRSAKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client key %s: %w", keyFile, err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("client key %s does not match certificate %s", keyFile, certFile)
	}
	sum := sha256.Sum256(cert.Raw)
	return &assertionSigner{key: key, x5tS256: base64.RawURLEncoding.EncodeToString(sum[:])}, nil
}

func parseRSAKey(data []byte) (*rsa.PrivateKey, error) {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PEM RSA PRIVATE KEY or PRIVATE KEY block")
		}
		switch b.Type {
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("key is %T; Entra client assertions here use RS256 and need an RSA key", k)
			}
			return rk, nil
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted; store it unencrypted with mode 0600")
		}
	}
}

// sign returns a client assertion JWT (RFC 7523) for clientID at audience
// (the token URL).
func (a *assertionSigner) sign(clientID, audience string, now time.Time) (string, error) {
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	hdr, err := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "x5t#S256": a.x5tS256})
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	claims, err := json.Marshal(map[string]any{
		"aud": audience,
		"iss": clientID,
		"sub": clientID,
		"jti": hex.EncodeToString(jti),
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(assertionLifetime).Unix(),
	})
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(hdr) + "." + enc.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, a.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	return signing + "." + enc.EncodeToString(sig), nil
}
