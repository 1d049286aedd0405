package distcheck

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection holds the one rule of the layout
// (docs/architecture.md): the front ends (proxy, proxy/smtp, proxy/imap)
// depend on internal/, never the reverse, and nothing imports cmd.
func TestDependencyDirection(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	const mod = "github.com/oauthrelay/oauthrelay/"
	for _, tc := range []struct{ pkgs, forbidden string }{
		{"../../internal/...", mod + "proxy"},
		{"../../internal/...", mod + "cmd"},
		{"../../proxy/...", mod + "cmd"},
		{"../../config/...", mod + "proxy"},
		{"../../config/...", mod + "internal"},
	} {
		out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", tc.pkgs).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", tc.pkgs, err)
		}
		for _, p := range strings.Fields(string(out)) {
			if p == tc.forbidden || strings.HasPrefix(p, tc.forbidden+"/") {
				t.Errorf("%s depends on %s", tc.pkgs, p)
			}
		}
	}
}
