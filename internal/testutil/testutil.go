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
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// LocalCert is a test CA and a certificate for 127.0.0.1 and localhost
// signed by it, written to files: the relay's cert_file and key_file, or an
// upstream's certificate with CAFile as the relay's ca_file.
type LocalCert struct {
	CertFile, KeyFile, CAFile string
	// Pool trusts the CA, for test clients.
	Pool *x509.CertPool
}

// ClientTLS is a client configuration that trusts the certificate.
func (c *LocalCert) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: c.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// NewLocalCert generates a CA and a certificate in t.TempDir().
func NewLocalCert(t testing.TB) *LocalCert {
	t.Helper()
	dir := t.TempDir()
	c := &LocalCert{
		CertFile: filepath.Join(dir, "relay.crt"),
		KeyFile:  filepath.Join(dir, "relay.key"),
		CAFile:   filepath.Join(dir, "ca.crt"),
	}
	c.Pool = WriteCert(t, c.CAFile, c.CertFile, c.KeyFile)
	return c
}

// WriteCert makes a test CA and a certificate for 127.0.0.1 and localhost
// signed by it, writes the CA, the certificate and its key (mode 0600) as
// PEM files and returns a pool trusting the CA.
func WriteCert(t testing.TB, caFile, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "oauthrelay test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano() + 1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, caFile, "CERTIFICATE", caDER)
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
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

// ClosedAddr returns a loopback address where nothing listens (a port that
// was free a moment ago): an unreachable upstream.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Tool returns the path of an external program a test drives (swaks, curl,
// python3...). A missing one skips the test, except in CI (CI is set), where
// .ci/run installs it and its absence is a failure.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (CI installs it in .ci/run): %v", name, err)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}
