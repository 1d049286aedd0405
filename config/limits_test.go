package config

// The limits, queue and delivery keys of the issue "Exchange-aware
// delivery", and the int and duration values they brought to the decoder.

import (
	"strings"
	"testing"
	"time"
)

func TestLimitProblems(t *testing.T) {
	const forms = `want a duration such as "90s", "2m", "120h", "5d" or "1d12h", not `
	ropc := "providers:\n  p: {type: microsoft, client_id: id, grant: password}\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"int forms", prov + acct + "limits:\n  connections: 3.5\n  messages_per_minute: many\n  recipients_per_day: 0x10\n  recipients_per_message: [1]\n", []string{
			`c.yaml:6: limits.connections: want a whole number, not "3.5"`,
			`c.yaml:7: limits.messages_per_minute: want a whole number, not "many"`,
			`c.yaml:8: limits.recipients_per_day: want a whole number, not "0x10"`,
			`c.yaml:9: limits.recipients_per_message: want a whole number, not a list`}},
		{"int too large", prov + acct + "limits:\n  connections: 99999999999999999999\n", []string{
			`c.yaml:6: limits.connections: "99999999999999999999" is too large a number`}},
		{"ints too small", prov + acct + "limits:\n  connections: 0\n  messages_per_minute: -1\n  recipients_per_day: 0\n  recipients_per_message: 0\n", []string{
			`c.yaml:6: limits.connections: want 1 to 100, not 0`,
			`c.yaml:7: limits.messages_per_minute: want 1 to 1000000, not -1`,
			`c.yaml:8: limits.recipients_per_day: want 1 to 1000000, not 0`,
			`c.yaml:9: limits.recipients_per_message: want 1 to 1000, not 0`}},
		{"ints too large", prov + acct + "limits:\n  connections: 101\n  messages_per_minute: 1_000_001\n  recipients_per_day: 1_000_001\n  recipients_per_message: 1001\n", []string{
			`c.yaml:6: limits.connections: want 1 to 100, not 101`,
			`c.yaml:7: limits.messages_per_minute: want 1 to 1000000, not 1000001`,
			`c.yaml:8: limits.recipients_per_day: want 1 to 1000000, not 1000001`,
			`c.yaml:9: limits.recipients_per_message: want 1 to 1000, not 1001`}},
		{"unset variable in an int", prov + acct + "limits:\n  connections: ${NOPE}\n", []string{
			`c.yaml:6: limits.connections: environment variable NOPE is not set`}},
		{"duration forms", prov + acct + "limits:\n  max_wait: 120\nqueue:\n  max_age: 5days\n  keep_failed: 1d-2h\n", []string{
			`c.yaml:6: limits.max_wait: ` + forms + `"120"`,
			`c.yaml:8: queue.max_age: ` + forms + `"5days"`,
			`c.yaml:9: queue.keep_failed: ` + forms + `"1d-2h"`}},
		{"duration not a value", prov + acct + "queue: {max_age: {days: 5}}\n", []string{
			`c.yaml:5: queue.max_age: want a duration such as "90s", "2m", "120h", "5d" or "1d12h", not a mapping`}},
		{"unset variable in a duration", prov + acct + "queue: {max_age: \"${NOPE}d\"}\n", []string{
			`c.yaml:5: queue.max_age: environment variable NOPE is not set`}},
		{"durations too small", prov + acct + "limits: {max_wait: -1s}\nqueue:\n  max_age: 59m\n  keep_failed: -1h\n", []string{
			`c.yaml:5: limits.max_wait: want 0s to 1h, not -1s`,
			`c.yaml:7: queue.max_age: want 1h to 30d, not 59m`,
			`c.yaml:8: queue.keep_failed: want 0s to 90d, not -1h`}},
		{"durations too large", prov + acct + "limits: {max_wait: 61m}\nqueue:\n  max_age: 30d1s\n  keep_failed: 91d\n", []string{
			`c.yaml:5: limits.max_wait: want 0s to 1h, not 1h1m`,
			`c.yaml:7: queue.max_age: want 1h to 30d, not 30d1s`,
			`c.yaml:8: queue.keep_failed: want 0s to 90d, not 91d`}},
		{"delivery", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_hash: \"HASH\", delivery: spool}\n" +
			"  - {name: b, provider: p, mailbox: a@b.c, relay_from: [10.0.0.1], delivery: Queue}\n", []string{
			`c.yaml:4: accounts[0].delivery: "spool" is not a delivery mode (have: direct, queue)`,
			`c.yaml:5: accounts[1].delivery: "Queue" is not a delivery mode (have: direct, queue)`}},
		{"queue needs the password later", ropc + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, username: u, password_passthrough: true, delivery: queue}\n", []string{
			`c.yaml:4: accounts[0].delivery: queue is not possible with password_passthrough: a queued message is delivered after the session that brought the password has ended`}},
		{"account limits", prov + "accounts:\n  - name: a\n    provider: p\n    mailbox: a@b.c\n    relay_from: [10.0.0.1]\n" +
			"    limits: {connections: 0, max_wait: 2h, max_age: 1d}\n  - {name: b, provider: p, mailbox: b@b.c, relay_from: [10.0.0.2], limits: 60}\n", []string{
			`c.yaml:8: accounts[0].limits.max_age: unknown key`,
			`c.yaml:8: accounts[0].limits.connections: want 1 to 100, not 0`,
			`c.yaml:8: accounts[0].limits.max_wait: want 0s to 1h, not 2h`,
			`c.yaml:9: accounts[1].limits: want a mapping of keys, not a value`}},
		// A bad top-level value is reported once, where it is written, not
		// again for each account that inherits it.
		{"inherited once", prov + "accounts:\n  - {name: a, provider: p, mailbox: a@b.c, relay_from: [10.0.0.1], limits: {max_wait: 1m}}\n" +
			"limits: {connections: 200}\n", []string{
			`c.yaml:5: limits.connections: want 1 to 100, not 200`}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got := parseIn(dir, tt.yaml, env())
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// Every key set: at the top level (block style, ${ENV} for an int and a
// duration, a null key keeping its default, an explicit 0 kept where 0 is
// allowed), and per account (only the keys it sets, 0 kept too).
func TestLimits(t *testing.T) {
	yaml := prov + `limits:
  connections: ${CONN}
  messages_per_minute: 1_000
  recipients_per_day: ~
  recipients_per_message: 1000
  max_wait: ${WAIT}
queue:
  max_age: 1d12h
  keep_failed: 0
accounts:
  - {name: a, provider: p, mailbox: a@contoso.com, username: u, password_hash: "HASH",
     limits: {messages_per_minute: 60, connections: ~, max_wait: 0}, delivery: queue}
  - {name: b, provider: p, mailbox: b@contoso.com, username: v, password_hash: "HASH", limits: ~, delivery: direct}
`
	c, err := parseIn(t.TempDir(), yaml, env("CONN", "5", "WAIT", "90s"))
	if err != "" {
		t.Fatal(err)
	}
	top := Limits{Connections: 5, MessagesPerMinute: 1000, RecipientsPerDay: 10000, RecipientsPerMessage: 1000, MaxWait: 90 * time.Second}
	if c.Limits != top {
		t.Errorf("limits\n got %+v\nwant %+v", c.Limits, top)
	}
	if want := (Queue{MaxAge: 36 * time.Hour}); c.Queue != want {
		t.Errorf("queue %+v, want %+v", c.Queue, want)
	}
	a, b := c.Account("a"), c.Account("b")
	wantA := top
	wantA.MessagesPerMinute, wantA.MaxWait = 60, 0
	if a.EffectiveLimits != wantA || a.Delivery != DeliveryQueue {
		t.Errorf("account a: %+v, %q\nwant %+v, queue", a.EffectiveLimits, a.Delivery, wantA)
	}
	if o := a.Limits; o == nil || o.Connections != nil || o.RecipientsPerDay != nil || *o.MessagesPerMinute != 60 || *o.MaxWait != 0 {
		t.Errorf("account a's override %+v: want messages_per_minute and max_wait set, nothing else", o)
	}
	if b.EffectiveLimits != top || b.Delivery != DeliveryDirect {
		t.Errorf("account b: %+v, %q\nwant %+v, direct", b.EffectiveLimits, b.Delivery, top)
	}
}

// delivery: queue needs a spool directory, and state_dir always has one:
// the file's, or the default.
func TestQueueStateDir(t *testing.T) {
	c, err := parseIn(t.TempDir(), prov+"accounts:\n  - {name: s, provider: p, mailbox: s@b.c, relay_from: [10.0.0.1], delivery: queue}\n", env())
	if err != "" {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/oauthrelay" || c.Account("s").Delivery != DeliveryQueue {
		t.Errorf("state_dir %q, delivery %q", c.StateDir, c.Account("s").Delivery)
	}
}

// Two accounts sending as one mailbox (written in different case) share it:
// each limit is the lower of the two; the mailbox of a third account and a
// mailbox no account has are not affected.
func TestMailboxLimits(t *testing.T) {
	yaml := prov + `limits: {recipients_per_day: 5000}
accounts:
  - {name: a, provider: p, mailbox: shared@contoso.com, relay_from: [10.0.0.1], limits: {connections: 2, max_wait: 30s}}
  - {name: b, provider: p, mailbox: Shared@Contoso.COM, relay_from: [10.0.0.2], limits: {messages_per_minute: 10, recipients_per_message: 1000}}
  - {name: c, provider: p, mailbox: other@contoso.com, relay_from: [10.0.0.3], limits: {connections: 1}}
`
	c, err := parseIn(t.TempDir(), yaml, env())
	if err != "" {
		t.Fatal(err)
	}
	top := Limits{Connections: 3, MessagesPerMinute: 30, RecipientsPerDay: 5000, RecipientsPerMessage: 500, MaxWait: 2 * time.Minute}
	shared := Limits{Connections: 2, MessagesPerMinute: 10, RecipientsPerDay: 5000, RecipientsPerMessage: 500, MaxWait: 30 * time.Second}
	other := top
	other.Connections = 1
	for _, tc := range []struct {
		mailbox string
		want    Limits
	}{
		{"shared@contoso.com", shared},
		{"SHARED@contoso.com", shared},
		{"other@contoso.com", other},
		{"nobody@contoso.com", top},
	} {
		if got := c.MailboxLimits(tc.mailbox); got != tc.want {
			t.Errorf("MailboxLimits(%q)\n got %+v\nwant %+v", tc.mailbox, got, tc.want)
		}
	}
	// Each account keeps its own effective limits; the mailbox's are the
	// minimum of them.
	if b := c.Account("b").EffectiveLimits; b.RecipientsPerMessage != 1000 || b.Connections != 3 || b.MaxWait != 2*time.Minute {
		t.Errorf("account b's effective limits %+v", b)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90s":        90 * time.Second,
		"2m":         2 * time.Minute,
		"120h":       120 * time.Hour,
		"1h30m":      90 * time.Minute,
		"1.5h":       90 * time.Minute,
		"500ms":      500 * time.Millisecond,
		"0":          0,
		"0d":         0,
		"5d":         120 * time.Hour,
		"30d":        720 * time.Hour,
		"1d12h":      36 * time.Hour,
		"1d0s":       24 * time.Hour,
		"2d3h4m5s":   51*time.Hour + 4*time.Minute + 5*time.Second,
		"-5m":        -5 * time.Minute, // a form Go accepts; the key's range refuses it
		"106751d":    106751 * day,
		"106751d23h": 106751*day + 23*time.Hour,
	} {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{
		"", "120", "5", "d", "5days", "5D", "1d-2h", "1d+2h", "-1d", "+1d", "1.5d", "1_0d", "1d2d", "5 d", " 5d", "5d ",
		"1d12", "1h1d", "h", "1e3s", "106752d", "106751d24h", "2562048h", "${X}",
	} {
		got, err := parseDuration(in)
		if want := `want a duration such as "90s", "2m", "120h", "5d" or "1d12h", not ` + `"` + in + `"`; err == nil || err.Error() != want {
			t.Errorf("parseDuration(%q) = %v, %v; want the error %s", in, got, err, want)
		}
	}
}

func TestParseInt(t *testing.T) {
	for in, want := range map[string]int{
		"0": 0, "3": 3, "+3": 3, "-1": -1, "010": 10, "10_000": 10000, "1_000_000": 1000000,
	} {
		if got, err := parseInt(in); err != nil || got != want {
			t.Errorf("parseInt(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-", "+-1", "--1", "3.5", "1e3", "0x10", "0o10", "_1", "1_", "1__0", " 1", "1 ", "٣", "three"} {
		if got, err := parseInt(in); err == nil || err.Error() != `want a whole number, not "`+in+`"` {
			t.Errorf("parseInt(%q) = %d, %v; want a whole number error", in, got, err)
		}
	}
	if _, err := parseInt("9223372036854775808"); err == nil || err.Error() != `"9223372036854775808" is too large a number` {
		t.Errorf("parseInt(2^63): %v", err)
	}
}

// Durations in messages read as they are written in the file.
func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 500 * time.Millisecond: "500ms", 90 * time.Second: "1m30s", 2 * time.Minute: "2m", time.Hour: "1h",
		61 * time.Minute: "1h1m", 36 * time.Hour: "1d12h", 5 * day: "5d", 30*day + time.Second: "30d1s",
		day + 30*time.Minute: "1d30m", -time.Second: "-1s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
