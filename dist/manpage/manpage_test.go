package main

import (
	"os"
	"strings"
	"testing"
)

// TestREADME: the man page made from the repository's README has one
// entry per row of its Commands table, with Markdown turned into roff
// (code in bold, escaped pipes and hyphens), and no Markdown left over.
func TestREADME(t *testing.T) {
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := commandRows(f)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := write(&b, "1.2.3", rows); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	if got := strings.Count(page, ".TP\n.B oauthrelay "); got != len(rows) || len(rows) < 10 {
		t.Errorf("%d command entries for %d rows", got, len(rows))
	}
	for _, want := range []string{`.B oauthrelay serve \-config FILE`, `.B oauthrelay hash\-password`, `\fBdelivery: queue\fR`,
		`list|show|retry|delete|export`, `"oauthrelay 1.2.3"`,
		`For check: 0 every step passed (warnings allowed), 1 a step failed, 2 a usage or configuration error.`,
		`exit 0 all passed (warnings allowed), 1 a step failed, 2 usage or configuration error`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "`") || strings.Contains(page, "**") || strings.Contains(page, `\|`) {
		t.Error("Markdown left in the page")
	}
}

func TestSplitRow(t *testing.T) {
	got := splitRow("| `queue list\\|show` | a \\| b |")
	if len(got) != 2 || got[0] != "`queue list|show`" || got[1] != "a | b" {
		t.Errorf("splitRow: %q", got)
	}
}
