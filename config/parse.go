package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Parse builds a Config from data, the contents of file. file names the
// problems and anchors relative paths (cert_file, *_file secrets, ...): they
// are taken relative to its directory, as a user reading the file expects,
// not to the process's working directory. getenv resolves ${NAME} (and
// STATE_DIRECTORY for the default state_dir); os.LookupEnv in production, a
// map in tests.
//
// The error, if any, joins one *Problem per line, in file order.
func Parse(file string, data []byte, getenv func(string) (string, bool)) (*Config, error) {
	r := &report{file: file, lines: map[string]int{}, bad: map[string]bool{}}
	root, err := parseYAML(data)
	if err != nil {
		r.yamlError(err, data)
		return nil, r.err()
	}
	c := newConfig(file)
	if root != nil {
		d := decoder{getenv: getenv, r: r}
		d.decode(root, "", reflect.ValueOf(c).Elem(), true)
	}
	resolvePaths(c, baseDir(file))
	readSecrets(c, r)
	applyDefaults(c, getenv)
	validate(c, r)
	if err := r.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseYAML returns the root node of the single document in data; nil for
// an empty document.
func parseYAML(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err // a syntax error, or a byte YAML refuses, after the first document
	default:
		// A second document would be silently ignored: say so instead.
		return nil, fmt.Errorf("yaml: line %d: only one YAML document is allowed", next.Line)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

func baseDir(file string) string {
	dir, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return filepath.Dir(file)
	}
	return dir
}

// Problem is one thing wrong in a configuration file.
type Problem struct {
	File string
	Line int    // 0 when no line applies (a key missing at the top level)
	Key  string // the key's path, e.g. accounts[0].provider; empty for YAML syntax errors
	Err  error
}

// Error formats the problem as file:line: key: message. Quoted values in
// the message and the key path are clipped (see clipMessage): a value
// pasted by mistake must not be repeated in full.
func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(clipText(p.Key, maxKeyBytes) + ": ")
	}
	b.WriteString(clipMessage(p.Err.Error()))
	return b.String()
}

func (p *Problem) Unwrap() error { return p.Err }

// report collects the problems of one Parse.
type report struct {
	file     string
	lines    map[string]int  // key path → line where the key is written
	bad      map[string]bool // key paths that already have a problem
	problems []*Problem
}

// add records a problem at key, on the line of key or of its nearest
// written ancestor (a missing key is reported where its parent is).
func (r *report) add(key, format string, args ...any) {
	r.addAt(r.line(key), key, fmt.Errorf(format, args...))
}

// addAt records a problem unless key or an ancestor already has one: a value
// that failed to decode would otherwise also be reported as missing.
func (r *report) addAt(line int, key string, err error) {
	for k := key; k != ""; k = parent(k) {
		if r.bad[k] {
			return
		}
	}
	r.bad[key] = true
	r.problems = append(r.problems, &Problem{File: r.file, Line: line, Key: key, Err: err})
}

func (r *report) line(key string) int {
	for k := key; k != ""; k = parent(k) {
		if l, ok := r.lines[k]; ok {
			return l
		}
	}
	return 0
}

// yamlError turns yaml.v3's "yaml: line N: msg" into a Problem at line N.
// yaml.v3's reader errors ("control characters are not allowed", "invalid
// leading UTF-8 octet") carry no line: the first byte of data that YAML
// refuses is then found here, so the message still says where it is.
func (r *report) yamlError(err error, data []byte) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, text, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				line, msg = l, text
			}
		}
	}
	if line == 0 {
		if l, text, ok := badByte(data); ok {
			line, msg = l, text
		}
	}
	r.problems = append(r.problems, &Problem{File: r.file, Line: line, Err: errors.New(msg)})
}

// err joins the problems in file order, or returns nil.
func (r *report) err() error {
	if len(r.problems) == 0 {
		return nil
	}
	// Problems without a line (keys missing from the file) come last.
	line := func(p *Problem) int { return cmp.Or(p.Line, math.MaxInt) }
	slices.SortStableFunc(r.problems, func(a, b *Problem) int { return cmp.Compare(line(a), line(b)) })
	errs := make([]error, len(r.problems))
	for i, p := range r.problems {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// parent strips the last component of a key path: "a.b[2]" → "a.b" → "a".
func parent(key string) string {
	i := strings.LastIndexAny(key, ".[")
	if i < 0 {
		return ""
	}
	return key[:i]
}

// Limits of what a problem repeats of the file. A value pasted by mistake (a
// certificate, a 50 MB blob) would otherwise fill the terminal and the log.
const (
	maxQuotedRunes  = 80   // of one quoted value
	maxKeyBytes     = 200  // of a key path (provider names and unknown keys come from the file)
	maxMessageBytes = 4096 // of a whole message, after its quoted values are clipped
)

// clipMessage shortens every Go-quoted string in msg (what %q wrote) whose
// value is longer than maxQuotedRunes to its first maxQuotedRunes runes,
// followed by …(N bytes) with the value's full length; then, as a last
// bound for text that was not quoted (a file name inside an os error), the
// whole message to maxMessageBytes.
func clipMessage(msg string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(msg, '"')
		if i < 0 {
			b.WriteString(msg)
			break
		}
		b.WriteString(msg[:i])
		msg = msg[i:]
		q, err := strconv.QuotedPrefix(msg)
		if err != nil {
			b.WriteByte('"')
			msg = msg[1:]
			continue
		}
		msg = msg[len(q):]
		v, err := strconv.Unquote(q)
		if err != nil || utf8.RuneCountInString(v) <= maxQuotedRunes {
			b.WriteString(q)
			continue
		}
		fmt.Fprintf(&b, "%q…(%d bytes)", v[:runePrefix(v, maxQuotedRunes)], len(v))
	}
	return clipText(b.String(), maxMessageBytes)
}

// clipText cuts s to at most limit bytes (at a rune boundary), saying how
// long it was.
func clipText(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}

// runePrefix is the byte length of s's first n runes (an invalid byte
// counts as one).
func runePrefix(s string, n int) int {
	i := 0
	for ; n > 0 && i < len(s); n-- {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return i
}

// badByte finds the first character of data that a YAML stream may not
// hold (YAML 1.2 §5.1, c-printable; and §5.2, well-formed UTF-8) and says
// what and where it is: its line (counting '\n', as editors and grep -n
// do), and a message with the column. A file that starts with a UTF-16 byte
// order mark is left to yaml.v3, which decodes UTF-16 itself.
func badByte(data []byte) (line int, msg string, ok bool) {
	if bytes.HasPrefix(data, []byte{0xFE, 0xFF}) || bytes.HasPrefix(data, []byte{0xFF, 0xFE}) {
		return 0, "", false
	}
	line, col := 1, 1
	for i := 0; i < len(data); {
		c, size := utf8.DecodeRune(data[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			return line, fmt.Sprintf("column %d: byte 0x%02X is not UTF-8 (save the file as UTF-8 text; "+
				"a binary file is not a configuration)", col, data[i]), true
		case !yamlPrintable(c):
			return line, fmt.Sprintf("column %d: control character %U is not allowed "+
				"(YAML allows tabs, line breaks and printable characters; write it as an escape in a double-quoted string)", col, c), true
		case c == '\n':
			line, col = line+1, 1
		default:
			col++
		}
		i += size
	}
	return 0, "", false
}

// yamlPrintable is YAML 1.2's c-printable (§5.1), the characters yaml.v3's
// reader accepts.
func yamlPrintable(c rune) bool {
	return c == '\t' || c == '\n' || c == '\r' || (c >= 0x20 && c <= 0x7E) || c == 0x85 ||
		(c >= 0xA0 && c <= 0xD7FF) || (c >= 0xE000 && c <= 0xFFFD) || (c >= 0x10000 && c <= 0x10FFFF)
}
