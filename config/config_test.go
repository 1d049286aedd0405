package config

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// hash is bcrypt("change-me"), the hash of config.example.yaml.
const hash = "$2a$10$Z2JJfwYPewHYL9oAh66lIeDX4EX.KY/2tMTO.i.a3GtJF3iXSQLli"

// Building blocks of the test files; each is two lines.
const (
	prov = "providers:\n  p: {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s}\n"
	acct = "accounts:\n  - {name: a, provider: p, mailbox: a@contoso.com, username: u, password_hash: \"HASH\"}\n"
)

func env(kv ...string) func(string) (string, bool) {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// fixtures writes the files the tests refer to into a temporary directory:
// srv.crt/srv.key (ECDSA, a listener's pair), client.crt/client.key (RSA, a
// client credential), secret.txt, crlf.txt, empty.txt.
func fixtures(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, dir, "srv", ec)
	writePair(t, dir, "client", rk)
	for name, content := range map[string]string{"secret.txt": "s3cret\n", "crlf.txt": "pw\r\n", "empty.txt": "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func writePair(t *testing.T, dir, name string, key crypto.Signer) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".crt", "CERTIFICATE", der)
	write(name+".key", "PRIVATE KEY", keyDER)
}

// parseIn parses yaml as dir/c.yaml; errors come back with "dir/" removed so
// that expectations read "c.yaml:3: ...".
func parseIn(dir, yaml string, getenv func(string) (string, bool)) (*Config, string) {
	yaml = strings.ReplaceAll(yaml, "HASH", hash)
	c, err := Parse(filepath.Join(dir, "c.yaml"), []byte(yaml), getenv)
	if err != nil {
		return c, strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")
	}
	return c, ""
}

func TestProblems(t *testing.T) {
	dir := fixtures(t)
	tests := []struct {
		name, yaml string
		want       []string
	}{
		// YAML itself.
		{"syntax", "a: [\n", []string{"c.yaml:1: did not find expected node content"}},
		{"two documents", prov + acct + "---\nx: 1\n", []string{"c.yaml:5: only one YAML document is allowed"}},
		{"empty", "", []string{"c.yaml: accounts: at least one account is required"}},
		{"root not a mapping", "- a\n", []string{"c.yaml:1: want a mapping of keys, not a list", "c.yaml: accounts: at least one account is required"}},
		{"unknown key", prov + acct + "stat_dir: /x\n", []string{"c.yaml:5: stat_dir: unknown key"}},
		{"unknown nested key", "providers:\n  p: {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s, clientid: x}\n" + acct,
			[]string{"c.yaml:2: providers.p.clientid: unknown key"}},
		{"duplicate key", prov + acct + "log: {level: info}\nlog: {level: debug}\n", []string{"c.yaml:6: log: duplicate key (first at line 5)"}},
		{"want string", prov + acct + "state_dir: [a]\n", []string{"c.yaml:5: state_dir: want a string, not a list"}},
		{"want list", prov + "accounts: {a: 1}\n", []string{"c.yaml:3: accounts: want a list, not a mapping"}},
		{"want mapping", prov + acct + "log: debug\n", []string{"c.yaml:5: log: want a mapping of keys, not a value"}},
		{"want names", "providers: [p]\n" + acct, []string{"c.yaml:1: providers: want a mapping of names, not a list",
			`c.yaml:3: accounts[0].provider: "p" is not a provider (have: none)`}},
		{"bool", prov + acct + "listen: {smtp: {allow_insecure: yes}}\n", []string{`c.yaml:5: listen.smtp.allow_insecure: want true or false, not "yes"`}},
		{"bool list", prov + acct + "listen: {smtp: {allow_insecure: []}}\n", []string{`c.yaml:5: listen.smtp.allow_insecure: want true or false, not a list`}},

		// ${ENV}
		{"unset variable", prov + acct + "state_dir: /x/${NOPE}\n", []string{"c.yaml:5: state_dir: environment variable NOPE is not set"}},
		{"bad variable", prov + acct + "state_dir: ${1X}\n", []string{`c.yaml:5: state_dir: "1X" is not a variable name (letters, digits and _; write $$ for a literal $)`}},
		{"unclosed variable", prov + acct + "state_dir: ${X\n", []string{`c.yaml:5: state_dir: "${" without a closing "}" (write $$ for a literal $)`}},

		// *_file secrets
		{"secret and file", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret: s, client_secret_file: secret.txt}\n" + acct,
			[]string{"c.yaml:2: providers.p.client_secret_file: set client_secret or client_secret_file, not both"}},
		{"missing secret file", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret_file: nope.txt}\n" + acct,
			[]string{"c.yaml:2: providers.p.client_secret_file: open nope.txt: no such file or directory"}},
		{"empty secret file", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret_file: empty.txt}\n" + acct,
			[]string{"c.yaml:2: providers.p.client_secret_file: empty.txt is empty"}},
		{"secret file without end", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret_file: /dev/zero}\n" + acct,
			[]string{"c.yaml:2: providers.p.client_secret_file: /dev/zero is larger than 65536 bytes: not the file meant"}},
		{"password and file", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_hash: \"HASH\",\n     password: x, password_file: secret.txt}\n",
			[]string{"c.yaml:5: accounts[0].password_file: set password or password_file, not both"}},

		// log
		{"log level", prov + acct + "log: {level: verbose, format: xml}\n", []string{
			`c.yaml:5: log.level: "verbose" is not a log level (have: debug, info, warn, error)`,
			`c.yaml:5: log.format: "xml" is not a log format (have: text, json)`}},

		// listeners
		{"listener addr", prov + acct + "listen:\n  smtp: {addr: localhost}\n  imap: {addr: \"127.0.0.1:http\"}\n", []string{
			`c.yaml:6: listen.smtp.addr: want host:port, not "localhost"`,
			`c.yaml:7: listen.imap.addr: "127.0.0.1:http": the port must be a number from 0 to 65535`}},
		{"listener tls", prov + acct + "listen:\n  smtp: {tls: ssl}\n", []string{
			`c.yaml:6: listen.smtp.tls: "ssl" is not a listener tls mode (have: none, starttls, implicit)`}},
		{"listener insecure", prov + acct + "listen:\n  smtp: {addr: \"0.0.0.0:25\"}\n  imap: {addr: \":143\", allow_insecure: true}\n", []string{
			`c.yaml:6: listen.smtp.addr: "0.0.0.0:25" is not a loopback address and tls is none: set tls (starttls or implicit, with cert_file and key_file) or allow_insecure: true`}},
		{"listener cert required", prov + acct + "listen:\n  smtp: {tls: starttls}\n  imap: {tls: implicit, cert_file: srv.crt}\n", []string{
			`c.yaml:6: listen.smtp.cert_file: required for tls starttls`,
			`c.yaml:7: listen.imap.key_file: required for tls implicit`}},
		{"pop3 listener", prov + acct + "listen:\n  pop3: {addr: \"0.0.0.0:110\", tls: stls}\n", []string{
			`c.yaml:6: listen.pop3.tls: "stls" is not a listener tls mode (have: none, starttls, implicit)`}},
		{"pop3 listener insecure and cert", prov + acct + "listen:\n  pop3: {addr: \"0.0.0.0:110\"}\n  imap: {addr: off}\n", []string{
			`c.yaml:6: listen.pop3.addr: "0.0.0.0:110" is not a loopback address and tls is none: set tls (starttls or implicit, with cert_file and key_file) or allow_insecure: true`}},
		{"pop3 upstream", "providers:\n  p: {type: microsoft, tenant: t, client_id: id, client_secret: s, pop3: {addr: \"pop.example.com:995\", tls: none}}\n" + acct, []string{
			`c.yaml:2: providers.p.pop3.tls: none is allowed only to a loopback host, not "pop.example.com"`}},
		{"listener pair", prov + acct + "listen:\n  smtp: {tls: starttls, cert_file: srv.crt, key_file: client.key}\n", []string{
			`c.yaml:6: listen.smtp.cert_file: cannot load with key_file: tls: private key type does not match public key type`}},

		// admin
		{"admin addr", prov + acct + "listen: {admin: {addr: \"[::1]\"}}\n", []string{`c.yaml:5: listen.admin.addr: want host:port, not "[::1]"`}},
		{"admin exposed", prov + acct + "listen: {admin: {addr: \"10.0.0.1:8025\", username: admin}}\n", []string{
			`c.yaml:5: listen.admin.addr: "10.0.0.1:8025" is not a loopback address: username and password_hash are required`}},
		{"admin hash required", prov + acct + "listen: {admin: {username: admin}}\n", []string{`c.yaml:5: listen.admin.password_hash: required with username`}},
		{"admin tls pair", prov + acct + "listen: {admin: {cert_file: srv.crt}}\n", []string{`c.yaml:5: listen.admin.key_file: required with cert_file`}},
		{"admin tls cert", prov + acct + "listen: {admin: {key_file: srv.key}}\n", []string{`c.yaml:5: listen.admin.cert_file: required with key_file`}},
		{"admin tls load", prov + acct + "listen: {admin: {cert_file: srv.crt, key_file: client.key}}\n", []string{
			`c.yaml:5: listen.admin.cert_file: cannot load with key_file: tls: private key type does not match public key type`}},
		{"admin username required", prov + acct + "listen: {admin: {password_hash: \"HASH\"}}\n", []string{`c.yaml:5: listen.admin.username: required with password_hash`}},
		{"admin bad hash", prov + acct + "listen: {admin: {username: a, password_hash: secret}}\n", []string{
			"c.yaml:5: listen.admin.password_hash: not a bcrypt hash (make one with `oauthrelay hash-password`): crypto/bcrypt: hashedSecret too short to be a bcrypted password"}},

		// providers
		{"provider type", "providers:\n  p: {client_id: id, client_secret: s}\n  q: {type: exchange, client_id: id, client_secret: s}\n" + acct, []string{
			`c.yaml:2: providers.p.type: required (have: microsoft, google, generic)`,
			`c.yaml:3: providers.q.type: "exchange" is not a provider type (have: microsoft, google, generic)`}},
		{"client id", "providers:\n  p: {type: microsoft, tenant: t.com, client_secret: s}\n" + acct, []string{`c.yaml:2: providers.p.client_id: required`}},
		{"cloud and grant", "providers:\n  p: {type: microsoft, cloud: germany, tenant: t.com, client_id: id, grant: implicit}\n" + acct, []string{
			`c.yaml:2: providers.p.cloud: "germany" is not a cloud (have: global, usgov, china)`,
			`c.yaml:2: providers.p.grant: "implicit" is not a grant (have: client_credentials, authorization_code, device_code, password)`}},
		{"tenant required", "providers:\n  p: {type: microsoft, client_id: id, client_secret: s}\n" + acct, []string{
			`c.yaml:2: providers.p.tenant: required for grant client_credentials (the tenant id or a domain of the tenant)`}},
		{"tenant alias", "providers:\n  p: {type: microsoft, tenant: organizations, client_id: id, client_secret: s}\n" + acct, []string{
			`c.yaml:2: providers.p.tenant: "organizations" does not work with grant client_credentials: give the tenant id or a domain of the tenant`}},
		{"tenant characters", "providers:\n  p: {type: microsoft, tenant: \"a/b\", client_id: id, grant: device_code}\n" + acct, []string{
			`c.yaml:2: providers.p.tenant: "a/b" is not a tenant id or domain`}},
		{"google grant", "providers:\n  p: {type: google, client_id: id, grant: client_credentials, client_secret: s, cloud: global, tenant: x}\n" + acct, []string{
			`c.yaml:2: providers.p.grant: "client_credentials" is not a grant Google offers for mail (have: authorization_code, device_code)`,
			`c.yaml:2: providers.p.cloud: only for type microsoft`,
			`c.yaml:2: providers.p.tenant: only for type microsoft`}},
		{"secret required", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id}\n" + acct, []string{
			`c.yaml:2: providers.p.client_secret: required for grant client_credentials (or client_certificate_file and client_key_file)`}},
		{"secret or cert", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret: s,\n      client_certificate_file: client.crt, client_key_file: client.key}\n" + acct, []string{
			`c.yaml:2: providers.p.client_secret: set client_secret or client_certificate_file and client_key_file, not both`}},
		{"cert without key", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_certificate_file: client.crt}\n" +
			"  q: {type: microsoft, tenant: t.com, client_id: id, client_key_file: client.key}\n" + acct, []string{
			`c.yaml:2: providers.p.client_key_file: required with client_certificate_file`,
			`c.yaml:3: providers.q.client_certificate_file: required with client_key_file`}},
		{"cert does not load", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_certificate_file: secret.txt, client_key_file: client.key}\n" + acct, []string{
			`c.yaml:2: providers.p.client_certificate_file: tls: failed to find any PEM data in certificate input`}},
		{"cert not rsa", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_certificate_file: srv.crt, client_key_file: srv.key}\n" + acct, []string{
			`c.yaml:2: providers.p.client_certificate_file: srv.key: want an RSA key (client assertions are signed RS256), not *ecdsa.PrivateKey`}},
		{"generic needs endpoints", "providers:\n  p: {type: generic, client_id: id, grant: authorization_code}\n  q: {type: generic, client_id: id, grant: device_code, token_url: \"https://x/t\", imap: {addr: \"x:993\", tls: implicit}}\n" + acct, []string{
			`c.yaml:2: providers.p.token_url: required for type generic`,
			`c.yaml:2: providers.p.authorize_url: required for type generic`,
			`c.yaml:2: providers.p.smtp.addr: required for type generic (smtp.addr, imap.addr or pop3.addr)`,
			`c.yaml:3: providers.q.device_url: required for type generic`}},
		{"urls", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret: s, token_url: \"http://login.example.com/t\",\n      device_url: \"http://127.0.0.1:8080/d\", authorize_url: \"/a\", redirect_url: \"localhost:80\"}\n" + acct, []string{
			`c.yaml:2: providers.p.token_url: want an https:// URL (http:// only to a loopback host), not "http://login.example.com/t"`,
			`c.yaml:3: providers.p.authorize_url: want an https:// URL (http:// only to a loopback host), not "/a"`,
			`c.yaml:3: providers.p.redirect_url: want an absolute URL, not "localhost:80"`}},
		{"upstream", "providers:\n  p: {type: generic, client_id: id, token_url: \"https://x/t\", client_secret: s,\n      smtp: {addr: \"mail.example.com:25\", tls: none}, imap: {addr: \":993\", tls: tls}}\n" + acct, []string{
			`c.yaml:3: providers.p.smtp.tls: none is allowed only to a loopback host, not "mail.example.com"`,
			`c.yaml:3: providers.p.imap.addr: want host:port, not ":993"`,
			`c.yaml:3: providers.p.imap.tls: "tls" is not a tls mode for upstream servers (have: starttls, implicit, none)`}},
		{"upstream port", "providers:\n  p: {type: generic, client_id: id, token_url: \"https://x/t\", client_secret: s, smtp: {addr: \"x:0\"}}\n" + acct, []string{
			`c.yaml:2: providers.p.smtp.addr: "x:0": the port must be a number from 1 to 65535`,
			`c.yaml:2: providers.p.smtp.tls: required (have: starttls, implicit, none)`}},
		{"ca file", "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret: s, ca_file: secret.txt}\n" + acct, []string{
			`c.yaml:2: providers.p.ca_file: no PEM certificates in secret.txt`}},

		// accounts
		{"no accounts", prov + "accounts: []\n", []string{`c.yaml:3: accounts: at least one account is required`}},
		{"account basics", prov + "accounts:\n  - {provider: q, mailbox: \"A <a@b.c>\"}\n  - {name: .x, provider: p}\n", []string{
			`c.yaml:4: accounts[0].name: required`,
			`c.yaml:4: accounts[0].provider: "q" is not a provider (have: p)`,
			`c.yaml:4: accounts[0].mailbox: "A <a@b.c>" is not an email address`,
			`c.yaml:4: accounts[0].username: required (or relay_from, for an account that only relays)`,
			`c.yaml:5: accounts[1].name: ".x": use letters, digits, '.', '_' and '-' (not first '.')`,
			`c.yaml:5: accounts[1].mailbox: required`,
			`c.yaml:5: accounts[1].username: required (or relay_from, for an account that only relays)`}},
		{"duplicates", prov + acct + "  - {name: a, provider: p, mailbox: b@contoso.com, username: U, password_hash: \"HASH\"}\n", []string{
			`c.yaml:5: accounts[1].name: "a" is also the name of accounts[0]`,
			`c.yaml:5: accounts[1].username: "U" is also the username of accounts[0] (usernames ignore case)`}},
		{"password hash", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u}\n  - {name: b, provider: p, mailbox: a@b.c, username: v, password_hash: \"$2a$10$x\"}\n" +
			"  - {name: c, provider: p, mailbox: a@b.c, relay_from: [10.0.0.1], password_hash: \"HASH\"}\n", []string{
			"c.yaml:4: accounts[0].password_hash: required (make one with `oauthrelay hash-password`)",
			"c.yaml:5: accounts[1].password_hash: not a bcrypt hash (make one with `oauthrelay hash-password`): crypto/bcrypt: hashedSecret too short to be a bcrypted password",
			`c.yaml:6: accounts[2].password_hash: set, but username is not`}},
		{"sender patterns", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_hash: \"HASH\",\n     allowed_from: [\"*@b.c\", \"*\", \"<>\", \"a@\", \"*@\", \"x@b.c\"], relay_from: [10.0.0.0/33, fe80::1%eth0, 10.0.0.1/8]}\n", []string{
			`c.yaml:5: accounts[0].allowed_from[3]: "a@" is not an address, "*@domain", "*" or "<>"`,
			`c.yaml:5: accounts[0].allowed_from[4]: "*@" is not an address, "*@domain", "*" or "<>"`,
			`c.yaml:5: accounts[0].relay_from[0]: "10.0.0.0/33" is not an IP address or CIDR prefix`,
			`c.yaml:5: accounts[0].relay_from[1]: "fe80::1%eth0" is not an IP address or CIDR prefix`}},
		{"passthrough needs grant password", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_passthrough: true}\n", []string{
			`c.yaml:4: accounts[0].password_passthrough: only for grant password (provider p has client_credentials)`}},
		{"password needs grant password", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_hash: \"HASH\", password_file: secret.txt}\n", []string{
			`c.yaml:4: accounts[0].password_file: only for grant password (provider p has client_credentials)`}},
		{"grant password", "providers:\n  p: {type: microsoft, client_id: id, grant: password}\naccounts:\n" +
			"  - {name: a, provider: p, mailbox: a@b.c, username: u, password_hash: \"HASH\"}\n" +
			"  - {name: b, provider: p, mailbox: a@b.c, username: v, password_passthrough: true, password_hash: \"HASH\", password: x}\n" +
			"  - {name: c, provider: p, mailbox: a@b.c, username: w, password_passthrough: true, relay_from: [10.0.0.0/8]}\n", []string{
			`c.yaml:4: accounts[0].password: required for grant password (or password_file, or password_passthrough: true)`,
			`c.yaml:5: accounts[1].password: not used with password_passthrough: remove one`,
			`c.yaml:5: accounts[1].password_hash: not used with password_passthrough: remove one`,
			`c.yaml:6: accounts[2].relay_from: not possible with password_passthrough: mail relayed without AUTH brings no password`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := parseIn(dir, tt.yaml, env())
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestValid checks files that must parse, including every file-backed key.
func TestValid(t *testing.T) {
	dir := fixtures(t)
	yaml := `state_dir: state
listen:
  smtp: {addr: "0.0.0.0:2525", tls: starttls, cert_file: srv.crt, key_file: srv.key}
  imap: {addr: off}
  admin: {addr: "[::]:8025", username: admin, password_hash: "HASH", cert_file: srv.crt, key_file: srv.key}
providers:
  cert: {type: microsoft, tenant: t.com, client_id: id, client_certificate_file: client.crt, client_key_file: client.key, ca_file: srv.crt}
  ropc: {type: microsoft, client_id: id, grant: password}
accounts:
  - {name: a, provider: cert, mailbox: a@contoso.com, username: u, password_hash: "HASH"}
  - {name: b, provider: ropc, mailbox: b@contoso.com, username: v, password_hash: "HASH", password_file: crlf.txt}
  - {name: c, provider: ropc, mailbox: c@contoso.com, username: w, password_passthrough: true}
`
	c, err := parseIn(dir, yaml, env())
	if err != "" {
		t.Fatal(err)
	}
	abs := func(name string) string { return filepath.Join(dir, name) }
	if c.StateDir != abs("state") || c.Listen.SMTP.CertFile != abs("srv.crt") || c.Listen.SMTP.KeyFile != abs("srv.key") {
		t.Errorf("paths not resolved: %q %q %q", c.StateDir, c.Listen.SMTP.CertFile, c.Listen.SMTP.KeyFile)
	}
	if c.Listen.Admin.CertFile != abs("srv.crt") || c.Listen.Admin.KeyFile != abs("srv.key") {
		t.Errorf("admin TLS paths not resolved: %q %q", c.Listen.Admin.CertFile, c.Listen.Admin.KeyFile)
	}
	p := c.Providers["cert"]
	if p.Name != "cert" || p.ClientCertificateFile != abs("client.crt") || p.ClientKeyFile != abs("client.key") || p.CAFile != abs("srv.crt") {
		t.Errorf("provider: %+v", p)
	}
	if b := c.Account("b"); b.Password != "pw" || b.PasswordFile != abs("crlf.txt") || b.ProviderRef != c.Providers["ropc"] {
		t.Errorf("account b: %+v", b)
	}
	if c.Listen.IMAP.Addr != AddrOff || c.Account("nope") != nil {
		t.Errorf("imap %q / Account(nope) not nil", c.Listen.IMAP.Addr)
	}
}

func TestSecretFile(t *testing.T) {
	dir := fixtures(t)
	c, err := parseIn(dir, "providers:\n  p: {type: microsoft, tenant: t.com, client_id: id, client_secret_file: secret.txt}\n"+acct, env())
	if err != "" {
		t.Fatal(err)
	}
	if p := c.Providers["p"]; p.ClientSecret != "s3cret" || p.ClientSecretFile != filepath.Join(dir, "secret.txt") {
		t.Errorf("secret %q from %q", p.ClientSecret, p.ClientSecretFile)
	}
}

func TestEnv(t *testing.T) {
	getenv := env("A", "x", "EMPTY", "", "B_2", "$$")
	for in, want := range map[string]string{
		"plain":         "plain",
		"${A}":          "x",
		"<${A}${A}>":    "<xx>",
		"${EMPTY}":      "",
		"${B_2}":        "$$", // values are not expanded again
		"$$":            "$",
		"$${A}":         "${A}",
		"a$b $ $1 end$": "a$b $ $1 end$",
		hash:            hash,
	} {
		if got, err := expandEnv(in, getenv); err != nil || got != want {
			t.Errorf("expandEnv(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	c, err := parseIn(t.TempDir(), `providers:
  p: {type: microsoft, tenant: "${TENANT}", client_id: id, client_secret: "${SECRET}"}
listen: {smtp: {allow_insecure: "${INSECURE}"}}
`+acct, env("TENANT", "t.com", "SECRET", "pa$$word", "INSECURE", "true"))
	if err != "" {
		t.Fatal(err)
	}
	if p := c.Providers["p"]; p.Tenant != "t.com" || p.ClientSecret != "pa$$word" || !c.Listen.SMTP.AllowInsecure {
		t.Errorf("not expanded: %+v %+v", p, c.Listen.SMTP)
	}
	_, err = parseIn(t.TempDir(), prov+acct+"listen: {admin: {username: a, password_hash: \"${HASH}\"}}\n", env("HASH", hash))
	if want := "c.yaml:5: listen.admin.password_hash: not a bcrypt hash (make one with `oauthrelay hash-password`): " +
		"crypto/bcrypt: bcrypt algorithm version '{' requested is newer than current version '2'"; err != want {
		t.Errorf("password_hash was expanded: %s", err)
	}
}

func TestDefaults(t *testing.T) {
	delegated := func(host string) []string {
		return []string{"https://" + host + "/IMAP.AccessAsUser.All", "https://" + host + "/POP.AccessAsUser.All", "https://" + host + "/SMTP.Send", "offline_access"}
	}
	graphApp := func(host string) GraphAPI {
		return GraphAPI{URL: "https://" + host, Scopes: []string{"https://" + host + "/.default"}}
	}
	graphUser := func(host string) GraphAPI {
		return GraphAPI{URL: "https://" + host, Scopes: []string{"https://" + host + "/Mail.Send", "https://" + host + "/Mail.ReadWrite", "offline_access"}}
	}
	tests := []struct {
		provider string
		want     Provider
	}{
		{"{type: microsoft, tenant: t.com, client_id: id, client_secret: s}", Provider{
			Type: "microsoft", Cloud: "global", Tenant: "t.com", Grant: "client_credentials",
			TokenURL:     "https://login.microsoftonline.com/t.com/oauth2/v2.0/token",
			AuthorizeURL: "https://login.microsoftonline.com/t.com/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.microsoftonline.com/t.com/oauth2/v2.0/devicecode",
			Scopes:       []string{"https://outlook.office365.com/.default"},
			SMTP:         Upstream{"smtp.office365.com:587", "starttls"}, IMAP: Upstream{"outlook.office365.com:993", "implicit"},
			POP3:  Upstream{"outlook.office365.com:995", "implicit"},
			Graph: graphApp("graph.microsoft.com"),
		}},
		{"{type: microsoft, grant: device_code, client_id: id}", Provider{
			Type: "microsoft", Cloud: "global", Tenant: "organizations", Grant: "device_code",
			TokenURL:     "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
			AuthorizeURL: "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode",
			Scopes:       delegated("outlook.office.com"),
			SMTP:         Upstream{"smtp.office365.com:587", "starttls"}, IMAP: Upstream{"outlook.office365.com:993", "implicit"},
			POP3:  Upstream{"outlook.office365.com:995", "implicit"},
			Graph: graphUser("graph.microsoft.com"),
		}},
		{"{type: microsoft, cloud: usgov, tenant: t.us, client_id: id, client_secret: s}", Provider{
			Type: "microsoft", Cloud: "usgov", Tenant: "t.us", Grant: "client_credentials",
			TokenURL:     "https://login.microsoftonline.us/t.us/oauth2/v2.0/token",
			AuthorizeURL: "https://login.microsoftonline.us/t.us/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.microsoftonline.us/t.us/oauth2/v2.0/devicecode",
			Scopes:       []string{"https://outlook.office365.us/.default"},
			SMTP:         Upstream{"smtp.office365.us:587", "starttls"}, IMAP: Upstream{"outlook.office365.us:993", "implicit"},
			POP3:  Upstream{"outlook.office365.us:995", "implicit"},
			Graph: graphApp("graph.microsoft.us"),
		}},
		{"{type: microsoft, cloud: usgov, grant: authorization_code, client_id: id}", Provider{
			Type: "microsoft", Cloud: "usgov", Tenant: "organizations", Grant: "authorization_code",
			TokenURL:     "https://login.microsoftonline.us/organizations/oauth2/v2.0/token",
			AuthorizeURL: "https://login.microsoftonline.us/organizations/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.microsoftonline.us/organizations/oauth2/v2.0/devicecode",
			Scopes:       delegated("outlook.office365.us"),
			SMTP:         Upstream{"smtp.office365.us:587", "starttls"}, IMAP: Upstream{"outlook.office365.us:993", "implicit"},
			POP3:  Upstream{"outlook.office365.us:995", "implicit"},
			Graph: graphUser("graph.microsoft.us"),
		}},
		{"{type: microsoft, cloud: china, tenant: t.cn, client_id: id, client_secret: s}", Provider{
			Type: "microsoft", Cloud: "china", Tenant: "t.cn", Grant: "client_credentials",
			TokenURL:     "https://login.partner.microsoftonline.cn/t.cn/oauth2/v2.0/token",
			AuthorizeURL: "https://login.partner.microsoftonline.cn/t.cn/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.partner.microsoftonline.cn/t.cn/oauth2/v2.0/devicecode",
			Scopes:       []string{"https://partner.outlook.cn/.default"},
			SMTP:         Upstream{"smtp.partner.outlook.cn:587", "starttls"}, IMAP: Upstream{"partner.outlook.cn:993", "implicit"},
			POP3:  Upstream{"partner.outlook.cn:995", "implicit"},
			Graph: graphApp("microsoftgraph.chinacloudapi.cn"),
		}},
		{"{type: microsoft, cloud: china, grant: authorization_code, client_id: id}", Provider{
			Type: "microsoft", Cloud: "china", Tenant: "organizations", Grant: "authorization_code",
			TokenURL:     "https://login.partner.microsoftonline.cn/organizations/oauth2/v2.0/token",
			AuthorizeURL: "https://login.partner.microsoftonline.cn/organizations/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.partner.microsoftonline.cn/organizations/oauth2/v2.0/devicecode",
			Scopes:       delegated("partner.outlook.cn"),
			SMTP:         Upstream{"smtp.partner.outlook.cn:587", "starttls"}, IMAP: Upstream{"partner.outlook.cn:993", "implicit"},
			POP3:  Upstream{"partner.outlook.cn:995", "implicit"},
			Graph: graphUser("microsoftgraph.chinacloudapi.cn"),
		}},
		{"{type: google, client_id: id}", Provider{
			Type: "google", Grant: "authorization_code",
			TokenURL:     "https://oauth2.googleapis.com/token",
			AuthorizeURL: "https://accounts.google.com/o/oauth2/v2/auth",
			DeviceURL:    "https://oauth2.googleapis.com/device/code",
			Scopes:       []string{"https://mail.google.com/"},
			SMTP:         Upstream{"smtp.gmail.com:587", "starttls"}, IMAP: Upstream{"imap.gmail.com:993", "implicit"},
			POP3: Upstream{"pop.gmail.com:995", "implicit"},
		}},
		{"{type: generic, client_id: id, client_secret: s, token_url: \"http://127.0.0.1:9/t\", imap: {addr: \"127.0.0.1:143\", tls: none}}", Provider{
			Type: "generic", Grant: "client_credentials", TokenURL: "http://127.0.0.1:9/t", IMAP: Upstream{"127.0.0.1:143", "none"},
		}},
		{"{type: microsoft, tenant: t.com, client_id: id, client_secret: s, scopes: [x], smtp: {addr: \"localhost:2587\"}, token_url: \"https://p/t\"}", Provider{
			Type: "microsoft", Cloud: "global", Tenant: "t.com", Grant: "client_credentials",
			TokenURL:     "https://p/t",
			AuthorizeURL: "https://login.microsoftonline.com/t.com/oauth2/v2.0/authorize",
			DeviceURL:    "https://login.microsoftonline.com/t.com/oauth2/v2.0/devicecode",
			Scopes:       []string{"x"},
			SMTP:         Upstream{"localhost:2587", "starttls"}, IMAP: Upstream{"outlook.office365.com:993", "implicit"},
			POP3:  Upstream{"outlook.office365.com:995", "implicit"},
			Graph: graphApp("graph.microsoft.com"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.provider, func(t *testing.T) {
			c, err := parseIn(t.TempDir(), "providers:\n  p: "+tt.provider+"\n"+acct, env())
			if err != "" {
				t.Fatal(err)
			}
			got := *c.Providers["p"]
			tt.want.Name, tt.want.ClientID, tt.want.ClientSecret = "p", "id", got.ClientSecret
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}

	c, err := parseIn(t.TempDir(), prov+acct, env())
	if err != "" {
		t.Fatal(err)
	}
	want := Config{
		File: c.File, StateDir: "/var/lib/oauthrelay", Log: Log{"info", "text"},
		Listen: Listen{
			SMTP:  Listener{Addr: "127.0.0.1:2525", TLS: "none"},
			IMAP:  Listener{Addr: "127.0.0.1:1143", TLS: "none"},
			POP3:  Listener{Addr: "127.0.0.1:1110", TLS: "none"},
			Admin: Admin{Addr: "127.0.0.1:8025"},
		},
		// Exchange Online's limits; Postfix's queue lifetime.
		Limits:    Limits{Connections: 3, MessagesPerMinute: 30, RecipientsPerDay: 10000, RecipientsPerMessage: 500, MaxWait: 2 * time.Minute},
		Queue:     Queue{MaxAge: 5 * 24 * time.Hour, KeepFailed: 7 * 24 * time.Hour},
		Providers: c.Providers, Accounts: c.Accounts,
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got  %+v\nwant %+v", *c, want)
	}
	if a := c.Accounts[0]; !reflect.DeepEqual(a.AllowedFrom, []string{"a@contoso.com"}) {
		t.Errorf("allowed_from default %q", a.AllowedFrom)
	}
	if a := c.Accounts[0]; a.Delivery != DeliveryDirect || a.Limits != nil || a.EffectiveLimits != want.Limits {
		t.Errorf("account defaults: delivery %q, limits %+v, effective %+v; want direct, nil, %+v", a.Delivery, a.Limits, a.EffectiveLimits, want.Limits)
	}
	for in, want := range map[string]string{"/run/oauthrelay": "/run/oauthrelay", "/a:/b": "/a", "": "/var/lib/oauthrelay"} {
		if c, _ := parseIn(t.TempDir(), prov+acct, env("STATE_DIRECTORY", in)); c.StateDir != want {
			t.Errorf("STATE_DIRECTORY=%q: state_dir %q, want %q", in, c.StateDir, want)
		}
	}
}

func TestRelayNets(t *testing.T) {
	c, err := parseIn(t.TempDir(), prov+"accounts:\n  - {name: s, provider: p, mailbox: s@b.c, relay_from: [10.0.5.9/24, 192.0.2.1, \"2001:db8::1\", \"::ffff:192.0.2.2\"]}\n", env())
	if err != "" {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.5.0/24"), netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("192.0.2.2/32"),
	}
	if got := c.Account("s").RelayNets; !reflect.DeepEqual(got, want) {
		t.Errorf("RelayNets = %v, want %v", got, want)
	}
}

func TestAllowsSender(t *testing.T) {
	a := &Account{AllowedFrom: []string{"Invoices@Contoso.com", "*@billing.contoso.com"}}
	star := &Account{AllowedFrom: []string{"*"}}
	null := &Account{AllowedFrom: []string{"a@b.c", "<>"}}
	tests := []struct {
		a    *Account
		addr string
		want bool
	}{
		{a, "invoices@contoso.com", true},
		{a, "INVOICES@CONTOSO.COM", true},
		{a, "other@contoso.com", false},
		{a, "x@billing.contoso.com", true},
		{a, "x@BILLING.contoso.com", true},
		{a, "x@sub.billing.contoso.com", false},
		{a, "@billing.contoso.com", true}, // go-smtp hands over what the client sent; the domain decides
		{a, "billing.contoso.com", false},
		{a, "", false},
		{star, "anyone@anywhere.example", true},
		{star, "", false},
		{star, "<>", false},
		{null, "", true},
		{null, "<>", true},
		{null, "a@b.c", true},
		{&Account{}, "a@b.c", false},
	}
	for _, tt := range tests {
		if got := tt.a.AllowsSender(tt.addr); got != tt.want {
			t.Errorf("%q.AllowsSender(%q) = %v, want %v", tt.a.AllowedFrom, tt.addr, got, tt.want)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST": true, "localhost.": true, "127.0.0.1": true, "127.8.9.10": true,
		"::1": true, "::ffff:127.0.0.1": true,
		"": false, "0.0.0.0": false, "::": false, "10.0.0.1": false, "128.0.0.1": false,
		"localhost.example.com": false, "example.com": false, "[::1]": false,
	} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// TestExample keeps config.example.yaml, the users' reference, valid.
func TestExample(t *testing.T) {
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("../config.example.yaml", data, env("CONTOSO_SECRET", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Account("invoices").ProviderRef; p.ClientSecret != "s3cret" || p.Name != "contoso" {
		t.Errorf("provider %+v", p)
	}
	if s := c.Account("scanners"); len(s.RelayNets) != 2 || s.Username != "" || !s.AllowsSender("scanner@contoso.com") {
		t.Errorf("scanners %+v", s)
	}
	if !c.Account("invoices").EnforceHeaderFrom || c.Account("scanners").EnforceHeaderFrom {
		t.Errorf("enforce_header_from: invoices %v, scanners %v; want true, false (the default)",
			c.Account("invoices").EnforceHeaderFrom, c.Account("scanners").EnforceHeaderFrom)
	}
	if c.Limits != DefaultLimits() || c.Queue != DefaultQueue() {
		t.Errorf("the example's limits %+v and queue %+v are not the defaults it says", c.Limits, c.Queue)
	}
	inv, sc := c.Account("invoices"), c.Account("scanners")
	if inv.Delivery != DeliveryDirect || sc.Delivery != DeliveryQueue {
		t.Errorf("delivery: invoices %q, scanners %q; want direct, queue", inv.Delivery, sc.Delivery)
	}
	if l := inv.EffectiveLimits; l.MessagesPerMinute != 20 || l.Connections != 3 || sc.EffectiveLimits != DefaultLimits() {
		t.Errorf("effective limits: invoices %+v, scanners %+v", l, sc.EffectiveLimits)
	}
	if _, err := Parse("../config.example.yaml", data, env()); err == nil ||
		!strings.Contains(err.Error(), "providers.contoso.client_secret: environment variable CONTOSO_SECRET is not set") {
		t.Errorf("without CONTOSO_SECRET: %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(prov+acct, "HASH", hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(file); err != nil || c.File != file || c.Account("a") == nil {
		t.Errorf("Load: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
	// Callers can take the problems apart.
	_, err := Parse("c.yaml", []byte(strings.ReplaceAll(prov+acct, "HASH", hash)+"stat_dir: x\n"), env())
	if p := (*Problem)(nil); !errors.As(err, &p) || p.Line != 5 || p.Key != "stat_dir" || errors.Unwrap(p) != p.Err {
		t.Errorf("Problem: %#v", p)
	}
}

func TestDefaultStateDir(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		goos string
		env  map[string]string
		want string
	}{
		{"linux", nil, "/var/lib/oauthrelay"},
		{"linux", map[string]string{"STATE_DIRECTORY": "/var/lib/oauthrelay:/var/lib/other"}, "/var/lib/oauthrelay"},
		{"linux", map[string]string{"STATE_DIRECTORY": "/var/lib/private/oauthrelay"}, "/var/lib/private/oauthrelay"},
		{"windows", map[string]string{"ProgramData": `D:\ProgramData`}, `D:\ProgramData\oauthrelay`},
		{"windows", nil, `C:\ProgramData\oauthrelay`},
	} {
		if got := defaultStateDir(tc.goos, env(tc.env)); got != tc.want {
			t.Errorf("defaultStateDir(%s, %v) = %q, want %q", tc.goos, tc.env, got, tc.want)
		}
	}
}

func TestEnforceHeaderFrom(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{"", false},
		{"    enforce_header_from: true\n", true},
		{"    enforce_header_from: false\n", false},
	} {
		yaml := prov + "accounts:\n  - name: a\n    provider: p\n    mailbox: a@contoso.com\n    username: u\n    password_hash: \"" + hash + "\"\n" + tc.line
		c, err := Parse("t.yaml", []byte(yaml), env())
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		if got := c.Account("a").EnforceHeaderFrom; got != tc.want {
			t.Errorf("%q: EnforceHeaderFrom = %v, want %v", tc.line, got, tc.want)
		}
	}
	if _, err := Parse("t.yaml", []byte(prov+"accounts:\n  - {name: a, provider: p, mailbox: a@contoso.com, username: u, password_hash: \""+hash+"\", enforce_header_from: maybe}\n"), env()); err == nil {
		t.Error("enforce_header_from: maybe was accepted")
	}
}
