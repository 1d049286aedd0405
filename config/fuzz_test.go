package config

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse feeds the loader any bytes, as an editor or a template can
// produce them: it must never panic, and every problem it reports names
// the file (then, where it has one, the line) and a key, the shape users'
// tooling reads. The seeds are the shipped example and the fixtures'
// shapes.
func FuzzParse(f *testing.F) {
	if example, err := os.ReadFile("../config.example.yaml"); err == nil {
		f.Add(example)
	}
	f.Add([]byte(errProv + errAcct))
	f.Add([]byte(errProv + errAcct + "listen: {smtp: {addr: \"127.0.0.1:2525\", tls: starttls}}\nlimits: {max_wait: 3d}\n"))
	f.Add([]byte("accounts:\n  - {name: a, mailbox: \"*@contoso.com\", mailboxes: [x@contoso.com]}\nstate_dir: ${HOME}\n"))
	f.Add([]byte("a: [\n"))
	f.Add([]byte("\x00\xff: \t\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("c.yaml", data, noEnv)
		if err == nil {
			if cfg == nil || len(cfg.Accounts) == 0 {
				t.Fatalf("no error and no accounts: %+v", cfg)
			}
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(line, "c.yaml:") && !strings.HasPrefix(line, "c.yaml ") {
				t.Fatalf("a problem without the file's name: %q", line)
			}
		}
	})
}
