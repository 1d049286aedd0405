package oauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate and its key (PKCS#8 or PKCS#1)
// to dir and returns the paths and the certificate.
func writeCert(t *testing.T, dir string, pkcs1 bool) (certFile, keyFile string, cert *x509.Certificate, key *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "oauthrelay test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	var kb *pem.Block
	if pkcs1 {
		kb = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}
	} else {
		b, _ := x509.MarshalPKCS8PrivateKey(key)
		kb = &pem.Block{Type: "PRIVATE KEY", Bytes: b}
	}
	os.WriteFile(keyFile, pem.EncodeToMemory(kb), 0o600)
	return certFile, keyFile, cert, key
}

func TestClientCredentialsCertificate(t *testing.T) {
	for _, pkcs1 := range []bool{false, true} {
		f := newFakeIdP(t)
		certFile, keyFile, cert, key := writeCert(t, t.TempDir(), pkcs1)
		acct := testAccount(f, "client_credentials")
		acct.ProviderRef.ClientSecret = ""
		acct.ProviderRef.ClientCertificateFile = certFile
		acct.ProviderRef.ClientKeyFile = keyFile
		s := mustSource(t, acct, Options{})
		if _, err := s.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
		form := f.lastForm()
		if form.Has("client_secret") {
			t.Fatal("client_secret sent with a certificate")
		}
		if form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || form.Get("client_id") != "client-1" {
			t.Fatalf("form %v", form)
		}
		parts := strings.Split(form.Get("client_assertion"), ".")
		if len(parts) != 3 {
			t.Fatalf("assertion has %d parts", len(parts))
		}
		var hdr map[string]string
		var claims map[string]any
		decodeJWTPart(t, parts[0], &hdr)
		decodeJWTPart(t, parts[1], &claims)
		sum := sha256.Sum256(cert.Raw)
		if hdr["alg"] != "RS256" || hdr["typ"] != "JWT" || hdr["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
			t.Fatalf("header %v", hdr)
		}
		if claims["aud"] != acct.ProviderRef.TokenURL || claims["iss"] != "client-1" || claims["sub"] != "client-1" || claims["jti"] == "" {
			t.Fatalf("claims %v", claims)
		}
		iat, nbf, exp := claims["iat"].(float64), claims["nbf"].(float64), claims["exp"].(float64)
		if exp-iat != 600 || nbf != iat || time.Since(time.Unix(int64(iat), 0)) > time.Minute {
			t.Fatalf("times iat=%v nbf=%v exp=%v", iat, nbf, exp)
		}
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("signature: %v", err)
		}
	}
}

func decodeJWTPart(t *testing.T, p string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func TestLoadAssertionSignerErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _, _ := writeCert(t, dir, false)
	other := t.TempDir()
	_, otherKey, _, _ := writeCert(t, other, true)

	// Combined file (cert + key) with no separate key file works.
	both := filepath.Join(dir, "both.pem")
	c, _ := os.ReadFile(certFile)
	k, _ := os.ReadFile(keyFile)
	os.WriteFile(both, append(c, k...), 0o600)
	if _, err := loadAssertionSigner(both, ""); err != nil {
		t.Fatalf("combined file: %v", err)
	}

	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	ecFile := filepath.Join(dir, "ec.pem")
	os.WriteFile(ecFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), 0o600)
	encFile := filepath.Join(dir, "enc.pem")
	os.WriteFile(encFile, pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), 0o600)

	for name, c := range map[string][2]string{
		"mismatched key": {certFile, otherKey},
		"missing cert":   {filepath.Join(dir, "nope.pem"), keyFile},
		"key is cert":    {certFile, certFile},
		"ec key":         {certFile, ecFile},
		"encrypted key":  {certFile, encFile},
		"cert is key":    {keyFile, keyFile},
	} {
		if _, err := loadAssertionSigner(c[0], c[1]); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
