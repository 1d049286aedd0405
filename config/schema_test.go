package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"gopkg.in/yaml.v3"
)

const schemaFile = "../config.schema.json"

// TestSchemaFile: the shipped config.schema.json is what JSONSchema
// generates from the types today, so a key added to a struct fails here
// until `go generate ./config` is run.
func TestSchemaFile(t *testing.T) {
	want, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("config.schema.json is out of date: run `go generate ./config`")
	}
	first, _, _ := strings.Cut(string(mustRead(t, "../config.example.yaml")), "\n")
	if first != "# yaml-language-server: $schema=config.schema.json" {
		t.Errorf("config.example.yaml's first line %q does not refer to the schema", first)
	}
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// schemaKey is one key of the schema: its path ("providers.*.smtp.tls",
// "accounts[].name"), the JSON kind of its value and its enum.
type schemaKey struct {
	path string
	kind string // object, array, string, boolean, integer, duration
	enum []string
}

// schemaKeys walks the generated schema (the JSON, not the Go types).
func schemaKeys(t *testing.T) []schemaKey {
	t.Helper()
	b, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	var keys []schemaKey
	var walk func(path string, s map[string]any, isKey bool)
	walk = func(path string, s map[string]any, isKey bool) {
		k := schemaKey{path: path}
		if e, ok := s["enum"].([]any); ok {
			for _, v := range e {
				k.enum = append(k.enum, v.(string))
			}
			k.kind = "string"
		}
		if typ, ok := s["type"].(string); ok {
			k.kind = typ
		}
		if alts, ok := s["anyOf"].([]any); ok {
			first := alts[0].(map[string]any)
			k.kind, _ = first["type"].(string)
			if _, dur := first["pattern"]; dur {
				k.kind = "duration"
			}
		}
		if isKey {
			keys = append(keys, k)
		}
		if props, ok := s["properties"].(map[string]any); ok {
			if s["additionalProperties"] != false {
				t.Errorf("%s: the schema allows keys the loader refuses", path)
			}
			for name, p := range props {
				walk(join(path, name), p.(map[string]any), true)
			}
		} else if ap, ok := s["additionalProperties"].(map[string]any); ok {
			walk(path+".*", ap, false)
		}
		if items, ok := s["items"].(map[string]any); ok && items["type"] == "object" {
			walk(path+"[]", items, false)
		}
	}
	walk("", root, false)
	slices.SortFunc(keys, func(a, b schemaKey) int { return strings.Compare(a.path, b.path) })
	return keys
}

// loaderKeys lists the keys the decoder accepts, by the rule it follows
// (decoder.structure: a struct's fields with a yaml tag other than "-").
func loaderKeys(t reflect.Type, path string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeFor[time.Duration]():
	case t.Kind() == reflect.Struct:
		for i := range t.NumField() {
			tag := t.Field(i).Tag.Get("yaml")
			if tag == "" || tag == "-" {
				continue
			}
			*out = append(*out, join(path, tag))
			loaderKeys(t.Field(i).Type, join(path, tag), out)
		}
	case t.Kind() == reflect.Map:
		loaderKeys(t.Elem(), path+".*", out)
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.String:
		loaderKeys(t.Elem(), path+"[]", out)
	}
}

// TestSchemaKeys: the schema has exactly the keys the loader accepts.
func TestSchemaKeys(t *testing.T) {
	var fromSchema []string
	for _, k := range schemaKeys(t) {
		fromSchema = append(fromSchema, k.path)
	}
	var fromLoader []string
	loaderKeys(reflect.TypeFor[Config](), "", &fromLoader)
	slices.Sort(fromLoader)
	if !slices.Equal(fromSchema, fromLoader) {
		t.Fatalf("schema keys\n%s\nloader keys\n%s", strings.Join(fromSchema, "\n"), strings.Join(fromLoader, "\n"))
	}
}

// schemaBase is a valid configuration that the key tests change one key of.
func schemaBase() map[string]any {
	return map[string]any{
		"providers": map[string]any{"p": map[string]any{
			"type": "microsoft", "tenant": "contoso.com", "client_id": "id", "client_secret": "s",
			"smtp": map[string]any{"addr": "127.0.0.1:587", "tls": "starttls"},
			"imap": map[string]any{"addr": "127.0.0.1:993", "tls": "implicit"},
		}},
		"accounts": []any{map[string]any{
			"name": "a", "provider": "p", "mailbox": "a@contoso.com", "username": "u", "password_hash": hash,
		}},
	}
}

// setKey sets the schema path (with * for the provider p and [] for the
// first account) in doc to v, creating mappings on the way, and returns
// the loader's name for it (providers.p.grant, accounts[0].name).
func setKey(doc map[string]any, path string, v any) string {
	parts := strings.Split(path, ".")
	var concrete []string
	m := doc
	for i, part := range parts {
		name, list := strings.CutSuffix(part, "[]")
		if part == "*" {
			name = "p"
		}
		concrete = append(concrete, name)
		if list {
			concrete[len(concrete)-1] += "[0]"
		}
		if i == len(parts)-1 {
			m[name] = v
			break
		}
		if list {
			m = m[name].([]any)[0].(map[string]any)
			continue
		}
		next, ok := m[name].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[name] = next
		}
		m = next
	}
	return strings.Join(concrete, ".")
}

// problemsAt parses doc and returns the messages of the problems at key.
func problemsAt(t *testing.T, doc map[string]any, key string) []string {
	t.Helper()
	data, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse("schema-test.yaml", data, env())
	var out []string
	for _, e := range unjoin(err) {
		var p *Problem
		if errors.As(e, &p) && p.Key == key {
			out = append(out, p.Err.Error())
		}
	}
	return out
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
}

// isTypeProblem tells the decoder's messages about a value of the wrong
// kind (decoder.want and the scalar parsers) from the validator's.
func isTypeProblem(msg string) bool {
	for _, p := range []string{"want a string", "want true or false", "want a whole number", "want a duration",
		"want a list", "want a mapping"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// sample is a value of the schema's kind for a key.
func sample(k schemaKey) any {
	switch k.kind {
	case "object":
		return map[string]any{}
	case "array":
		return []any{}
	case "boolean":
		return false
	case "integer":
		return 1
	case "duration":
		return "1h"
	}
	if k.enum != nil {
		return k.enum[0]
	}
	return "x"
}

// TestSchemaAgainstLoader sets every key of the schema, one at a time, to a
// value of the schema's type and checks that the loader knows it; every
// enum value is accepted and any other value refused at that key; and no
// other string key is an enum in the loader (a "have:" list), so an enum
// added to the validator without its schemaDocs entry is caught.
func TestSchemaAgainstLoader(t *testing.T) {
	const bogus = "zz-not-a-value"
	for _, k := range schemaKeys(t) {
		doc := schemaBase()
		key := setKey(doc, k.path, sample(k))
		for _, msg := range problemsAt(t, doc, key) {
			if msg == "unknown key" || isTypeProblem(msg) {
				t.Errorf("%s: schema kind %s: loader says %s", key, k.kind, msg)
			}
		}
		if k.kind != "string" {
			continue
		}
		for _, v := range k.enum {
			doc := schemaBase()
			setKey(doc, k.path, v)
			for _, msg := range problemsAt(t, doc, key) {
				if strings.Contains(msg, "is not a") {
					t.Errorf("%s: %q is in the schema's enum, loader says %s", key, v, msg)
				}
			}
		}
		doc = schemaBase()
		setKey(doc, k.path, bogus)
		msgs := strings.Join(problemsAt(t, doc, key), "; ")
		switch {
		case k.enum != nil && !strings.Contains(msgs, "is not a"):
			t.Errorf("%s: %q is outside the schema's enum, but the loader says %q", key, bogus, msgs)
		case k.enum == nil && strings.Contains(msgs, "(have: ") && k.path != "accounts[].provider":
			t.Errorf("%s: the loader has a list of values (%s): add it to schemaDocs' enum", key, msgs)
		}
	}
}

// TestSchemaValidatesExamples checks the shipped files against the schema
// with a validator nobody here wrote (Python's jsonschema, Draft 2020-12),
// which also checks the schema itself against the meta-schema; and that a
// misspelt key and a wrong enum value are refused.
func TestSchemaValidatesExamples(t *testing.T) {
	py := testutil.Tool(t, "python3")
	if err := exec.Command(py, "-c", "import jsonschema, yaml").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3-jsonschema or python3-yaml not installed (CI installs them in .ci/run): %v", err)
		}
		t.Skipf("python3-jsonschema or python3-yaml not installed: %v", err)
	}
	const script = `
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
bad = 0
for f in sys.argv[2:]:
    for e in v.iter_errors(yaml.safe_load(open(f))):
        print(f + ": " + "/".join(map(str, e.absolute_path)) + ": " + e.message)
        bad += 1
sys.exit(1 if bad else 0)
`
	validate := func(files ...string) (string, error) {
		out, err := exec.Command(py, append([]string{"-c", script, schemaFile}, files...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := validate("../config.example.yaml", "../examples/docker-compose/config.yaml"); err != nil {
		t.Fatalf("the examples do not validate: %v\n%s", err, out)
	}
	dir := t.TempDir()
	for name, body := range map[string]string{
		"misspelt.yaml": prov + acct + "listen:\n  smtp: {adr: \"127.0.0.1:25\"}\n",
		"enum.yaml":     prov + acct + "log: {level: verbose}\n",
	} {
		f := dir + "/" + name
		if err := os.WriteFile(f, []byte(strings.ReplaceAll(body, "HASH", hash)), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := validate(f); err == nil {
			t.Errorf("%s validates against the schema:\n%s", name, out)
		} else {
			t.Log(strings.TrimSpace(fmt.Sprint(out)))
		}
	}
}
