package config

//go:generate go run ./internal/genschema ../config.schema.json

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"time"
)

// JSONSchema returns the JSON Schema (draft 2020-12) of the configuration
// file, for editors (yaml-language-server) that complete and check keys.
//
// It is derived from the Go types by reflection over the yaml tags, the
// same tags the decoder reads, so a key added to a struct is in the schema
// once config.schema.json is regenerated (`go generate ./config`); only its
// description and, for an enumerated key, its values come from schemaDocs.
// The schema checks the shape (keys, types, enums); the loader checks the
// rest (ranges, files, cross-key rules), and reports it with file:line. It
// is a little stricter than the loader in one place: a key written with no
// value (`listen:`), which the loader takes as left out, is a type error.
func JSONSchema() ([]byte, error) {
	s := schemaOf(reflect.TypeFor[Config]())
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["title"] = "oauthrelay configuration"
	s["description"] = "config.yaml of oauthrelay; every key is described in config.example.yaml. " +
		"${NAME} in a value is replaced by the environment variable NAME."
	s["$defs"] = map[string]any{
		"env": map[string]any{
			"type":        "string",
			"pattern":     envPattern,
			"description": "a ${NAME} environment variable reference",
		},
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // "<>" stays readable in descriptions
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return nil, fmt.Errorf("config: schema: %w", err)
	}
	return b.Bytes(), nil
}

// envPattern matches a value that holds ${NAME}: the decoder expands it
// before checking the type, so `allow_insecure: ${INSECURE}` is valid.
const envPattern = `\$\{[A-Za-z_][A-Za-z0-9_]*\}`

// keyDoc is what the types cannot say about a key.
type keyDoc struct {
	desc string
	enum []string
}

// schemaDocs describes keys by "GoType.yaml_key" (a type used in several
// places, such as Listener or LimitsOverride, is described once). A key
// missing here is still in the schema, without a description.
var schemaDocs = map[string]keyDoc{
	"Config.state_dir": {desc: "Token store, its key file and the spool. Default: $STATE_DIRECTORY (systemd), " +
		`%ProgramData%\oauthrelay on Windows, else /var/lib/oauthrelay.`},
	"Config.log":       {desc: "Logging."},
	"Config.listen":    {desc: "Local listeners the legacy application connects to."},
	"Config.limits":    {desc: "What one mailbox may do upstream (defaults: Exchange Online's limits)."},
	"Config.queue":     {desc: "Retries of accounts with delivery: queue."},
	"Config.providers": {desc: "Identity providers: one entry per app registration, referenced by name from accounts."},
	"Config.accounts":  {desc: "Accounts: each maps a local login to a mailbox."},
	"Config.cluster":   {desc: "Several relay instances sharing one set of mailbox limits and token state on Redis/Valkey; left out, the relay is on its own."},

	"Cluster.store":         {desc: "redis://host:port[/db] or rediss://host:port[/db] (TLS, verified). No password in the URL."},
	"Cluster.instance":      {desc: "This relay's name among the others (letters, digits, . _ -); required with store."},
	"Cluster.username":      {desc: "Redis ACL user (default: the default user)."},
	"Cluster.password":      {desc: "The store's password; prefer password_file or ${ENV}."},
	"Cluster.password_file": {desc: "File holding the store's password."},
	"Cluster.ca_file":       {desc: "PEM CA certificates trusted besides the system roots (rediss:// only)."},

	"Log.level":  {desc: "Default info; secrets are never logged.", enum: []string{"debug", "info", "warn", "error"}},
	"Log.format": {desc: "Default text.", enum: []string{"text", "json"}},

	"Listen.smtp":  {desc: "SMTP listener (default 127.0.0.1:2525)."},
	"Listen.imap":  {desc: "IMAP listener (default 127.0.0.1:1143)."},
	"Listen.admin": {desc: "HTTP: /healthz, /readyz, /metrics, the status page, the OAuth callback (default 127.0.0.1:8025)."},

	"Listener.addr":           {desc: `host:port, or "off". A non-loopback address needs tls starttls or implicit, or allow_insecure.`},
	"Listener.tls":            {desc: "Default none; starttls and implicit need cert_file and key_file.", enum: []string{TLSNone, TLSStartTLS, TLSImplicit}},
	"Listener.cert_file":      {desc: "PEM certificate (chain), relative to the config file's directory."},
	"Listener.key_file":       {desc: "PEM private key matching cert_file."},
	"Listener.allow_insecure": {desc: "true: allow tls none on a non-loopback address (the password crosses the network in clear)."},

	"Admin.addr":          {desc: `host:port, or "off". A non-loopback address needs username and password_hash.`},
	"Admin.username":      {desc: "HTTP basic auth user for the admin pages."},
	"Admin.password_hash": {desc: "bcrypt hash (`oauthrelay hash-password`) of the admin password."},
	"Admin.cert_file":     {desc: "PEM certificate (chain): the admin pages over HTTPS (with key_file)."},
	"Admin.key_file":      {desc: "PEM private key matching cert_file."},

	"Limits.connections":            {desc: "Authenticated upstream SMTP sessions at once (default 3, Exchange's); 1 to 100."},
	"Limits.messages_per_minute":    {desc: "Default 30 (Exchange's); 1 to 1000000."},
	"Limits.recipients_per_day":     {desc: "Rolling 24 hours; default 10000 (Exchange's); 1 to 1000000. With cluster, in total for every instance."},
	"Limits.recipients_per_message": {desc: "Default 500 (Exchange's); 1 to 1000."},
	"Limits.max_wait":               {desc: "delivery direct: longest wait for a connection or a slot before 451 4.7.0 (default 2m); 0 to 1h."},

	"Queue.max_age":     {desc: "A queued message is retried up to this age, then bounced (default 5d); 1h to 30d."},
	"Queue.keep_failed": {desc: "How long failed messages are kept for `oauthrelay queue` (default 7d; 0 = not kept); 0 to 90d."},

	"Provider.type":                    {desc: "Required.", enum: []string{TypeMicrosoft, TypeGoogle, TypeGeneric}},
	"Provider.cloud":                   {desc: "microsoft only; default global.", enum: []string{CloudGlobal, CloudUSGov, CloudChina}},
	"Provider.tenant":                  {desc: `microsoft only: directory (tenant) id or domain; required for client_credentials, default "organizations" otherwise.`},
	"Provider.client_id":               {desc: "Application (client) id; required."},
	"Provider.client_secret":           {desc: "The client secret (prefer client_secret_file or ${ENV}); or client_certificate_file + client_key_file."},
	"Provider.client_secret_file":      {desc: "File holding the client secret (trailing newline removed)."},
	"Provider.client_certificate_file": {desc: "PEM certificate uploaded to the app registration (with client_key_file)."},
	"Provider.client_key_file":         {desc: "RSA private key of client_certificate_file, PKCS#1 or PKCS#8."},
	"Provider.grant": {desc: "Default client_credentials (google: authorization_code). client_credentials: app-only, no sign-in; " +
		"authorization_code, device_code: delegated, sign in once with `oauthrelay login`; password: ROPC, no MFA.",
		enum: []string{GrantClientCredentials, GrantAuthorizationCode, GrantDeviceCode, GrantPassword}},
	"Provider.token_url":     {desc: "Filled in from type and cloud when empty; https:// (http:// only to loopback)."},
	"Provider.authorize_url": {desc: "Filled in from type and cloud when empty."},
	"Provider.device_url":    {desc: "Filled in from type and cloud when empty."},
	"Provider.scopes":        {desc: "Filled in from type, cloud and grant when empty."},
	"Provider.redirect_url":  {desc: "Redirect URI registered for authorization_code; empty: a loopback one, or the admin listener's /oauth2/callback."},
	"Provider.smtp":          {desc: "Upstream SMTP server (default from type and cloud)."},
	"Provider.imap":          {desc: "Upstream IMAP server (default from type and cloud)."},
	"Provider.ca_file":       {desc: "PEM CA bundle added to the system roots for upstream TLS."},

	"Upstream.addr": {desc: "host:port."},
	"Upstream.tls":  {desc: "none only to a loopback host.", enum: []string{TLSStartTLS, TLSImplicit, TLSNone}},

	"Account.name":                 {desc: "Required, unique; letters, digits, . _ - (names the token file)."},
	"Account.provider":             {desc: "A key of providers (required)."},
	"Account.mailbox":              {desc: "The mailbox, the XOAUTH2 user (required); for app-only grants also \"*@domain\" (a domain-wide account)."},
	"Account.username":             {desc: "What the application logs in with; unique, case-insensitive."},
	"Account.password_hash":        {desc: "bcrypt hash of the application's password (`oauthrelay hash-password`); never ${ENV}-expanded."},
	"Account.password":             {desc: "grant password only: the mailbox's own password."},
	"Account.password_file":        {desc: "grant password only: file holding the mailbox's password."},
	"Account.password_passthrough": {desc: "grant password only: the application's login password is the mailbox password."},
	"Account.allowed_from":         {desc: `MAIL FROM patterns: "user@domain", "*@domain", "*", "<>". Default: [mailbox].`},
	"Account.enforce_header_from":  {desc: "true: also refuse a From: header that allowed_from does not match."},
	"Account.relay_from":           {desc: "IP addresses and CIDR prefixes that may send without AUTH (SMTP)."},
	"Account.delivery": {desc: "direct (default): the app waits for the upstream's verdict; queue: spooled (fsync) before 250, delivered later.",
		enum: []string{DeliveryDirect, DeliveryQueue}},
	"Account.limits":    {desc: "Overrides of the top-level limits for this account (any of its keys)."},
	"Account.mailboxes": {desc: "The addresses this account may open (a domain-wide mailbox pattern, or shared mailboxes a delegate opens)."},
	"Account.send_as": {desc: "Who logs in upstream over SMTP for a MAIL FROM that is none of the account's mailboxes: mailbox (default; the mailbox logged in, which needs SendAs) or sender (app-only grants: that address itself).",
		enum: []string{SendAsMailbox, SendAsSender}},

	// Keys of the Graph upstream (arriving from its branch: the entries wait
	// here so that its merge needs only `go generate ./config`).
	"Account.upstream": {desc: "smtp (default): SMTP AUTH with XOAUTH2; graph: Microsoft Graph sendMail; auto: SMTP until Exchange answers 535 5.7.139, then Graph.",
		enum: []string{"smtp", "graph", "auto"}},
	"Account.save_to_sent_items": {desc: "upstream graph or auto: keep a copy in Sent Items (default true)."},
	"Provider.graph":             {desc: "Microsoft Graph, for accounts with upstream graph or auto (filled in from type and cloud)."},
	"GraphAPI.url":               {desc: "Graph's base URL, e.g. https://graph.microsoft.com."},
	"GraphAPI.scopes":            {desc: "Filled in from the grant when empty."},

	"LimitsOverride.connections":            {desc: "See limits.connections."},
	"LimitsOverride.messages_per_minute":    {desc: "See limits.messages_per_minute."},
	"LimitsOverride.recipients_per_day":     {desc: "See limits.recipients_per_day."},
	"LimitsOverride.recipients_per_message": {desc: "See limits.recipients_per_message."},
	"LimitsOverride.max_wait":               {desc: "See limits.max_wait; this account's own."},
}

var durationSchemaType = reflect.TypeFor[time.Duration]()

// schemaOf is the schema of values of type t, in the kinds the decoder
// knows (see decoder): where the decoder takes any scalar and checks its
// form, the schema allows a string holding ${NAME} besides the native type.
func schemaOf(t reflect.Type) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationSchemaType {
		return map[string]any{"anyOf": []any{
			map[string]any{"type": "string", "pattern": `^([0-9]+d)?([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))*$`},
			map[string]any{"const": 0},
			map[string]any{"$ref": "#/$defs/env"},
		}, "description": `a duration: "90s", "2m", "1h30m", "5d", "1d12h"`}
	}
	switch t.Kind() {
	case reflect.Struct:
		props := map[string]any{}
		for i := range t.NumField() {
			f := t.Field(i)
			key := f.Tag.Get("yaml")
			if key == "" || key == "-" {
				continue
			}
			p := schemaOf(f.Type)
			if doc, ok := schemaDocs[t.Name()+"."+key]; ok {
				if doc.desc != "" {
					p["description"] = doc.desc
				}
				if doc.enum != nil {
					p["enum"] = doc.enum
					delete(p, "type")
				}
			}
			props[key] = p
		}
		return map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem())}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"anyOf": []any{
			map[string]any{"type": "boolean"},
			map[string]any{"$ref": "#/$defs/env"},
		}}
	case reflect.Int:
		return map[string]any{"anyOf": []any{
			map[string]any{"type": "integer"},
			map[string]any{"$ref": "#/$defs/env"},
		}}
	}
	panic(fmt.Sprintf("config: no schema for %s", t)) // a schema bug, not user input
}
