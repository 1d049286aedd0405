package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
)

func TestThrottle(t *testing.T) {
	th := NewThrottle()
	now := time.Unix(1000, 0)
	th.now = func() time.Time { return now }
	a := throttleKey{addr: netip.MustParseAddr("192.0.2.1"), user: "erp"}
	b := throttleKey{addr: netip.MustParseAddr("192.0.2.2"), user: "erp"}
	other := throttleKey{addr: a.addr, user: "crm"}
	want := []time.Duration{0, 0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if d := th.Delay(a); d != w {
			t.Fatalf("after %d failures: delay %v, want %v", i, d, w)
		}
		th.Fail(a)
	}
	if d := th.Delay(b); d != 0 {
		t.Fatalf("another address is delayed %v", d)
	}
	if d := th.Delay(other); d != 0 {
		t.Fatalf("another user at the same address is delayed %v", d)
	}
	th.Succeed(a)
	if d := th.Delay(a); d != 0 {
		t.Fatalf("after a success: delay %v", d)
	}
	for i := 0; i < 5; i++ {
		th.Fail(a)
	}
	now = now.Add(window + time.Second)
	if d := th.Delay(a); d != 0 {
		t.Fatalf("after the window: delay %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	now = time.Unix(5000, 0)
	for i := 0; i < 5; i++ {
		th.Fail(b)
	}
	if err := th.Hold(ctx, th.Delay(b)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Hold with a cancelled context = %v", err)
	}
}

func TestPlaintextAuthAllowed(t *testing.T) {
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	loop6 := &net.TCPAddr{IP: net.IPv6loopback, Port: 1}
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}
	for _, tc := range []struct {
		lc     config.Listener
		addr   net.Addr
		tls    bool
		wanted bool
	}{
		{config.Listener{}, loop, false, true},
		{config.Listener{}, loop6, false, true},
		{config.Listener{}, remote, false, false},
		{config.Listener{}, remote, true, true},
		{config.Listener{AllowInsecure: true}, remote, false, true},
	} {
		if got := PlaintextAuthAllowed(tc.lc, tc.addr, tc.tls); got != tc.wanted {
			t.Errorf("PlaintextAuthAllowed(%+v, %v, tls=%v) = %v", tc.lc, tc.addr, tc.tls, got)
		}
	}
}

// testRelay builds a Relay from YAML (client credentials, no token request
// is made by these tests).
func testRelay(t testing.TB, accounts string) *Relay {
	t.Helper()
	yaml := `
state_dir: ` + t.TempDir() + `
providers:
  p:
    type: microsoft
    tenant: contoso.onmicrosoft.com
    client_id: app
    client_secret: s
accounts:
` + accounts
	cfg, err := config.Parse("t.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRelay(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func hash(t testing.TB, pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestLogin(t *testing.T) {
	r := testRelay(t, `
  - name: a
    provider: p
    mailbox: a@contoso.com
    username: Alice
    password_hash: "`+hash(t, "pw-a")+`"
`)
	ctx := context.Background()
	addr := netip.MustParseAddr("127.0.0.1")
	acct, err := r.Login(ctx, addr, "alice", "pw-a")
	if err != nil || acct.Name != "a" {
		t.Fatalf("Login (username case differs) = %v, %v", acct, err)
	}
	// The memo answers the second login; a wrong password is still wrong.
	if _, err := r.Login(ctx, addr, "ALICE", "pw-a"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range [][2]string{{"alice", "pw-nope"}, {"bob", "pw-a"}, {"alice", ""}} {
		_, err := r.Login(ctx, addr, tc[0], tc[1])
		var le *LoginError
		if !errors.As(err, &le) || le.Failure != BadCredentials {
			t.Fatalf("Login(%q, %q) = %v, want BadCredentials", tc[0], tc[1], err)
		}
		if strings.Contains(le.Error(), tc[1]) && tc[1] != "" {
			t.Fatalf("error %q contains the password", le.Error())
		}
	}
	// Two failures for alice and one for an unknown name: the buckets are
	// apart, so none waits yet.
	alice := r.throttle.keyFor(addr, "alice")
	unknown := r.throttle.keyFor(addr, "bob")
	if d := r.throttle.Delay(alice); d != 0 {
		t.Fatalf("after two failures: delay %v", d)
	}
	r.Login(ctx, addr, "Alice", "pw-nope")
	if d := r.throttle.Delay(alice); d != time.Second {
		t.Fatalf("after three failures: delay %v, want 1s", d)
	}
	if d := r.throttle.Delay(unknown); d != 0 {
		t.Fatalf("unknown names delayed by alice's failures: %v", d)
	}
}

func TestAccountForRelay(t *testing.T) {
	r := testRelay(t, `
  - name: scan
    provider: p
    mailbox: scan@contoso.com
    relay_from: ["10.0.5.0/24", "192.0.2.9"]
  - name: batch
    provider: p
    mailbox: batch@contoso.com
    allowed_from: ["*@jobs.contoso.com"]
    relay_from: ["10.0.5.0/24"]
  - name: user
    provider: p
    mailbox: user@contoso.com
    username: u
    password_hash: "`+hash(t, "x")+`"
`)
	for _, tc := range []struct {
		addr, from, want string
	}{
		{"10.0.5.7", "scan@contoso.com", "scan"},
		{"10.0.5.7", "SCAN@contoso.com", "scan"},
		{"10.0.5.7", "nightly@jobs.contoso.com", "batch"},
		{"192.0.2.9", "scan@contoso.com", "scan"},
		{"192.0.2.9", "nightly@jobs.contoso.com", ""},
		{"10.0.6.1", "scan@contoso.com", ""},
		{"10.0.5.7", "user@contoso.com", ""},
	} {
		a := r.AccountForRelay(netip.MustParseAddr(tc.addr), tc.from)
		got := ""
		if a != nil {
			got = a.Name
		}
		if got != tc.want {
			t.Errorf("AccountForRelay(%s, %s) = %q, want %q", tc.addr, tc.from, got, tc.want)
		}
	}
	if !r.MayRelay(netip.MustParseAddr("10.0.5.1")) || r.MayRelay(netip.MustParseAddr("127.0.0.1")) {
		t.Error("MayRelay is wrong")
	}
}

func TestReloadKeepsUnchangedSources(t *testing.T) {
	accounts := `
  - name: a
    provider: p
    mailbox: a@contoso.com
    username: a
    password_hash: "` + hash(t, "x") + `"
  - name: b
    provider: p
    mailbox: b@contoso.com
    username: b
    password_hash: "` + hash(t, "y") + `"
`
	r := testRelay(t, accounts)
	old := map[string]*Account{}
	for _, a := range r.Accounts() {
		old[a.Name] = a
	}
	cfg := *r.Config()
	next, err := config.Parse("t.yaml", []byte(`
state_dir: `+cfg.StateDir+`
providers:
  p:
    type: microsoft
    tenant: contoso.onmicrosoft.com
    client_id: app
    client_secret: s
accounts:
  - name: a
    provider: p
    mailbox: a@contoso.com
    username: a
    password_hash: "`+hash(t, "new")+`"
  - name: b
    provider: p
    mailbox: other@contoso.com
    username: b
    password_hash: "`+hash(t, "y")+`"
`), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	now := map[string]*Account{}
	for _, a := range r.Accounts() {
		now[a.Name] = a
	}
	if now["a"].Source != old["a"].Source {
		t.Error("a's token settings did not change, but its source was replaced")
	}
	if now["b"].Source == old["b"].Source {
		t.Error("b's mailbox changed, but its source was kept")
	}
	addr := netip.MustParseAddr("127.0.0.1")
	if _, err := r.Login(ctx, addr, "a", "new"); err != nil {
		t.Errorf("new password after reload: %v", err)
	}
	if _, err := r.Login(ctx, addr, "a", "x"); err == nil {
		t.Error("old password still accepted after reload")
	}
}
