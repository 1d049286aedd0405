// Package testutil holds fixtures shared by the end-to-end tests of several
// packages: a local TLS certificate for the relay's own listeners, and a
// slog logger that writes into the test log. It is imported only from
// _test.go files.
package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// LocalCert is a self-signed certificate for 127.0.0.1 and localhost,
// written to files as the relay's cert_file and key_file.
type LocalCert struct {
	CertFile, KeyFile string
	// Pool trusts the certificate, for test clients.
	Pool *x509.CertPool
}

// ClientTLS is a client configuration that trusts the certificate.
func (c *LocalCert) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: c.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// NewLocalCert generates a certificate in t.TempDir().
func NewLocalCert(t testing.TB) *LocalCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "oauthrelay test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &LocalCert{
		CertFile: filepath.Join(dir, "relay.crt"),
		KeyFile:  filepath.Join(dir, "relay.key"),
		Pool:     x509.NewCertPool(),
	}
	c.Pool.AddCert(cert)
	writePEM(t, c.CertFile, "CERTIFICATE", der)
	writePEM(t, c.KeyFile, "PRIVATE KEY", keyDER)
	return c
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Logger returns a debug-level slog logger writing to a Buf, so tests can
// assert on what was logged (and on what was not: secrets). The log is
// printed to the test log if the test fails.
func Logger(t testing.TB) (*slog.Logger, *Buf) {
	b := &Buf{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("relay log:\n" + b.String())
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// Buf collects log output; safe for concurrent use.
type Buf struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *Buf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sb.Write(p)
	return len(p), nil
}

// String returns everything logged so far.
func (b *Buf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}
