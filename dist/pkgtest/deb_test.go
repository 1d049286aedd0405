//go:build linux

// Package pkgtest installs the .deb that `make dist` builds on this
// machine, checks it and purges it. It changes the system (a package, a
// system user), so it runs only when `make pkgtest` (part of `make test` as
// root on Debian) names the package in OAUTHRELAY_DEB.
package pkgtest

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The fake's identities the installed binary checks against.
const (
	appID     = "11111111-aaaa-bbbb-cccc-000000000001"
	appSecret = "pkg-Secret~Value.42"
	mailbox   = "invoices@contoso.com"
	// commandTimeout bounds each dpkg or oauthrelay run.
	commandTimeout = 2 * time.Minute
)

// What the package installs, each gone after the purge (the user stays, as
// Debian's practice for system users is).
var installed = []string{
	"/usr/bin/oauthrelay",
	"/usr/lib/systemd/system/oauthrelay.service",
	"/usr/lib/systemd/system/oauthrelay.service.d/package.conf",
	"/etc/oauthrelay/config.yaml",
	"/var/lib/oauthrelay",
	"/usr/share/man/man1/oauthrelay.1.gz",
	"/usr/share/oauthrelay/config.schema.json",
	"/usr/share/doc/oauthrelay/README.md",
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func must(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func TestDeb(t *testing.T) {
	deb := os.Getenv("OAUTHRELAY_DEB")
	if deb == "" {
		t.Skip("run by `make pkgtest` (root on Debian): it installs the .deb on this machine")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (dpkg -i)")
	}
	if _, err := run(t, "dpkg", "-s", "oauthrelay"); err == nil {
		t.Fatal("oauthrelay is already installed on this machine: the test would purge it; remove it first")
	}
	_, userErr := user.Lookup("oauthrelay")
	hadUser := userErr == nil
	t.Cleanup(func() {
		// Whatever failed, leave the machine as it was.
		if _, err := run(t, "dpkg", "-s", "oauthrelay"); err == nil {
			run(t, "dpkg", "--purge", "oauthrelay")
		}
		if !hadUser {
			run(t, "userdel", "oauthrelay")
			run(t, "groupdel", "oauthrelay")
		}
	})

	start := time.Now()
	t.Log(must(t, "dpkg", "-i", deb))
	t.Logf("dpkg -i took %v", time.Since(start).Round(time.Millisecond))

	u, err := user.Lookup("oauthrelay")
	if err != nil {
		t.Fatalf("no system user after install: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid >= 1000 {
		t.Errorf("user oauthrelay has uid %d: not a system user", uid)
	}
	wantOwner(t, "/etc/oauthrelay/config.yaml", 0o640, 0, gid)
	wantOwner(t, "/var/lib/oauthrelay", os.ModeDir|0o700, uid, gid)
	wantOwner(t, "/usr/bin/oauthrelay", 0o755, 0, 0)
	for _, f := range installed {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if first := strings.SplitN(must(t, "head", "-n1", "/etc/oauthrelay/config.yaml"), "\n", 2)[0]; first !=
		"# yaml-language-server: $schema=/usr/share/oauthrelay/config.schema.json" {
		t.Errorf("the installed config's first line %q does not point at the installed schema", first)
	}
	if conf := must(t, "dpkg-query", "-W", "-f=${Conffiles}", "oauthrelay"); !strings.Contains(conf, "/etc/oauthrelay/config.yaml") {
		t.Errorf("/etc/oauthrelay/config.yaml is not a conffile: %q", conf)
	}

	if out := must(t, "/usr/bin/oauthrelay", "version"); !strings.HasPrefix(out, "oauthrelay ") {
		t.Errorf("oauthrelay version: %q", out)
	}
	help := must(t, "/usr/bin/oauthrelay", "--help")
	man := strings.ReplaceAll(must(t, "sh", "-c", "gzip -dc /usr/share/man/man1/oauthrelay.1.gz"), `\-`, "-")
	for _, c := range []string{"serve", "check", "login", "hash-password", "version"} {
		if !strings.Contains(help, "oauthrelay "+c) || !strings.Contains(man, "oauthrelay "+c) {
			t.Errorf("%s is missing from --help or the man page", c)
		}
	}
	if out, err := run(t, "systemd-analyze", "verify", "--man=no", "/usr/lib/systemd/system/oauthrelay.service"); err != nil &&
		!strings.Contains(out, "not found") {
		t.Logf("systemd-analyze verify: %v\n%s", err, out)
	}

	checkAgainstFake(t, uid, gid)

	// Remove cleanly: nothing of the package is left.
	t.Log(must(t, "dpkg", "--purge", "oauthrelay"))
	for _, f := range append(installed, "/etc/oauthrelay", "/usr/lib/systemd/system/oauthrelay.service.d",
		"/usr/share/oauthrelay", "/usr/share/doc/oauthrelay") {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("left after dpkg --purge: %s", f)
		}
	}
	t.Logf("install, checks and purge took %v", time.Since(start).Round(time.Millisecond))
}

// checkAgainstFake writes a configuration for a fake Microsoft 365 over
// the conffile with the installed `oauthrelay init` and runs the installed
// binary's `check` as the service's user: it must read the config through
// its group, the secret as its owner, and log in over SMTP and IMAP.
func checkAgainstFake(t *testing.T, uid, gid int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ms, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	ms.AddApp(fakems.App{ClientID: appID, Secret: appSecret})
	ms.AddMailbox(mailbox, "unused")
	ms.GrantApp(appID, mailbox)

	// The fake's CA where the service's user can read it; removed before
	// the purge, which must find only the package's files and init's.
	ca := "/etc/oauthrelay/test-ca.pem"
	pem, err := os.ReadFile(ms.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(ca)
	// The configuration as an administrator makes it: `oauthrelay init` as
	// root, which gives the secret file to the service's user and the
	// config to its group.
	const conf = "/etc/oauthrelay/config.yaml"
	ctx, cancel2 := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel2()
	cmd := exec.CommandContext(ctx, "/usr/bin/oauthrelay", "init", "-config", conf, "-force", "-no-login",
		"-cloud", "global", "-tenant", ms.Tenant, "-client-id", appID, "-app-name", "pkgtest",
		"-grant", "client_credentials", "-credential", "secret", "-mailbox", mailbox, "-username", "erp",
		"-send-as", "-", "-delivery", "direct", "-upstream", "smtp",
		"-token-url", ms.TokenURL, "-smtp", ms.SMTPAddr, "-imap", ms.IMAPAddr, "-pop3", ms.POP3Addr, "-ca-file", ca)
	cmd.Stdin = strings.NewReader(appSecret + "\nerp-local-password\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("oauthrelay init: %v\n%s", err, out)
	}
	wantOwner(t, conf, 0o640, 0, gid)
	wantOwner(t, "/etc/oauthrelay/m365-client-secret", 0o600, uid, gid)
	out, err := run(t, "runuser", "-u", "oauthrelay", "--", "/usr/bin/oauthrelay", "check", "-config", conf)
	if err != nil || !strings.Contains(out, "All checks passed") {
		t.Fatalf("oauthrelay check as user oauthrelay: %v\n%s", err, out)
	}
	t.Logf("oauthrelay check:\n%s", out)
}

func wantOwner(t *testing.T, path string, mode os.FileMode, uid, gid int) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&(os.ModeDir|os.ModePerm) != mode || int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", path, fi.Mode(), st.Uid, st.Gid, mode, uid, gid)
	}
}
