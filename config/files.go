package config

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// resolvePaths makes every file name in c absolute, relative to dir (the
// config file's directory), so that the packages using them do not depend on
// the working directory the daemon was started in.
func resolvePaths(c *Config, dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.StateDir)
	for _, l := range []*Listener{&c.Listen.SMTP, &c.Listen.IMAP, &c.Listen.POP3} {
		abs(&l.CertFile)
		abs(&l.KeyFile)
	}
	abs(&c.Listen.Admin.CertFile)
	abs(&c.Listen.Admin.KeyFile)
	for _, p := range c.Providers {
		abs(&p.ClientSecretFile)
		abs(&p.ClientCertificateFile)
		abs(&p.ClientKeyFile)
		abs(&p.CAFile)
	}
	for _, a := range c.Accounts {
		abs(&a.PasswordFile)
	}
	abs(&c.Cluster.PasswordFile)
	abs(&c.Cluster.CAFile)
}

// readSecrets fills ClientSecret and Password from their *_file keys. A file
// keeps secrets out of the config (and out of the environment, which child
// processes and /proc expose); the trailing newline editors add is dropped.
func readSecrets(c *Config, r *report) {
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		p := c.Providers[name]
		readSecret(r, "providers."+name, "client_secret", &p.ClientSecret, p.ClientSecretFile)
	}
	for i, a := range c.Accounts {
		readSecret(r, fmt.Sprintf("accounts[%d]", i), "password", &a.Password, a.PasswordFile)
	}
	readSecret(r, "cluster", "password", &c.Cluster.Password, c.Cluster.PasswordFile)
}

// readSecret reads the secret called name (at path) from file into value.
func readSecret(r *report, path, name string, value *string, file string) {
	if file == "" {
		return
	}
	// A problem here is the one problem of this secret: fail also keeps
	// validation from reporting the secret as missing.
	fail := func(format string, args ...any) {
		r.add(path+"."+name+"_file", format, args...)
		r.bad[path+"."+name] = true
	}
	if *value != "" {
		fail("set %s or %s_file, not both", name, name)
		return
	}
	data, err := readLimited(file, maxSecretFile)
	if err != nil {
		fail("%w", err)
		return
	}
	s := string(data)
	if t, ok := strings.CutSuffix(s, "\r\n"); ok {
		s = t
	} else {
		s = strings.TrimSuffix(s, "\n")
	}
	if s == "" {
		fail("%s is empty", file)
		return
	}
	*value = s
}

// checkClientCert checks that the client certificate and key of the
// certificate credential load and belong together. The key must be RSA:
// Entra ID accepts client assertions signed RS256 or PS256 only.
func checkClientCert(certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	if _, ok := pair.PrivateKey.(*rsa.PrivateKey); !ok {
		return fmt.Errorf("%s: want an RSA key (client assertions are signed RS256), not %T", keyFile, pair.PrivateKey)
	}
	return nil
}

// checkCAFile checks that file holds at least one PEM certificate.
func checkCAFile(file string) error {
	data, err := readLimited(file, maxCAFile)
	if err != nil {
		return err
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		return fmt.Errorf("no PEM certificates in %s", file)
	}
	return nil
}

// The largest files the configuration names that are read whole: a secret
// (a client secret or password is a few dozen bytes; 64 KiB leaves room
// for anything real) and a CA bundle (the system's is about 200 KiB). A
// path mistyped to a device or a log file is an error, not a read without
// end.
const (
	maxSecretFile = 64 << 10
	maxCAFile     = 16 << 20
)

// readLimited reads file whole, refusing one larger than limit bytes.
func readLimited(file string, limit int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: not the file meant", file, limit)
	}
	return data, nil
}
