// Package distcheck checks the deployment files against each other and
// against the code they deploy: the systemd unit (and, where
// systemd-analyze exists, systemd's own verdict on it), the Dockerfile, the
// Docker Compose and Kubernetes examples, whose embedded oauthrelay
// configurations go through config.Parse so they never drift from the real
// schema, and docs/deploy.md's references to them.
//
// Out of scope: building the image (no Docker on the test machines) and
// applying the manifests to a cluster.
package distcheck

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// The contract every deployment file shares.
const (
	binaryPath  = "/usr/local/bin/oauthrelay"
	configPath  = "/etc/oauthrelay/config.yaml"
	stateDir    = "/var/lib/oauthrelay"
	nonrootUID  = 65532
	maxExposure = 2.0 // systemd-analyze security: "OK" and better
)

// serveArgs is the command line every deployment runs.
var serveArgs = []string{"serve", "-config", configPath}

// root is the repository root.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// --- systemd ---

// unit is a parsed unit file: section → key → the values in file order.
type unit map[string]map[string][]string

// parseUnit reads systemd's INI dialect: [Section], Key=Value, comments
// starting with # or ;, and lines continued with a trailing backslash.
func parseUnit(text string) (unit, error) {
	u := unit{}
	section := ""
	var pending string
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			pending += s + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is not Key=Value in a section", i+1, line)
		}
		key = strings.TrimSpace(key)
		u[section][key] = append(u[section][key], strings.TrimSpace(value))
	}
	return u, nil
}

// last is the effective value of a single-valued setting.
func (u unit) last(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

func TestSystemdUnit(t *testing.T) {
	text := readFile(t, "dist/systemd/oauthrelay.service")
	u, err := parseUnit(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ExecStart":              binaryPath + " " + strings.Join(serveArgs, " "),
		"ExecReload":             "/bin/kill -HUP $MAINPID",
		"Restart":                "on-failure",
		"DynamicUser":            "yes",
		"StateDirectory":         "oauthrelay",
		"ConfigurationDirectory": "oauthrelay",
		"UMask":                  "0077",
		"ProtectSystem":          "strict",
		"ProtectHome":            "yes",
		"PrivateTmp":             "yes",
		"PrivateDevices":         "yes",
		"NoNewPrivileges":        "yes",
		"CapabilityBoundingSet":  "",
		"ProtectKernelTunables":  "yes",
		"ProtectKernelModules":   "yes",
		"ProtectKernelLogs":      "yes",
		"ProtectControlGroups":   "yes",
		"LockPersonality":        "yes",
		"MemoryDenyWriteExecute": "yes",
		"RestrictNamespaces":     "yes",
		"RestrictRealtime":       "yes",
	}
	for key, value := range want {
		got, ok := u.last("Service", key)
		if !ok || got != value {
			t.Errorf("[Service] %s=%q (set: %v), want %q", key, got, ok, value)
		}
	}
	if got := u["Service"]["RestrictAddressFamilies"]; !sameSet(strings.Fields(strings.Join(got, " ")),
		[]string{"AF_INET", "AF_INET6", "AF_UNIX"}) {
		t.Errorf("RestrictAddressFamilies=%q, want AF_INET AF_INET6 AF_UNIX", got)
	}
	if got := u["Service"]["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
		t.Errorf("SystemCallFilter=%q, want @system-service first (allow list)", got)
	}
	for _, key := range []string{"User", "Group"} {
		if v, ok := u.last("Service", key); ok {
			t.Errorf("[Service] %s=%s: DynamicUser=yes picks the user", key, v)
		}
	}
	if v, _ := u.last("Install", "WantedBy"); v != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q, want multi-user.target", v)
	}
	// The secrets guide in the comments.
	for _, s := range []string{"LoadCredential=", "${CREDENTIALS_DIRECTORY}", "client_secret_file:"} {
		if !strings.Contains(text, s) {
			t.Errorf("the unit's comments do not mention %s", s)
		}
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// stagedUnit writes the unit to a temporary directory with ExecStart
// pointing at an executable there: systemd-analyze checks that the binary
// exists.
func stagedUnit(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "oauthrelay")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(readFile(t, "dist/systemd/oauthrelay.service"), binaryPath, bin)
	path := filepath.Join(dir, "oauthrelay.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	return bin
}

func TestSystemdAnalyzeVerify(t *testing.T) {
	bin := systemdAnalyze(t)
	path := stagedUnit(t)
	out, err := exec.Command(bin, "verify", "--man=no", path).CombinedOutput()
	// verify exits 0 for unknown keys and bad values (it only warns):
	// any line about our unit is a failure.
	var ours []string
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "oauthrelay") {
			ours = append(ours, strings.TrimSpace(line))
		}
	}
	switch {
	case len(ours) > 0:
		t.Errorf("systemd-analyze verify:\n%s", strings.Join(ours, "\n"))
	case err != nil:
		// Nothing about the unit: the machine cannot run verify (no
		// system units, a container without systemd's directories).
		t.Skipf("systemd-analyze verify cannot run here: %v\n%s", err, out)
	}
}

func TestSystemdAnalyzeSecurity(t *testing.T) {
	bin := systemdAnalyze(t)
	path := stagedUnit(t)
	out, err := exec.Command(bin, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Overall exposure level") {
		t.Skipf("systemd-analyze security --offline (systemd 250 and later) cannot run here: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	level, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security: exposure %.1f", level)
	if level > maxExposure {
		t.Errorf("exposure level %.1f, want at most %.1f:\n%s", level, maxExposure, out)
	}
}

// --- Dockerfile ---

type instruction struct {
	cmd   string   // upper case
	flags []string // --name=value before the arguments
	args  string
	line  int
}

type stage struct {
	base, name string
	instrs     []instruction
}

// parseDockerfile splits a Dockerfile into stages of instructions,
// joining continued lines and dropping comments (and parser directives).
func parseDockerfile(text string) ([]*stage, error) {
	var (
		stages []*stage
		cur    string
		start  int
	)
	lines := strings.Split(text, "\n")
	for i, raw := range lines {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "#") || (line == "" && cur == "") {
			continue
		}
		if cur == "" {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur += s + " "
			continue
		}
		cur += line
		in := instruction{line: start}
		cmd, rest, _ := strings.Cut(strings.TrimSpace(cur), " ")
		cur = ""
		in.cmd = strings.ToUpper(cmd)
		rest = strings.TrimSpace(rest)
		for strings.HasPrefix(rest, "--") {
			var flag string
			flag, rest, _ = strings.Cut(rest, " ")
			in.flags = append(in.flags, flag)
			rest = strings.TrimSpace(rest)
		}
		in.args = rest
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := &stage{base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			} else if len(f) != 1 {
				return nil, fmt.Errorf("line %d: FROM %s", start, in.args)
			}
			stages = append(stages, st)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				return nil, fmt.Errorf("line %d: %s before FROM", start, in.cmd)
			}
			continue
		}
		st := stages[len(stages)-1]
		st.instrs = append(st.instrs, in)
	}
	if cur != "" {
		return nil, errors.New("the last instruction is continued past the end of the file")
	}
	return stages, nil
}

func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (in instruction) flag(name string) (string, bool) {
	for _, f := range in.flags {
		if v, ok := strings.CutPrefix(f, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// execForm decodes the JSON (exec) form of CMD, ENTRYPOINT and VOLUME.
func (in instruction) execForm(t *testing.T) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.args), &v); err != nil {
		t.Errorf("line %d: %s %s: want the exec form [\"...\"]: %v", in.line, in.cmd, in.args, err)
	}
	return v
}

// isRootUser reports whether a USER value runs as root.
func isRootUser(v string) bool {
	user, _, _ := strings.Cut(strings.TrimSpace(v), ":")
	if user == "" || user == "root" {
		return true
	}
	n, err := strconv.Atoi(user)
	return err == nil && n == 0
}

func TestIsRootUser(t *testing.T) {
	for v, want := range map[string]bool{
		"root": true, "0": true, "0:0": true, "root:nonroot": true, "": true,
		"65532:65532": false, "nonroot": false, "nonroot:nonroot": false, "1000": false,
	} {
		if got := isRootUser(v); got != want {
			t.Errorf("isRootUser(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestDockerfile(t *testing.T) {
	stages, err := parseDockerfile(readFile(t, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a final stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	names := map[string]bool{}
	for _, s := range stages[:len(stages)-1] {
		names[s.name] = true
	}

	// The build stage.
	if !strings.HasPrefix(build.base, "golang:1.26-bookworm") {
		t.Errorf("build stage FROM %s, want golang:1.26-bookworm", build.base)
	}
	var goBuild string
	argVersion := false
	for _, in := range build.instrs {
		switch {
		case in.cmd == "ARG" && (in.args == "VERSION" || strings.HasPrefix(in.args, "VERSION=")):
			argVersion = true
		case in.cmd == "RUN" && strings.Contains(in.args, "go build"):
			goBuild = in.args
			if !argVersion {
				t.Errorf("line %d: go build before ARG VERSION (the ldflag would be empty)", in.line)
			}
		}
	}
	for _, s := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=${VERSION}", "./cmd/oauthrelay"} {
		if !strings.Contains(goBuild, s) {
			t.Errorf("the go build RUN lacks %s: %q", s, goBuild)
		}
	}
	// -X main.version needs the variable it stamps.
	if !regexp.MustCompile(`(?m)^var version = `).MatchString(readFile(t, "cmd/oauthrelay/main.go")) {
		t.Error("cmd/oauthrelay/main.go has no `var version`: -X main.version stamps nothing")
	}

	// The final stage.
	switch {
	case strings.HasPrefix(final.base, "gcr.io/distroless/static"):
		if !strings.HasSuffix(final.base, ":nonroot") {
			t.Errorf("final FROM %s: want the :nonroot variant", final.base)
		}
	case final.base == "scratch":
		certs := false
		for _, in := range final.all("COPY") {
			certs = certs || strings.Contains(in.args, "ca-certificates")
		}
		if !certs {
			t.Error("final stage FROM scratch without CA certificates: TLS to Microsoft 365 would fail")
		}
	default:
		t.Errorf("final FROM %s, want gcr.io/distroless/static-debian12:nonroot or scratch", final.base)
	}
	for _, in := range final.all("RUN") {
		t.Errorf("line %d: RUN in the final stage (it has no shell)", in.line)
	}
	users := final.all("USER")
	if len(users) == 0 {
		t.Error("final stage has no USER: the image would run as root")
	} else if u := users[len(users)-1]; isRootUser(u.args) {
		t.Errorf("line %d: final USER %s is root", u.line, u.args)
	} else if n, err := strconv.Atoi(strings.Split(u.args, ":")[0]); err == nil && n != nonrootUID {
		t.Logf("final USER %s (distroless nonroot is %d)", u.args, nonrootUID)
	}
	binary := false
	for _, in := range final.all("COPY") {
		from, ok := in.flag("from")
		if ok && !names[from] {
			t.Errorf("line %d: COPY --from=%s: no such stage", in.line, from)
		}
		f := strings.Fields(in.args)
		binary = binary || (ok && f[len(f)-1] == "/oauthrelay")
	}
	if !binary {
		t.Error("final stage does not COPY the binary to /oauthrelay from the build stage")
	}

	single := func(cmd string) instruction {
		all := final.all(cmd)
		if len(all) == 0 {
			t.Errorf("final stage has no %s", cmd)
			return instruction{cmd: cmd, args: "[]"}
		}
		return all[len(all)-1]
	}
	if got := single("ENTRYPOINT").execForm(t); !slices.Equal(got, []string{"/oauthrelay"}) {
		t.Errorf("ENTRYPOINT %q, want [\"/oauthrelay\"]", got)
	}
	if got := single("CMD").execForm(t); !slices.Equal(got, serveArgs) {
		t.Errorf("CMD %q, want %q", got, serveArgs)
	}
	if got := single("VOLUME").execForm(t); !slices.Contains(got, stateDir) {
		t.Errorf("VOLUME %q, want %s", got, stateDir)
	}
	var exposed []string
	for _, in := range final.all("EXPOSE") {
		exposed = append(exposed, strings.Fields(in.args)...)
	}
	// The default listener ports, from the config package itself.
	for _, port := range defaultPorts(t) {
		if !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
			t.Errorf("EXPOSE %q lacks the default port %s", exposed, port)
		}
	}
}

// defaultPorts are the ports of the default SMTP, IMAP, POP3 and admin
// listeners, as config.Parse fills them in.
func defaultPorts(t *testing.T) []string {
	t.Helper()
	const minimal = `
providers:
  p: {type: microsoft, tenant: t.example, client_id: c, client_secret: s}
accounts:
  - {name: a, provider: p, mailbox: a@example.com, relay_from: ["10.0.0.0/8"]}
`
	cfg, err := config.Parse(filepath.Join(t.TempDir(), "config.yaml"), []byte(minimal), noEnv(t))
	if err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	var ports []string
	for _, addr := range []string{cfg.Listen.SMTP.Addr, cfg.Listen.IMAP.Addr, cfg.Listen.POP3.Addr, cfg.Listen.Admin.Addr} {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, port)
	}
	return ports
}

// --- oauthrelay configurations embedded in the examples ---

// exampleEnv holds the environment variables the example configurations
// may reference as ${NAME}. Parsing fails on any other: add it here when
// an example starts using one.
var exampleEnv = map[string]string{}

func noEnv(t *testing.T) func(string) (string, bool) {
	return func(name string) (string, bool) {
		if name == "STATE_DIRECTORY" {
			return "", false
		}
		v, ok := exampleEnv[name]
		if !ok {
			t.Logf("config references $%s, which the test does not provide", name)
		}
		return v, ok
	}
}

// parseExampleConfig runs an example's configuration through config.Parse
// as the relay would at configPath. Files the configuration reads from
// secretsDir (where the deployment mounts its secrets) are provided from
// secrets (file name → content) under a temporary directory.
func parseExampleConfig(t *testing.T, name, data, secretsDir string, secrets map[string]string) *config.Config {
	t.Helper()
	tmp := t.TempDir()
	fake := filepath.Join(tmp, filepath.FromSlash(secretsDir))
	if err := os.MkdirAll(fake, 0o700); err != nil {
		t.Fatal(err)
	}
	for file, content := range secrets {
		if err := os.WriteFile(filepath.Join(fake, file), []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	data = strings.ReplaceAll(data, secretsDir+"/", filepath.ToSlash(fake)+"/")
	cfg, err := config.Parse(filepath.Join(tmp, filepath.FromSlash(configPath)), []byte(data), noEnv(t))
	if err != nil {
		t.Fatalf("%s does not load:\n%v", name, err)
	}
	// Back to the deployment's paths, for the checks that follow.
	for _, p := range cfg.Providers {
		for _, f := range []*string{&p.ClientSecretFile, &p.ClientCertificateFile, &p.ClientKeyFile, &p.CAFile} {
			if rel, ok := strings.CutPrefix(filepath.ToSlash(*f), filepath.ToSlash(fake)+"/"); ok {
				*f = secretsDir + "/" + rel
			}
		}
	}
	return cfg
}

// checkSidecarConfig checks what a sidecar needs: loopback SMTP, IMAP and
// POP3 listeners (the application shares the network namespace) and the
// deployment's state directory.
func checkSidecarConfig(t *testing.T, name string, cfg *config.Config, stateMount string) {
	t.Helper()
	for proto, l := range map[string]config.Listener{"smtp": cfg.Listen.SMTP, "imap": cfg.Listen.IMAP, "pop3": cfg.Listen.POP3} {
		if l.Addr == config.AddrOff {
			continue
		}
		host, _, err := net.SplitHostPort(l.Addr)
		if err != nil || !config.IsLoopbackHost(host) || l.AllowInsecure {
			t.Errorf("%s: listen.%s %q (allow_insecure %v): a sidecar listens on loopback only",
				name, proto, l.Addr, l.AllowInsecure)
		}
	}
	if cfg.StateDir != stateMount {
		t.Errorf("%s: state_dir %q, but the volume is mounted at %q", name, cfg.StateDir, stateMount)
	}
	if len(cfg.Accounts) == 0 {
		t.Errorf("%s: no accounts", name)
	}
}

// --- Docker Compose ---

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
}

type composeService struct {
	Build struct {
		Context string `yaml:"context"`
	} `yaml:"build"`
	Image       string      `yaml:"image"`
	Command     []string    `yaml:"command"`
	Volumes     []string    `yaml:"volumes"`
	Secrets     []yaml.Node `yaml:"secrets"`
	NetworkMode string      `yaml:"network_mode"`
	ReadOnly    bool        `yaml:"read_only"`
	CapDrop     []string    `yaml:"cap_drop"`
	Ports       []string    `yaml:"ports"`
}

// secretTargets maps each secret of s to where Compose mounts it.
func (s composeService) secretTargets(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range s.Secrets {
		var src, target string
		switch n.Kind {
		case yaml.ScalarNode:
			src = n.Value
		case yaml.MappingNode:
			var long struct{ Source, Target string }
			if err := n.Decode(&long); err != nil {
				t.Fatal(err)
			}
			src, target = long.Source, long.Target
		}
		switch {
		case target == "":
			target = "/run/secrets/" + src
		case !strings.HasPrefix(target, "/"):
			target = "/run/secrets/" + target
		}
		out[src] = target
	}
	return out
}

func TestCompose(t *testing.T) {
	dir := "examples/docker-compose"
	var c composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, dir+"/compose.yaml")), &c); err != nil {
		t.Fatal(err)
	}
	relay, ok := c.Services["oauthrelay"]
	if !ok {
		t.Fatal("no service oauthrelay")
	}
	if ctx := relay.Build.Context; ctx != "" {
		if _, err := os.Stat(filepath.Join(root(t), dir, ctx, "Dockerfile")); err != nil {
			t.Errorf("build context %s: %v", ctx, err)
		}
	}
	if len(relay.Command) > 0 && !slices.Equal(relay.Command, serveArgs) {
		t.Errorf("oauthrelay command %q, want %q", relay.Command, serveArgs)
	}
	if !relay.ReadOnly || !slices.Contains(relay.CapDrop, "ALL") {
		t.Errorf("oauthrelay: read_only %v, cap_drop %q: want true and ALL", relay.ReadOnly, relay.CapDrop)
	}
	mounts := map[string]string{} // container path → source
	for _, v := range relay.Volumes {
		f := strings.Split(v, ":")
		if len(f) < 2 {
			t.Errorf("volume %q: want SOURCE:TARGET", v)
			continue
		}
		mounts[f[1]] = f[0]
	}
	cfgSource, ok := mounts[configPath]
	if !ok {
		t.Fatalf("no volume mounted at %s", configPath)
	}
	if _, ok := c.Volumes[mounts[stateDir]]; !ok {
		t.Errorf("%s is not on a named volume (%q): tokens would not survive the container", stateDir, mounts[stateDir])
	}

	sidecar := false
	for name, s := range c.Services {
		if name == "oauthrelay" {
			continue
		}
		if s.NetworkMode == "service:oauthrelay" {
			sidecar = true
		}
		if len(s.Ports) > 0 && s.NetworkMode != "" {
			t.Errorf("service %s publishes ports but has network_mode %s: publish them on oauthrelay", name, s.NetworkMode)
		}
	}
	if !sidecar {
		t.Error(`no application service with network_mode: "service:oauthrelay"`)
	}

	targets := relay.secretTargets(t)
	secrets := map[string]string{} // file name under /run/secrets → content
	for src, target := range targets {
		if c.Secrets[src].File == "" {
			t.Errorf("secret %s is not declared at the top level with file:", src)
		}
		if rel, ok := strings.CutPrefix(target, "/run/secrets/"); ok {
			secrets[rel] = "secret-" + src
		}
	}
	text := readFile(t, filepath.ToSlash(filepath.Join(dir, cfgSource)))
	cfg := parseExampleConfig(t, "compose config", text, "/run/secrets", secrets)
	checkSidecarConfig(t, "compose config", cfg, stateDir)
	checkSecretFiles(t, cfg, targets)
}

// checkSecretFiles checks that every *_file of the providers is a mounted
// secret and that the secret's content arrived.
func checkSecretFiles(t *testing.T, cfg *config.Config, mounted map[string]string) {
	t.Helper()
	targets := map[string]string{}
	for src, target := range mounted {
		targets[target] = src
	}
	for name, p := range cfg.Providers {
		if p.ClientSecretFile == "" {
			continue
		}
		src, ok := targets[p.ClientSecretFile]
		if !ok {
			t.Errorf("providers.%s.client_secret_file %s is none of the mounted secrets %v", name, p.ClientSecretFile, mounted)
			continue
		}
		if p.ClientSecret != "secret-"+src {
			t.Errorf("providers.%s: client secret %q, want the content of secret %s", name, p.ClientSecret, src)
		}
	}
}

// --- Kubernetes ---

type k8sMeta struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
}

type k8sSecret struct {
	k8sMeta    `yaml:",inline"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

func (s k8sSecret) has(key string) bool {
	_, a := s.Data[key]
	_, b := s.StringData[key]
	return a || b
}

type k8sConfigMap struct {
	k8sMeta `yaml:",inline"`
	Data    map[string]string `yaml:"data"`
}

type k8sDeployment struct {
	k8sMeta `yaml:",inline"`
	Spec    struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec k8sPodSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sPodSpec struct {
	HostNetwork     bool           `yaml:"hostNetwork"`
	InitContainers  []k8sContainer `yaml:"initContainers"`
	Containers      []k8sContainer `yaml:"containers"`
	SecurityContext struct {
		RunAsUser *int64 `yaml:"runAsUser"`
		FSGroup   *int64 `yaml:"fsGroup"`
	} `yaml:"securityContext"`
	Volumes []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
		Secret *struct {
			SecretName string `yaml:"secretName"`
			Items      []struct {
				Key  string `yaml:"key"`
				Path string `yaml:"path"`
			} `yaml:"items"`
		} `yaml:"secret"`
		EmptyDir              *struct{} `yaml:"emptyDir"`
		PersistentVolumeClaim *struct{} `yaml:"persistentVolumeClaim"`
	} `yaml:"volumes"`
}

type k8sContainer struct {
	Name          string   `yaml:"name"`
	Image         string   `yaml:"image"`
	RestartPolicy string   `yaml:"restartPolicy"`
	Command       []string `yaml:"command"`
	Args          []string `yaml:"args"`
	Env           []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe   *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe  *k8sProbe `yaml:"readinessProbe"`
	SecurityContext *struct {
		RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
		RunAsUser                *int64 `yaml:"runAsUser"`
		ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string    `yaml:"path"`
		Port yaml.Node `yaml:"port"` // a number or a port name
	} `yaml:"httpGet"`
}

// probe returns the path and port number of an httpGet probe.
func (c k8sContainer) probe(t *testing.T, kind string, p *k8sProbe) (string, int) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("container %s: no httpGet %s", c.Name, kind)
		return "", 0
	}
	if n, err := strconv.Atoi(p.HTTPGet.Port.Value); err == nil {
		return p.HTTPGet.Path, n
	}
	for _, port := range c.Ports {
		if port.Name == p.HTTPGet.Port.Value {
			return p.HTTPGet.Path, port.ContainerPort
		}
	}
	t.Errorf("container %s: %s port %q is not a port of the container", c.Name, kind, p.HTTPGet.Port.Value)
	return p.HTTPGet.Path, 0
}

func decodeK8s(t *testing.T, rel, kind string, v any) {
	t.Helper()
	text := readFile(t, rel)
	if err := yaml.Unmarshal([]byte(text), v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	var m k8sMeta
	yaml.Unmarshal([]byte(text), &m)
	if m.Kind != kind || m.APIVersion == "" || m.Metadata.Name == "" {
		t.Fatalf("%s: kind %q apiVersion %q name %q, want a named %s", rel, m.Kind, m.APIVersion, m.Metadata.Name, kind)
	}
}

func TestKubernetes(t *testing.T) {
	const dir = "examples/kubernetes"
	var (
		dep    k8sDeployment
		secret k8sSecret
		cm     k8sConfigMap
	)
	decodeK8s(t, dir+"/pod.yaml", "Deployment", &dep)
	decodeK8s(t, dir+"/secret.yaml", "Secret", &secret)
	decodeK8s(t, dir+"/configmap.yaml", "ConfigMap", &cm)
	if dep.APIVersion != "apps/v1" {
		t.Errorf("Deployment apiVersion %s, want apps/v1", dep.APIVersion)
	}
	for k, v := range dep.Spec.Selector.MatchLabels {
		if dep.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels", k, v)
		}
	}
	pod := dep.Spec.Template.Spec
	if pod.HostNetwork {
		t.Error("hostNetwork: the relay's loopback listeners would be the node's")
	}

	// The relay: a native sidecar (restartable init container) or a
	// regular container; the application: another regular container.
	var relay *k8sContainer
	for i, c := range pod.InitContainers {
		if c.Name == "oauthrelay" {
			relay = &pod.InitContainers[i]
			if c.RestartPolicy != "Always" {
				t.Errorf("init container oauthrelay without restartPolicy: Always would block the pod")
			}
		}
	}
	apps := 0
	for i, c := range pod.Containers {
		if c.Name == "oauthrelay" {
			relay = &pod.Containers[i]
		} else {
			apps++
		}
	}
	if relay == nil {
		t.Fatal("no container oauthrelay")
	}
	if apps == 0 {
		t.Error("no application container next to the relay")
	}
	if got := append(slices.Clone(relay.Command), relay.Args...); !slices.Equal(got, serveArgs) {
		t.Errorf("oauthrelay command+args %q, want %q", got, serveArgs)
	}

	sc := relay.SecurityContext
	switch {
	case sc == nil:
		t.Error("oauthrelay: no securityContext")
	default:
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Error("oauthrelay: runAsNonRoot is not true")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			t.Error("oauthrelay: runAsUser 0")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("oauthrelay: readOnlyRootFilesystem is not true")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("oauthrelay: allowPrivilegeEscalation is not false")
		}
		if !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("oauthrelay: capabilities.drop %q, want ALL", sc.Capabilities.Drop)
		}
	}

	// Volumes: the config from the ConfigMap, the secrets from the
	// Secret, the state directory.
	volumes := map[string]int{}
	for i, v := range pod.Volumes {
		volumes[v.Name] = i
	}
	mounts := map[string]string{} // mount path → volume name
	for _, m := range relay.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("volumeMount %s: no volume %s", m.MountPath, m.Name)
			continue
		}
		mounts[m.MountPath] = m.Name
	}
	cfgDir := filepath.ToSlash(filepath.Dir(configPath))
	cfgVol, ok := mounts[cfgDir]
	if !ok {
		t.Fatalf("nothing mounted at %s", cfgDir)
	}
	if v := pod.Volumes[volumes[cfgVol]]; v.ConfigMap == nil || v.ConfigMap.Name != cm.Metadata.Name {
		t.Errorf("%s is not the ConfigMap %s", cfgDir, cm.Metadata.Name)
	}
	cfgText, ok := cm.Data[filepath.Base(configPath)]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", cm.Metadata.Name, filepath.Base(configPath))
	}
	stateVol, ok := mounts[stateDir]
	if !ok {
		t.Errorf("nothing mounted at %s", stateDir)
	} else if v := pod.Volumes[volumes[stateVol]]; v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
		t.Errorf("%s: want an emptyDir or a persistentVolumeClaim", stateDir)
	}
	if pod.SecurityContext.FSGroup == nil {
		t.Error("no pod fsGroup: the relay's user may not be able to write the state volume")
	}
	secretFiles := map[string]string{} // mounted path → Secret key
	for path, name := range mounts {
		v := pod.Volumes[volumes[name]]
		if v.Secret == nil {
			continue
		}
		if v.Secret.SecretName != secret.Metadata.Name {
			t.Errorf("volume %s: Secret %s, but secret.yaml is %s", name, v.Secret.SecretName, secret.Metadata.Name)
		}
		for _, it := range v.Secret.Items {
			if !secret.has(it.Key) {
				t.Errorf("volume %s: the Secret has no key %s", name, it.Key)
			}
			secretFiles[path+"/"+it.Path] = it.Key
		}
	}
	if len(secretFiles) == 0 {
		t.Error("no Secret files mounted (with items) for client_secret_file")
	}

	// OAUTHRELAY_KEY from the Secret, and the example value is no key.
	keyFromSecret := false
	for _, e := range relay.Env {
		if e.Name == tokenstore.KeyEnv {
			if e.Value != "" {
				t.Errorf("%s has a literal value: use secretKeyRef", tokenstore.KeyEnv)
			}
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				ref := e.ValueFrom.SecretKeyRef
				keyFromSecret = ref.Name == secret.Metadata.Name && secret.has(ref.Key)
				if v := secret.StringData[ref.Key]; v != "" {
					getenv := func(string) (string, bool) { return v, true }
					if _, err := tokenstore.LoadKey(t.TempDir(), tokenstore.KeyOptions{Getenv: getenv}); err == nil {
						t.Errorf("secret.yaml's %s is a usable key: ship a placeholder, or every copy of the example shares it", ref.Key)
					}
				}
			}
		}
	}
	if !keyFromSecret {
		t.Errorf("%s does not come from a key of the Secret %s", tokenstore.KeyEnv, secret.Metadata.Name)
	}

	// The embedded configuration, loaded as the relay would.
	const secretsDir = "/run/secrets/oauthrelay"
	contents := map[string]string{}
	targets := map[string]string{} // key → mounted path
	for path, key := range secretFiles {
		if rel, ok := strings.CutPrefix(path, secretsDir+"/"); ok {
			contents[rel] = "secret-" + key
			targets[key] = path
		}
	}
	cfg := parseExampleConfig(t, "configmap config.yaml", cfgText, secretsDir, contents)
	checkSidecarConfig(t, "configmap config.yaml", cfg, stateDir)
	checkSecretFiles(t, cfg, targets)

	// The probes reach the admin listener from outside the pod.
	_, adminPort, err := net.SplitHostPort(cfg.Listen.Admin.Addr)
	if cfg.Listen.Admin.Addr == config.AddrOff || err != nil {
		t.Fatalf("listen.admin.addr %q: the probes need the admin listener", cfg.Listen.Admin.Addr)
	}
	if host, _, _ := net.SplitHostPort(cfg.Listen.Admin.Addr); config.IsLoopbackHost(host) {
		t.Errorf("listen.admin.addr %q: the kubelet probes the pod IP, not the pod's loopback", cfg.Listen.Admin.Addr)
	}
	for _, p := range []struct {
		kind, want string
		probe      *k8sProbe
	}{{"livenessProbe", "/healthz", relay.LivenessProbe}, {"readinessProbe", "/readyz", relay.ReadinessProbe}} {
		path, port := relay.probe(t, p.kind, p.probe)
		if path != p.want || strconv.Itoa(port) != adminPort {
			t.Errorf("%s %s on port %d, want %s on the admin port %s", p.kind, path, port, p.want, adminPort)
		}
	}
}

// --- docs ---

// TestDeployDocPaths checks that the repository files docs/deploy.md
// names exist.
func TestDeployDocPaths(t *testing.T) {
	text := readFile(t, "docs/deploy.md")
	re := regexp.MustCompile("(?:^|[\\s`(])((?:dist|examples|cmd|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_])")
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		for _, m := range re.FindAllStringSubmatch(sc.Text(), -1) {
			seen++
			if _, err := os.Stat(filepath.Join(root(t), filepath.FromSlash(m[1]))); err != nil {
				t.Errorf("docs/deploy.md:%d: %s: %v", n, m[1], err)
			}
		}
	}
	if seen == 0 {
		t.Error("docs/deploy.md names none of the deployment files")
	}
}

// --- Windows ---

// TestWindowsBuild type-checks and vets the binary for Windows, where the
// service code lives behind a build tag that the Linux test run never
// compiles.
func TestWindowsBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	cmd := exec.Command(gobin, "vet", "./cmd/oauthrelay")
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("GOOS=windows go vet ./cmd/oauthrelay: %v\n%s", err, out)
	}
}
