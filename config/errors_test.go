package config

// The wording of configuration errors for files an editor did not write as
// intended: a value pasted by mistake (megabytes long) and bytes YAML does
// not allow (a NUL, invalid UTF-8, a control character, a binary file).

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A valid two-line provider and account, this file's own so that it does
// not depend on the fixtures of config_test.go. The hash is of "change-me".
const (
	errProv = "providers:\n  p: {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s}\n"
	errAcct = "accounts:\n  - {name: a, provider: p, mailbox: a@contoso.com, username: u, " +
		"password_hash: \"$2a$10$Z2JJfwYPewHYL9oAh66lIeDX4EX.KY/2tMTO.i.a3GtJF3iXSQLli\"}\n"
)

func noEnv(string) (string, bool) { return "", false }

// parseErr parses data as c.yaml and returns the error text; the test fails
// if there is none.
func parseErr(t *testing.T, data string) string {
	t.Helper()
	_, err := Parse("c.yaml", []byte(data), noEnv)
	if err == nil {
		t.Fatalf("no error for:\n%.200q", data)
	}
	return err.Error()
}

// hugeSize is far beyond any real value (and the message limits); a
// message must not grow with it.
const hugeSize = 256 << 10

// A value of megabytes is quoted back as its first runes and its length,
// wherever the message quotes it: in a validation message, in the decoder's
// own messages, in a key path, in a list of names.
func TestHugeValueClipped(t *testing.T) {
	huge := strings.Repeat("x", hugeSize)
	clipped := fmt.Sprintf(`%q…(%d bytes)`, strings.Repeat("x", maxQuotedRunes), hugeSize)
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"validation", errProv + errAcct + "log: {level: " + huge + "}\n",
			"c.yaml:5: log.level: " + clipped + " is not a log level (have: debug, info, warn, error)"},
		{"bool", errProv + errAcct + "listen: {smtp: {allow_insecure: " + huge + "}}\n",
			"c.yaml:5: listen.smtp.allow_insecure: want true or false, not " + clipped},
		{"variable name", errProv + errAcct + "state_dir: ${-" + huge + "}\n",
			fmt.Sprintf(`c.yaml:5: state_dir: "-%s"…(%d bytes) is not a variable name`, strings.Repeat("x", maxQuotedRunes-1), hugeSize+1)},
		{"unset variable", errProv + errAcct + "state_dir: ${" + huge + "}\n",
			"c.yaml:5: state_dir: environment variable xxx"},
		{"address", errProv + errAcct + "listen: {smtp: {addr: " + huge + "}}\n",
			"c.yaml:5: listen.smtp.addr: want host:port, not " + clipped},
		{"unknown key", errProv + errAcct + "? " + huge + "\n: 1\n", // an explicit key: a plain one is at most 1024 characters
			fmt.Sprintf("c.yaml:5: %s…(%d bytes): unknown key", strings.Repeat("x", maxKeyBytes), hugeSize)},
		{"unquoted list", errAcct + "providers:\n  ? " + huge + "\n  : {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s}\n",
			`c.yaml:2: accounts[0].provider: "p" is not a provider (have: xxx`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := parseErr(t, tc.yaml)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("the message lacks %.300q:\n%.600s", tc.want, msg)
			}
			// Every problem of the file together stays small.
			if limit := 4 * maxMessageBytes; len(msg) > limit {
				t.Errorf("the message is %d bytes, want at most %d:\n%.600s", len(msg), limit, msg)
			}
		})
	}
}

// Quoted values up to the limit are kept whole; escapes are never cut in the
// middle; a quote that does not start a quoted string is text.
func TestClipMessage(t *testing.T) {
	long := strings.Repeat("é", maxQuotedRunes) + "tail"
	for _, tc := range []struct{ in, want string }{
		{`"short" is not a log level`, `"short" is not a log level`},
		{fmt.Sprintf("%q ok", strings.Repeat("a", maxQuotedRunes)), fmt.Sprintf("%q ok", strings.Repeat("a", maxQuotedRunes))},
		{fmt.Sprintf("not %q.", long), fmt.Sprintf("not %q…(%d bytes).", strings.Repeat("é", maxQuotedRunes), len(long))},
		// %q of invalid UTF-8 and control characters: \x and \u escapes.
		{fmt.Sprintf("%q", strings.Repeat("\x00\xff", maxQuotedRunes)),
			fmt.Sprintf("%q…(%d bytes)", strings.Repeat("\x00\xff", maxQuotedRunes/2), 2*maxQuotedRunes)},
		{`"${" without a closing "}" (write $$ for a literal $)`, `"${" without a closing "}" (write $$ for a literal $)`},
		{`a " b ` + strings.Repeat("y", 100), `a " b ` + strings.Repeat("y", 100)},
		{`two: "` + strings.Repeat("a", 100) + `" and "` + strings.Repeat("b", 100) + `"`,
			fmt.Sprintf(`two: %q…(100 bytes) and %q…(100 bytes)`, strings.Repeat("a", maxQuotedRunes), strings.Repeat("b", maxQuotedRunes))},
	} {
		if got := clipMessage(tc.in); got != tc.want {
			t.Errorf("clipMessage(%.120q)\n got %.300q\nwant %.300q", tc.in, got, tc.want)
		}
	}
	// Unquoted text is bounded as a whole, at a rune boundary.
	got := clipMessage("open /" + strings.Repeat("ü", maxMessageBytes) + ": file name too long")
	if want := fmt.Sprintf("…(%d bytes)", len("open /")+2*maxMessageBytes+len(": file name too long")); !strings.HasSuffix(got, want) ||
		len(got) > maxMessageBytes+len(want) || !strings.HasPrefix(got, "open /üü") || strings.Contains(got, "\uFFFD") {
		t.Errorf("long unquoted message clipped to %d bytes: %.80q … %q", len(got), got, got[max(0, len(got)-40):])
	}
}

// yaml.v3 says "control characters are not allowed" or "invalid leading
// UTF-8 octet" with no line; the problem names the line and column of the
// first byte YAML refuses.
func TestBadBytesHaveALine(t *testing.T) {
	ctrl := "control character %s is not allowed"
	for _, tc := range []struct{ name, yaml, want string }{
		{"NUL in a value", errProv + errAcct + "log:\n  level: info\x00\n", "c.yaml:6: column 14: " + fmt.Sprintf(ctrl, "U+0000")},
		{"NUL in a comment", "# ok\n# a\x00b\n" + errProv + errAcct, "c.yaml:2: column 4: " + fmt.Sprintf(ctrl, "U+0000")},
		{"NUL first", "\x00" + errProv + errAcct, "c.yaml:1: column 1: " + fmt.Sprintf(ctrl, "U+0000")},
		{"control character", errProv + errAcct + "state_dir: /var/lib/o\x01r\n", "c.yaml:5: column 22: " + fmt.Sprintf(ctrl, "U+0001")},
		{"escape in quotes", errProv + errAcct + "state_dir: \"\x1b[31m\"\n", "c.yaml:5: column 13: " + fmt.Sprintf(ctrl, "U+001B")},
		{"C1 control", errProv + errAcct + "state_dir: é\u0080\n", "c.yaml:5: column 13: " + fmt.Sprintf(ctrl, "U+0080")},
		{"invalid UTF-8", errProv + errAcct + "state_dir: caf\xe9\n", "c.yaml:5: column 15: byte 0xE9 is not UTF-8"},
		{"Latin-1 key", errProv + errAcct + "\xe9tat: x\n", "c.yaml:5: column 1: byte 0xE9 is not UTF-8"},
		{"binary file", "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "c.yaml:1: column 1: byte 0x89 is not UTF-8"},
		{"CRLF lines", "# one\r\n# two\r\nstate_dir: \x7f\r\n", "c.yaml:3: column 12: " + fmt.Sprintf(ctrl, "U+007F")},
		// Past what yaml.v3 reads of the file at once, and after the
		// first document: still the byte's line, not "a second document".
		{"far down", errProv + errAcct + strings.Repeat("# padding\n", 5000) + "log: {level: \x00}\n",
			"c.yaml:5005: column 14: " + fmt.Sprintf(ctrl, "U+0000")},
		{"second document", errProv + errAcct + "---\nx: \x02\n", "c.yaml:6: column 4: " + fmt.Sprintf(ctrl, "U+0002")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := parseErr(t, tc.yaml)
			if !strings.HasPrefix(msg, tc.want) {
				t.Errorf("got  %q\nwant %q…", msg, tc.want)
			}
			if strings.Count(msg, "\n") != 0 {
				t.Errorf("more than one problem: %q", msg)
			}
		})
	}
}

// The line found for a refused byte is a Problem like any other.
func TestBadByteProblem(t *testing.T) {
	_, err := Parse("c.yaml", []byte("a: 1\nb: \x00\n"), noEnv)
	var p *Problem
	if !errors.As(err, &p) || p.File != "c.yaml" || p.Line != 2 || p.Key != "" {
		t.Fatalf("Problem: %#v (%v)", p, err)
	}
}

// A file that yaml.v3 accepts is not second-guessed: tabs, CR, NEL, the
// replacement character and a byte order mark are allowed, and UTF-16 is
// left to yaml.v3.
func TestAllowedBytes(t *testing.T) {
	for _, s := range []string{"a:\tb\r\n", "a: b\u0085", "a: \uFFFD", "\uFEFFa: b", "a: \U0001F600", "\xff\xfea\x00"} {
		if line, msg, ok := badByte([]byte(s)); ok {
			t.Errorf("badByte(%q) = line %d %q", s, line, msg)
		}
	}
}
