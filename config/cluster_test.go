package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCluster checks the cluster key: left out it is off, set it needs an
// instance and a redis:// or rediss:// URL without a secret in it, and each
// problem names its file, line and key.
func TestCluster(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := errProv + errAcct
	c, err := Parse("c.yaml", []byte(base), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.Enabled() {
		t.Fatal("cluster is on without the key")
	}
	good := base + "cluster:\n  store: rediss://redis.example:6380/2\n  instance: relay-a\n  password_file: " + pw + "\n"
	c, err = Parse(filepath.Join(dir, "c.yaml"), []byte(good), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Cluster.Enabled() || c.Cluster.Password != "s3cret" || c.Cluster.Instance != "relay-a" {
		t.Fatalf("cluster = %+v", c.Cluster)
	}
	env := func(k string) (string, bool) { return "from-env", k == "REDIS_PW" }
	c, err = Parse("c.yaml", []byte(base+"cluster:\n  store: redis://127.0.0.1:6379\n  instance: b\n  password: ${REDIS_PW}\n"), env)
	if err != nil || c.Cluster.Password != "from-env" {
		t.Fatalf("password from ${ENV}: %v, %q", err, c.Cluster.Password)
	}
	lines := strings.Count(base, "\n")
	for _, tc := range []struct{ yaml, want string }{
		{"cluster:\n  store: http://x:1\n  instance: a\n", ":%d: cluster.store:"},
		{"cluster:\n  store: redis://u:pw@x:1\n  instance: a\n", ":%d: cluster.store:"},
		{"cluster:\n  store: redis://x:1/db\n  instance: a\n", ":%d: cluster.store:"},
		{"cluster:\n  store: redis://x:1\n", ":%d: cluster.instance:"},
		{"cluster:\n  instance: a\n", ":%d: cluster.instance: needs cluster.store"},
		{"cluster:\n  store: redis://x:1\n  instance: a b\n", ":%d: cluster.instance:"},
		{"cluster:\n  store: redis://x:1\n  instance: a\n  ca_file: " + pw + "\n", ":%d: cluster.ca_file:"},
		{"cluster:\n  store: redis://x:1\n  instance: a\n  password: x\n  password_file: " + pw + "\n", ":%d: cluster.password_file:"},
	} {
		_, err := Parse("c.yaml", []byte(base+tc.yaml), noEnv)
		if err == nil {
			t.Errorf("%q: no error", tc.yaml)
			continue
		}
		found := false
		for l := lines + 1; l <= lines+6; l++ {
			if strings.Contains(err.Error(), "c.yaml"+strings.Replace(tc.want, "%d", strconv.Itoa(l), 1)) {
				found = true
			}
		}
		if !found {
			t.Errorf("%q: %v, want %s", tc.yaml, err, tc.want)
		}
	}
}
