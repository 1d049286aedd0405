//go:build linux

package pkgtest

import (
	"os"
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// TestRPM reads the .rpm that `make pkgtest` builds with rpm itself (it is
// not installed: this is not an RPM system): the same files, owners and
// modes as the .deb, the configuration a %config(noreplace) file, the
// user made before the files are unpacked.
func TestRPM(t *testing.T) {
	pkg := os.Getenv("OAUTHRELAY_RPM")
	if pkg == "" {
		t.Skip("run by `make pkgtest`, which builds the .rpm")
	}
	rpm := testutil.Tool(t, "rpm")
	files := must(t, rpm, "-qp", "--qf", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]", pkg)
	for _, want := range []string{
		"-rwxr-xr-x root:root /usr/bin/oauthrelay",
		"-rw-r----- root:oauthrelay /etc/oauthrelay/config.yaml",
		"drwx------ oauthrelay:oauthrelay /var/lib/oauthrelay",
		"-rw-r--r-- root:root /usr/lib/systemd/system/oauthrelay.service",
		"-rw-r--r-- root:root /usr/lib/systemd/system/oauthrelay.service.d/package.conf",
		"-rw-r--r-- root:root /usr/share/man/man1/oauthrelay.1.gz",
		"-rw-r--r-- root:root /usr/share/oauthrelay/config.schema.json",
	} {
		if !strings.Contains(files, want+"\n") {
			t.Errorf("the rpm lacks %q:\n%s", want, files)
		}
	}
	if conf := must(t, rpm, "-qpc", pkg); strings.TrimSpace(conf) != "/etc/oauthrelay/config.yaml" {
		t.Errorf("config files %q", conf)
	}
	scripts := must(t, rpm, "-qp", "--scripts", pkg)
	pre, _, _ := strings.Cut(scripts, "postinstall scriptlet")
	if !strings.Contains(pre, "preinstall scriptlet") || !strings.Contains(pre, "useradd --system") {
		t.Errorf("no user made before the files are unpacked:\n%s", scripts)
	}
}
