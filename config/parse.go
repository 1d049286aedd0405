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
		r.yamlError(err)
		return nil, r.err()
	}
	c := &Config{File: file}
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
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
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

// Error formats the problem as file:line: key: message.
func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Err.Error())
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
func (r *report) yamlError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, text, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				line, msg = l, text
			}
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
