package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// readAll runs a commandReader over input and records the continuations.
func readOne(t *testing.T, input string, policy func(tag, name string) *cmdError) (*command, error, int, string) {
	t.Helper()
	conts := 0
	br := bufio.NewReader(strings.NewReader(input))
	r := &commandReader{
		br:           br,
		continuation: func() error { conts++; return nil },
		mayLiteral:   policy,
	}
	cmd, err := r.read()
	rest, _ := io.ReadAll(br)
	return cmd, err, conts, string(rest)
}

func TestParseCommands(t *testing.T) {
	atom := func(s string) arg { return arg{kind: atomArg, s: s} }
	quoted := func(s string) arg { return arg{kind: quotedArg, s: s} }
	lit := func(s string) arg { return arg{kind: literalArg, s: s} }
	tests := []struct {
		name  string
		in    string
		want  *command
		conts int
		rest  string
	}{
		{"atoms", "a1 LOGIN user pass\r\n",
			&command{"a1", "LOGIN", []arg{atom("user"), atom("pass")}}, 0, ""},
		{"lower case name", "x login User Pa]ss\r\n",
			&command{"x", "LOGIN", []arg{atom("User"), atom("Pa]ss")}}, 0, ""},
		{"bare LF", "a noop\n", &command{"a", "NOOP", nil}, 0, ""},
		{"quoted with escapes", `a LOGIN "us er" "p\"a\\ss"` + "\r\n",
			&command{"a", "LOGIN", []arg{quoted("us er"), quoted(`p"a\ss`)}}, 0, ""},
		{"empty quoted", `a LOGIN "" ""` + "\r\n",
			&command{"a", "LOGIN", []arg{quoted(""), quoted("")}}, 0, ""},
		{"utf-8 quoted", "a LOGIN \"jürgen\" \"пароль\"\r\n",
			&command{"a", "LOGIN", []arg{quoted("jürgen"), quoted("пароль")}}, 0, ""},
		{"synchronising literals", "a LOGIN {4}\r\nuser {8}\r\np\"a ss}{\r\n",
			&command{"a", "LOGIN", []arg{lit("user"), lit("p\"a ss}{")}}, 2, ""},
		{"non-synchronising literals", "a LOGIN {4+}\r\nuser {3+}\r\n\r\n\x00\r\nb NOOP\r\n",
			&command{"a", "LOGIN", []arg{lit("user"), lit("\r\n\x00")}}, 0, "b NOOP\r\n"},
		{"empty literal", "a LOGIN user {0}\r\n\r\n",
			&command{"a", "LOGIN", []arg{atom("user"), lit("")}}, 1, ""},
		{"quoted brace is text", "a LOGIN user \"{5}\"\r\n",
			&command{"a", "LOGIN", []arg{atom("user"), quoted("{5}")}}, 0, ""},
		{"list", `a ID ("name" "mutt" "version" NIL)` + "\r\n",
			&command{"a", "ID", []arg{{kind: listArg, list: []arg{quoted("name"), quoted("mutt"), quoted("version"), atom("NIL")}}}}, 0, ""},
		{"empty list", "a ID ()\r\n", &command{"a", "ID", []arg{{kind: listArg}}}, 0, ""},
		{"trailing space", "a NOOP \r\n", &command{"a", "NOOP", nil}, 0, ""},
		{"pipelined", "a NOOP\r\nb CAPABILITY\r\n", &command{"a", "NOOP", nil}, 0, "b CAPABILITY\r\n"},
		{"authenticate ir", "a AUTHENTICATE PLAIN AHUAcA==\r\n",
			&command{"a", "AUTHENTICATE", []arg{atom("PLAIN"), atom("AHUAcA==")}}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, err, conts, rest := readOne(t, tt.in, nil)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !reflect.DeepEqual(cmd, tt.want) {
				t.Errorf("got %+v, want %+v", cmd, tt.want)
			}
			if conts != tt.conts {
				t.Errorf("%d continuations, want %d", conts, tt.conts)
			}
			if rest != tt.rest {
				t.Errorf("left %q, want %q", rest, tt.rest)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		tag   string
		fatal bool
		code  string
		rest  string // what is left unread (resynchronisation)
	}{
		{"no tag", "\r\n", "", false, "", ""},
		{"bad tag", "a+b NOOP\r\n", "", false, "", ""},
		{"star tag", "* NOOP\r\n", "", false, "", ""},
		{"no command", "a\r\n", "a", false, "", ""},
		{"unterminated quote", "a LOGIN \"user pass\r\nb NOOP\r\n", "a", false, "", "b NOOP\r\n"},
		{"bad escape", `a LOGIN "u\ser" p` + "\r\n", "a", false, "", ""},
		{"quote in atom", "a LOGIN us\"er p\r\n", "a", false, "", ""},
		{"unclosed list", "a ID (\"name\"\r\n", "a", false, "", ""},
		{"unbalanced paren", "a LOGIN user pass)\r\n", "a", false, "", ""},
		{"literal not at end", "a LOGIN {4}x pass\r\n", "a", false, "", ""},
		{"double space", "a LOGIN  user pass\r\n", "a", false, "", ""},
		{"sync literal too big", "a LOGIN {8193}\r\nb NOOP\r\n", "a", false, "TOOBIG", "b NOOP\r\n"},
		{"non-sync literal too big", "a LOGIN {8193+}\r\n", "a", true, "TOOBIG", ""},
		{"line too long", "a LOGIN " + strings.Repeat("x", maxLineLength) + "\r\n", "", true, "", ""},
		{"command too long", "a LOGIN" + strings.Repeat(" {8000+}\r\n"+strings.Repeat("x", 8000), 5) + "\r\n",
			"a", true, "TOOBIG", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err, conts, rest := readOne(t, tt.in, nil)
			var ce *cmdError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a *cmdError", err)
			}
			if ce.tag != tt.tag || ce.fatal != tt.fatal || ce.status != "BAD" || ce.code != tt.code {
				t.Errorf("got %+v, want tag %q fatal %v code %q", ce, tt.tag, tt.fatal, tt.code)
			}
			if conts != 0 {
				t.Errorf("%d continuations sent for a refused command", conts)
			}
			if !ce.fatal && rest != tt.rest {
				t.Errorf("left %q, want %q", rest, tt.rest)
			}
		})
	}
}

func TestLiteralLineBound(t *testing.T) {
	// A line of exactly maxLineLength is fine.
	in := "a LOGIN u " + strings.Repeat("p", maxLineLength-len("a LOGIN u ")) + "\r\n"
	if _, err, _, _ := readOne(t, in, nil); err != nil {
		t.Fatalf("line of maxLineLength: %v", err)
	}
	// A literal of maxLiteralSize is fine.
	in = "a LOGIN u {8192+}\r\n" + strings.Repeat("p", maxLiteralSize) + "\r\n"
	cmd, err, _, _ := readOne(t, in, nil)
	if err != nil || len(cmd.args[1].s) != maxLiteralSize {
		t.Fatalf("literal of maxLiteralSize: %v", err)
	}
}

func TestLiteralPolicy(t *testing.T) {
	refuse := func(tag, name string) *cmdError {
		if name == "LOGIN" {
			return nil
		}
		return &cmdError{tag: tag, status: "BAD", text: "no"}
	}
	// A synchronising literal of a refused command is not asked for.
	_, err, conts, rest := readOne(t, "a APPEND INBOX {5}\r\nb NOOP\r\n", refuse)
	var ce *cmdError
	if !errors.As(err, &ce) || ce.tag != "a" || conts != 0 || rest != "b NOOP\r\n" {
		t.Errorf("sync: err %v, %d continuations, left %q", err, conts, rest)
	}
	// A non-synchronising one is read and dropped, so the next command is
	// read in step.
	_, err, conts, rest = readOne(t, "a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n", refuse)
	if !errors.As(err, &ce) || ce.tag != "a" || conts != 0 || rest != "b NOOP\r\n" {
		t.Errorf("non-sync: err %v, %d continuations, left %q", err, conts, rest)
	}
	// Allowed.
	cmd, err, conts, _ := readOne(t, "a login {1}\r\nu {1}\r\np\r\n", refuse)
	if err != nil || conts != 2 || cmd.args[1].s != "p" {
		t.Errorf("allowed: %v %d", err, conts)
	}
}

func TestReadLineEOF(t *testing.T) {
	if _, err, _, _ := readOne(t, "", nil); err != io.EOF {
		t.Errorf("empty input: %v, want EOF", err)
	}
	if _, err, _, _ := readOne(t, "a NOOP", nil); err != io.ErrUnexpectedEOF {
		t.Errorf("partial line: %v, want ErrUnexpectedEOF", err)
	}
	if _, err, _, _ := readOne(t, "a LOGIN {5}\r\nab", nil); err != io.ErrUnexpectedEOF {
		t.Errorf("partial literal: %v, want ErrUnexpectedEOF", err)
	}
}

func TestLiteralMarker(t *testing.T) {
	tests := []struct {
		line       string
		n          int
		sync, isOK bool
	}{
		{"a LOGIN {5}", 5, true, true},
		{"a LOGIN {5+}", 5, false, true},
		{"a LOGIN {}", 0, false, false},
		{"a LOGIN {+}", 0, false, false},
		{"a LOGIN {x}", 0, false, false},
		{"a LOGIN \"{5}", 0, false, false},
		{"a LOGIN \"a\\\"\" {5}", 5, true, true},
		{"a LOGIN {99999999999}", 0, false, false},
		{"}", 0, false, false},
	}
	for _, tt := range tests {
		n, sync, ok := literalMarker([]byte(tt.line))
		if n != tt.n || sync != tt.sync || ok != tt.isOK {
			t.Errorf("%q: %d %v %v, want %d %v %v", tt.line, n, sync, ok, tt.n, tt.sync, tt.isOK)
		}
	}
}

// FuzzReadCommand: whatever a client sends, the reader neither panics nor
// returns more than the bounds allow.
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"a LOGIN user pass\r\n",
		`a LOGIN "u\"s" {3}` + "\r\nabc\r\n",
		"a LOGIN {3+}\r\nabc {0}\r\n\r\n",
		`a ID ("name" NIL ("x" ("y")))` + "\r\n",
		"a AUTHENTICATE PLAIN =\r\n",
		"\r\n",
		"{5}\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &commandReader{br: bufio.NewReader(bytes.NewReader(in)), continuation: func() error { return nil }}
		cmd, err := r.read()
		if err != nil {
			return
		}
		if !validTag([]byte(cmd.tag)) || cmd.name == "" || cmd.name != strings.ToUpper(cmd.name) {
			t.Errorf("bad command %+v", cmd)
		}
		size := 0
		var walk func([]arg)
		walk = func(args []arg) {
			for _, a := range args {
				size += len(a.s)
				walk(a.list)
			}
		}
		walk(cmd.args)
		if size > maxCommandSize {
			t.Errorf("%d bytes of arguments", size)
		}
	})
}
