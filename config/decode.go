package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder fills a Config from YAML nodes itself rather than through
// yaml.Decoder.KnownFields: that stops at the first unknown key and reports
// no key path, while walking the nodes lets every problem keep its line and
// path, and lets ${NAME} be expanded in each scalar before its type is
// checked (so `allow_insecure: ${INSECURE}` works).
//
// It knows the kinds the schema uses: structs, maps of and slices of
// (pointers to) structs, []string, string, bool, int and time.Duration, and
// pointers to them (a pointer stays nil when the key is absent or null, which
// is how an override tells "not set" from 0).
type decoder struct {
	getenv func(string) (string, bool)
	r      *report
}

func (d *decoder) decode(n *yaml.Node, path string, v reflect.Value, expand bool) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		// `key:` or `key: ~` leaves the value as it is (and so the
		// default). A pointer to a struct (a list item `- ~`) still gets
		// an empty struct, so that validation names its missing keys.
		if v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Kind() == reflect.Struct {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	if v.Type() == durationType {
		d.duration(n, path, v, expand)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structure(n, path, v)
	case reflect.Map:
		d.mapping(n, path, v)
	case reflect.Slice:
		d.sequence(n, path, v, expand)
	case reflect.String:
		if s, ok := d.scalar(n, path, expand, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(n, path, expand, "true or false")
		switch strings.ToLower(s) {
		case "true", "false":
			v.SetBool(strings.EqualFold(s, "true"))
		default:
			if ok {
				d.r.addAt(n.Line, path, fmt.Errorf("want true or false, not %q", s))
			}
		}
	case reflect.Int:
		d.integer(n, path, v, expand)
	default:
		panic(fmt.Sprintf("config: decoder cannot fill %s (%s)", v.Type(), path)) // a schema bug, not user input
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// integer fills an int from a decimal number. Ranges are the validator's:
// here only the form is checked, so "-1" decodes and is then reported
// against the key's range.
func (d *decoder) integer(n *yaml.Node, path string, v reflect.Value, expand bool) {
	s, ok := d.scalar(n, path, expand, "a whole number")
	if !ok {
		return
	}
	i, err := parseInt(s)
	if err != nil {
		d.r.addAt(n.Line, path, err)
		return
	}
	v.SetInt(int64(i))
}

// duration fills a time.Duration from a Go duration string with days.
func (d *decoder) duration(n *yaml.Node, path string, v reflect.Value, expand bool) {
	s, ok := d.scalar(n, path, expand, durationForms)
	if !ok {
		return
	}
	dur, err := parseDuration(s)
	if err != nil {
		d.r.addAt(n.Line, path, err)
		return
	}
	v.SetInt(int64(dur))
}

// parseInt accepts an optional sign and decimal digits, with '_' between
// digits as YAML allows (10_000). It is always base 10: 0x10 and 0o10 are
// refused, and 010 is ten (YAML 1.1 would read eight, which nobody writing
// a limit means).
func parseInt(s string) (int, error) {
	digits := strings.TrimLeft(s, "+-")
	if len(s)-len(digits) > 1 || !validDigits(digits) {
		return 0, fmt.Errorf("want a whole number, not %q", s)
	}
	i, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 10, 0)
	if err != nil {
		return 0, fmt.Errorf("%q is too large a number", s)
	}
	return int(i), nil
}

// validDigits: one or more decimal digits, '_' only between two digits.
func validDigits(s string) bool {
	for i := range len(s) {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
		case c == '_' && i > 0 && i+1 < len(s) && s[i-1] != '_':
		default:
			return false
		}
	}
	return s != ""
}

// durationForms is what a duration key accepts, for error messages.
const durationForms = `a duration such as "90s", "2m", "120h", "5d" or "1d12h"`

// day is the unit of the "d" suffix: 24 hours, as Postfix and systemd count
// it (calendar days, with daylight saving time, are not what a retry age
// means).
const day = 24 * time.Hour

// parseDuration reads a Go duration (time.ParseDuration: "90s", "2m",
// "1h30m") that may start with a whole number of days ("5d", "1d12h").
func parseDuration(s string) (time.Duration, error) {
	bad := fmt.Errorf("want %s, not %q", durationForms, s)
	days, rest, hasDays := strings.Cut(s, "d")
	if !hasDays {
		dur, err := time.ParseDuration(s)
		if err != nil {
			return 0, bad
		}
		return dur, nil
	}
	if !validDigits(days) || strings.Contains(days, "_") {
		return 0, bad
	}
	n, err := strconv.ParseInt(days, 10, 64)
	if err != nil || n > maxDays {
		return 0, bad
	}
	dur := time.Duration(n) * day
	if rest == "" {
		return dur, nil
	}
	// What follows the days has no sign of its own: "1d-2h" is a typo.
	if c := rest[0]; c < '0' || c > '9' {
		return 0, bad
	}
	r, err := time.ParseDuration(rest)
	if err != nil || r > maxDuration-dur {
		return 0, bad
	}
	return dur + r, nil
}

// maxDuration is the largest time.Duration (about 292 years), and maxDays
// the most whole days it holds.
const (
	maxDuration = time.Duration(1<<63 - 1)
	maxDays     = int64(maxDuration / day)
)

// structure fills a struct from a mapping, by yaml tag.
func (d *decoder) structure(n *yaml.Node, path string, v reflect.Value) {
	if !d.want(n, path, yaml.MappingNode, "a mapping of keys") {
		return
	}
	fields := map[string]int{}
	for i := range v.NumField() {
		if tag := v.Type().Field(i).Tag.Get("yaml"); tag != "" && tag != "-" {
			fields[tag] = i
		}
	}
	d.pairs(n, path, func(name string, k, val *yaml.Node) {
		i, ok := fields[name]
		if !ok {
			d.r.addAt(k.Line, join(path, name), fmt.Errorf("unknown key"))
			return
		}
		// password_hash is taken literally: a bcrypt hash is full of '$'.
		d.decode(val, join(path, name), v.Field(i), name != "password_hash")
	})
}

// mapping fills a map[string]T (providers) from a mapping.
func (d *decoder) mapping(n *yaml.Node, path string, v reflect.Value) {
	if !d.want(n, path, yaml.MappingNode, "a mapping of names") {
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	d.pairs(n, path, func(name string, _, val *yaml.Node) {
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, join(path, name), elem, true)
		v.SetMapIndex(reflect.ValueOf(name), elem)
	})
}

// sequence fills a slice from a list.
func (d *decoder) sequence(n *yaml.Node, path string, v reflect.Value, expand bool) {
	if !d.want(n, path, yaml.SequenceNode, "a list") {
		return
	}
	s := reflect.MakeSlice(v.Type(), 0, len(n.Content))
	for i, item := range n.Content {
		key := fmt.Sprintf("%s[%d]", path, i)
		d.r.lines[key] = item.Line
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(item, key, elem, expand)
		s = reflect.Append(s, elem)
	}
	v.Set(s)
}

// scalar returns n's value, ${NAME}-expanded when expand is set. Any scalar
// is accepted as a string: `tenant: 12345` means the text.
func (d *decoder) scalar(n *yaml.Node, path string, expand bool, what string) (string, bool) {
	if !d.want(n, path, yaml.ScalarNode, what) {
		return "", false
	}
	if !expand {
		return n.Value, true
	}
	s, err := expandEnv(n.Value, d.getenv)
	if err != nil {
		d.r.addAt(n.Line, path, err)
		return "", false
	}
	return s, true
}

func (d *decoder) want(n *yaml.Node, path string, kind yaml.Kind, what string) bool {
	if n.Kind == kind {
		return true
	}
	got := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list", yaml.ScalarNode: "a value"}[n.Kind]
	d.r.addAt(n.Line, path, fmt.Errorf("want %s, not %s", what, got))
	return false
}

// pairs calls f for each entry of a mapping and records each key's line.
// Duplicate keys are problems (yaml.v3 checks them only when decoding into
// Go values). Merge keys (<<) are not supported: they are reported as
// unknown keys rather than half-honoured.
func (d *decoder) pairs(n *yaml.Node, path string, f func(key string, k, v *yaml.Node)) {
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := join(path, k.Value)
		if line, dup := first[k.Value]; dup {
			d.r.addAt(k.Line, key, fmt.Errorf("duplicate key (first at line %d)", line))
			continue
		}
		first[k.Value] = k.Line
		d.r.lines[key] = k.Line
		f(k.Value, k, v)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// expandEnv replaces ${NAME} with the value of the environment variable NAME
// (an unset one is an error; set but empty is fine) and $$ with $. Any other
// $ is kept, so values that merely contain a dollar need no escaping; NAME is
// [A-Za-z_][A-Za-z0-9_]*.
func expandEnv(s string, getenv func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) || (s[i+1] != '$' && s[i+1] != '{') {
			b.WriteByte(s[i])
			continue
		}
		if s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf(`"${" without a closing "}" (write $$ for a literal $)`)
		}
		name := s[i+2 : i+end]
		if !isEnvName(name) {
			return "", fmt.Errorf("%q is not a variable name (letters, digits and _; write $$ for a literal $)", name)
		}
		value, ok := getenv(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		b.WriteString(value)
		i += end
	}
	return b.String(), nil
}

func isEnvName(s string) bool {
	for i, c := range s {
		letter := c == '_' || (c|0x20 >= 'a' && c|0x20 <= 'z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}
