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
