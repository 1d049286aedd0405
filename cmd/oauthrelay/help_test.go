package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestHelp: asking for help prints the usage on stdout and succeeds (the
// man page of the packages and the README say the same).
func TestHelp(t *testing.T) {
	for _, arg := range []string{"help", "-h", "-help", "--help"} {
		r := runCmd(t, nil, arg)
		if r.code != 0 || !strings.Contains(r.stdout, "usage: oauthrelay COMMAND") || r.stderr != "" {
			t.Errorf("%s: want exit 0 and the usage on stdout: %v", arg, r)
		}
		for _, c := range commands() {
			if !strings.Contains(r.stdout, "oauthrelay "+c.name) {
				t.Errorf("%s: usage lacks %s", arg, c.name)
			}
		}
	}
}

// TestREADMECommands keeps README.md's Commands table, from which
// dist/manpage writes the packages' man page, equal to the binary's
// commands: every command has a row and every row is a command, in order.
func TestREADMECommands(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "\n## Commands\n")
	if !ok {
		t.Fatal("README.md has no ## Commands section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	var inREADME []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z-]+)").FindAllStringSubmatch(table, -1) {
		inREADME = append(inREADME, m[1])
	}
	var inBinary []string
	for _, c := range commands() {
		inBinary = append(inBinary, c.name)
	}
	if !slices.Equal(inREADME, inBinary) {
		t.Errorf("README.md Commands table lists %v; the binary has %v", inREADME, inBinary)
	}
}

// TestCheckHelpMatchesREADME: check's usage line, its -h and the README
// (whose Commands table is the man page) give the same exit codes, and -h
// lists the README's steps.
func TestCheckHelpMatchesREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	const codes = "exit 0 all passed (warnings allowed), 1 a step failed, 2 usage or configuration error"
	var usage string
	for _, c := range commands() {
		if c.name == "check" {
			usage = c.usage
		}
	}
	if !strings.Contains(usage, codes) {
		t.Errorf("check's usage line lacks %q: %s", codes, usage)
	}
	row := regexp.MustCompile("(?m)^\\| `check .*$").FindString(readme)
	if !strings.Contains(row, codes) || !strings.Contains(row, "-json") {
		t.Errorf("README's check row lacks %q or -json: %s", codes, row)
	}
	for _, s := range []string{"**0** every step passed (warnings allowed), **1** a step failed, **2** a usage or configuration error"} {
		if !strings.Contains(strings.ReplaceAll(readme, "\n", " "), s) {
			t.Errorf("README lacks %q", s)
		}
	}
	if !strings.Contains(strings.ReplaceAll(checkHelp, "\n", " "), "0 every step passed (warnings allowed), 1 a step failed, 2 a usage or configuration error") {
		t.Error("check -h says other exit codes")
	}
	// The README's step table: each step's name is in -h.
	_, table, _ := strings.Cut(readme, "| step | proves | when it fails |")
	table, _, _ = strings.Cut(table, "\n\n")
	steps := regexp.MustCompile("(?m)^\\| `([^`]+)`").FindAllStringSubmatch(table, -1)
	if len(steps) < 6 {
		t.Fatalf("README's step table has %d rows", len(steps))
	}
	for _, m := range steps {
		name := strings.TrimSuffix(m[1], " ADDRESS")
		if !strings.Contains(checkHelp, name) {
			t.Errorf("check -h lacks the step %q", name)
		}
	}
}
