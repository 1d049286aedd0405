package config

import (
	"net/url"
	"regexp"
	"strings"
)

// Cluster shares one set of mailbox limits and token state among several
// relay instances through a Redis (or Valkey) server. Without it (Store
// empty) the relay keeps everything in its own process and state_dir, as on
// one machine, and needs no server.
type Cluster struct {
	// Store is the server: redis://host:port[/db] or rediss://host:port[/db]
	// (TLS, verified against the system roots and CAFile). A password in
	// the URL is refused: use Password or PasswordFile.
	Store string `yaml:"store"`
	// Instance names this relay among the others (its spool is its own):
	// letters, digits, '.', '_' and '-'. Required with Store.
	Instance string `yaml:"instance"`
	// Username is the Redis ACL user (default: none, the "default" user).
	Username string `yaml:"username"`
	// Password (or PasswordFile, not both) is the server's password;
	// ${ENV} works here as everywhere.
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// CAFile (PEM) is trusted besides the system roots for rediss://.
	CAFile string `yaml:"ca_file"`
}

// Enabled reports whether the relay shares its limits through a store.
func (c Cluster) Enabled() bool { return c.Store != "" }

// instanceName is what Cluster.Instance may be: it becomes part of keys
// in the store and of log lines.
var instanceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func validateCluster(r *report, c *Cluster) {
	if !c.Enabled() {
		for _, kv := range [][2]string{{"instance", c.Instance}, {"username", c.Username}, {"password", c.Password},
			{"password_file", c.PasswordFile}, {"ca_file", c.CAFile}} {
			if kv[1] != "" {
				r.add("cluster."+kv[0], "needs cluster.store")
			}
		}
		return
	}
	u, err := url.Parse(c.Store)
	switch {
	case err != nil:
		r.add("cluster.store", "not a URL: %w", err)
	case u.Scheme != "redis" && u.Scheme != "rediss":
		r.add("cluster.store", "%q: the scheme must be redis:// or rediss:// (TLS)", u.Scheme)
	case u.Host == "":
		r.add("cluster.store", "no host:port in %q", c.Store)
	case u.User != nil:
		r.add("cluster.store", "a user or password in the URL would be logged: use cluster.username and cluster.password_file")
	case strings.Trim(u.Path, "/") != "" && !isDigits(strings.Trim(u.Path, "/")):
		r.add("cluster.store", "the path must be a database number, not %q", u.Path)
	}
	if c.Instance == "" {
		r.add("cluster.instance", "required with cluster.store: a name for this relay among the others")
	} else if !instanceName.MatchString(c.Instance) {
		r.add("cluster.instance", "%q: letters, digits, '.', '_' and '-' only (at most 63)", c.Instance)
	}
	if c.CAFile != "" {
		if err == nil && u.Scheme != "rediss" {
			r.add("cluster.ca_file", "only with rediss:// (TLS)")
		}
		if err := checkCAFile(c.CAFile); err != nil {
			r.add("cluster.ca_file", "%w", err)
		}
	}
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}
