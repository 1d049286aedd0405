package imap

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"

	"github.com/oauthrelay/oauthrelay/internal/splice"
)

// Bounds on what a client may send before it has logged in. Credentials and
// the few pre-authentication commands are small; anything bigger is an
// error, not a reason to allocate.
const (
	// maxLineLength bounds one line of a command (without CRLF).
	maxLineLength = 8 << 10
	// maxLiteralSize bounds one literal (a username or password).
	maxLiteralSize = 8 << 10
	// maxCommandSize bounds all lines and literals of one command.
	maxCommandSize = 32 << 10
)

// argKind is the syntactic form of a command argument (RFC 9051 §4).
type argKind int

const (
	atomArg    argKind = iota // atom, including NIL
	quotedArg                 // "quoted string" with \" and \\ escapes
	literalArg                // {n} or {n+} (RFC 7888) followed by n octets
	listArg                   // parenthesized list
)

// arg is one parsed argument.
type arg struct {
	kind argKind
	s    string // atom, quoted or literal value
	list []arg  // listArg elements
}

// astring returns the value of an atom, quoted string or literal
// (RFC 9051 astring).
func (a arg) astring() (string, bool) {
	if a.kind == listArg {
		return "", false
	}
	return a.s, true
}

// isNil reports whether a is the atom NIL.
func (a arg) isNil() bool { return a.kind == atomArg && strings.EqualFold(a.s, "NIL") }

// command is one client command.
type command struct {
	tag  string
	name string // upper case
	args []arg
}

// cmdError is a command that cannot be executed as sent. The session
// answers it with "<tag> <status> [<code>] <text>" (untagged when tag is
// empty), and after a fatal one sends "* BYE <text>" and closes: the stream
// can no longer be resynchronised.
type cmdError struct {
	tag    string
	name   string // the command's name (upper case) as far as it was read
	status string // "BAD" or "NO"
	code   string // response code without brackets, may be empty
	text   string
	fatal  bool
}

func (e *cmdError) Error() string { return e.status + " " + e.text }

// errLineTooLong is a line over its bound (splice.ReadLine).
var errLineTooLong = splice.ErrLineTooLong

// commandReader reads client commands: the command line, and each literal
// announced at the end of a line followed by the rest of the command.
type commandReader struct {
	br *bufio.Reader
	// continuation sends the "+" that asks the client for a synchronising
	// literal's octets.
	continuation func() error
	// mayLiteral is asked before any literal's octets are read; a non-nil
	// answer refuses the command. A synchronising literal is then not
	// asked for; a non-synchronising one is read and discarded, since the
	// client sends it anyway. Nil allows every literal.
	mayLiteral func(tag, name string) *cmdError
}

// read reads one command. Errors are a *cmdError to answer, with the
// command's name when one could be read, or an I/O error (the connection is
// gone or timed out).
func (r *commandReader) read() (_ *command, err error) {
	var name string
	defer func() {
		if ce, ok := err.(*cmdError); ok && ce.name == "" {
			ce.name = name
		}
	}()
	var (
		text    []byte
		lits    [][]byte
		litAt   []int
		total   int
		tag     string
		refused *cmdError
	)
	for first := true; ; first = false {
		line, err := splice.ReadLine(r.br, maxLineLength)
		if err == errLineTooLong {
			return nil, &cmdError{tag: tag, status: "BAD", text: "Command line too long", fatal: true}
		} else if err != nil {
			return nil, err
		}
		total += len(line)
		if total > maxCommandSize {
			return nil, &cmdError{tag: tag, status: "BAD", text: "Command too long", fatal: true}
		}
		text = append(text, line...)
		if first {
			tag, name = peekTagName(text)
		}
		n, sync, ok := literalMarker(line)
		if !ok {
			break
		}
		if n > maxLiteralSize || total+n > maxCommandSize {
			if sync {
				// The client waits for "+" and abandons the command on a
				// tagged reply (RFC 9051 §7.5).
				return nil, &cmdError{tag: tag, status: "BAD", code: "TOOBIG", text: "Literal too big"}
			}
			return nil, &cmdError{tag: tag, status: "BAD", code: "TOOBIG", text: "Literal too big", fatal: true}
		}
		total += n
		if refused == nil && r.mayLiteral != nil {
			refused = r.mayLiteral(tag, name)
		}
		if refused != nil && refused.fatal {
			// Not even a non-synchronising literal is read.
			return nil, refused
		}
		if sync {
			if refused != nil {
				return nil, refused
			}
			if err := r.continuation(); err != nil {
				return nil, err
			}
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r.br, data); err != nil {
			return nil, err
		}
		litAt = append(litAt, len(text))
		lits = append(lits, data)
	}
	if refused != nil {
		return nil, refused
	}
	return parseCommand(text, lits, litAt)
}

// peekTagName returns the tag and upper-cased command name of a command's
// first line, as far as they can be found, for replies and the literal
// policy before the whole command is parsed.
func peekTagName(line []byte) (tag, name string) {
	t, rest, _ := bytes.Cut(line, []byte{' '})
	if validTag(t) {
		tag = string(t)
	}
	n, _, _ := bytes.Cut(rest, []byte{' '})
	return tag, strings.ToUpper(string(n))
}

// literalMarker is splice.LiteralMarker: the literal announcement at the
// end of a command line.
var literalMarker = splice.LiteralMarker

// validTag reports whether t is a tag: astring characters except "+"
// (RFC 9051 §9).
func validTag(t []byte) bool {
	if len(t) == 0 {
		return false
	}
	for _, c := range t {
		if c == '+' || !isAstringChar(c) {
			return false
		}
	}
	return true
}

// isAstringChar: any CHAR except atom-specials, but "]" is allowed
// (RFC 9051 ASTRING-CHAR).
func isAstringChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '%', '*', '"', '\\':
		return false
	}
	return c > 0x1f && c < 0x7f
}

// isAtomArgChar is what the parser accepts in an atom argument: astring
// characters plus "\", "%", "*" (flags, list wildcards) and 8-bit octets
// (UTF-8 user names; RFC 9051 is UTF-8 throughout).
func isAtomArgChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '"':
		return false
	}
	return c > 0x1f && c != 0x7f
}

// parseCommand parses a command's text: its lines concatenated without
// CRLF, with the literals' octets kept aside; litAt[i] is the offset in
// text just after the i-th literal's "{n}" marker.
func parseCommand(text []byte, lits [][]byte, litAt []int) (*command, error) {
	p := &parser{text: text, lits: lits, litAt: litAt}
	t := p.until(' ')
	if !validTag(t) {
		return nil, &cmdError{status: "BAD", text: "Missing or invalid tag"}
	}
	cmd := &command{tag: string(t)}
	bad := func(msg string) (*command, error) {
		return nil, &cmdError{tag: cmd.tag, status: "BAD", text: msg}
	}
	if !p.consume(' ') {
		return bad("Missing command")
	}
	name := p.until(' ')
	if len(name) == 0 {
		return bad("Missing command")
	}
	for _, c := range name {
		if !isAstringChar(c) {
			return bad("Invalid command name")
		}
	}
	cmd.name = strings.ToUpper(string(name))
	for !p.done() {
		if !p.consume(' ') {
			return bad("Expected a space between arguments")
		}
		if p.done() { // be lenient with a trailing space
			break
		}
		a, err := p.arg(0)
		if err != nil {
			// The parser's error is the text of the BAD reply, which
			// starts with a capital as IMAP servers' replies do.
			msg := err.Error()
			return bad(strings.ToUpper(msg[:1]) + msg[1:])
		}
		cmd.args = append(cmd.args, a)
	}
	if p.li != len(lits) {
		return bad("Literal in an unexpected place")
	}
	return cmd, nil
}

// maxListDepth bounds nested lists (ID takes one level).
const maxListDepth = 8

type parser struct {
	text  []byte
	pos   int
	lits  [][]byte
	litAt []int
	li    int // next literal
}

func (p *parser) done() bool { return p.pos >= len(p.text) }

func (p *parser) consume(c byte) bool {
	if p.pos < len(p.text) && p.text[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

// until returns the text up to (not including) c or the end.
func (p *parser) until(c byte) []byte {
	start := p.pos
	for p.pos < len(p.text) && p.text[p.pos] != c {
		p.pos++
	}
	return p.text[start:p.pos]
}

func (p *parser) arg(depth int) (arg, error) {
	if p.done() {
		return arg{}, errors.New("missing argument")
	}
	switch p.text[p.pos] {
	case '"':
		return p.quoted()
	case '{':
		return p.literal()
	case '(':
		return p.list(depth)
	}
	start := p.pos
	for p.pos < len(p.text) && isAtomArgChar(p.text[p.pos]) {
		p.pos++
	}
	if p.pos == start {
		return arg{}, errors.New("invalid character in argument")
	}
	if !p.done() && p.text[p.pos] != ' ' && p.text[p.pos] != ')' {
		return arg{}, errors.New("invalid character in atom")
	}
	return arg{kind: atomArg, s: string(p.text[start:p.pos])}, nil
}

func (p *parser) quoted() (arg, error) {
	p.pos++ // opening quote
	var b []byte
	for p.pos < len(p.text) {
		c := p.text[p.pos]
		p.pos++
		switch c {
		case '"':
			return arg{kind: quotedArg, s: string(b)}, nil
		case '\\':
			if p.pos < len(p.text) && (p.text[p.pos] == '"' || p.text[p.pos] == '\\') {
				b = append(b, p.text[p.pos])
				p.pos++
				continue
			}
			return arg{}, errors.New("invalid escape in quoted string")
		case 0:
			return arg{}, errors.New("NUL in quoted string")
		}
		b = append(b, c)
	}
	return arg{}, errors.New("unterminated quoted string")
}

func (p *parser) literal() (arg, error) {
	end := bytes.IndexByte(p.text[p.pos:], '}')
	if end < 0 || p.li >= len(p.lits) || p.pos+end+1 != p.litAt[p.li] {
		return arg{}, errors.New("invalid literal")
	}
	p.pos += end + 1
	a := arg{kind: literalArg, s: string(p.lits[p.li])}
	p.li++
	return a, nil
}

func (p *parser) list(depth int) (arg, error) {
	if depth >= maxListDepth {
		return arg{}, errors.New("lists nested too deeply")
	}
	p.pos++ // "("
	a := arg{kind: listArg}
	for {
		if p.consume(')') {
			return a, nil
		}
		if len(a.list) > 0 && !p.consume(' ') {
			return arg{}, errors.New("expected a space or ) in list")
		}
		e, err := p.arg(depth + 1)
		if err != nil {
			return arg{}, err
		}
		a.list = append(a.list, e)
	}
}
