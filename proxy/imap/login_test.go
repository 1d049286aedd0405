package imap

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	gosasl "github.com/emersion/go-sasl"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// loggedIn checks a tagged OK to a login and that the session then reaches
// the upstream mailbox.
func loggedIn(t *testing.T, c *rawClient, tag string) {
	t.Helper()
	lines := c.until(tag + " ")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, tag+" OK ") {
		t.Fatalf("login reply %q", last)
	}
	c.send("s1 SELECT INBOX\r\n")
	if l := c.until("s1 "); !strings.HasPrefix(l[len(l)-1], "s1 OK") {
		t.Fatalf("SELECT through the proxy: %q", l)
	}
}

func TestLoginWithImapclient(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.login()
	// The app sees the upstream's capabilities, not the proxy's.
	caps := c.Caps()
	if caps.Has("AUTH=PLAIN") || !caps.Has(imap.CapMove) || !caps.Has(imap.CapIdle) {
		t.Errorf("capabilities after login: %v", caps)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("logout: %v", err)
	}
	c.Close()
	waitFor(t, "the session to end", func() bool {
		w.obs.mu.Lock()
		defer w.obs.mu.Unlock()
		return w.obs.conns == 0 && w.obs.transferred[0] > 0 && w.obs.transferred[1] > 0
	})
	logins, ups := w.obs.snapshot()
	if !slices.Equal(logins, []string{"invoices:ok"}) || !slices.Equal(ups, []string{"invoices:ok"}) {
		t.Errorf("observer: logins %v, upstreams %v", logins, ups)
	}
}

func TestLoginArguments(t *testing.T) {
	w := newWorld(t, worldOptions{})
	tests := []struct {
		name  string
		send  func(c *rawClient)
		conts int // "+ " lines expected before the reply
	}{
		{"atoms", func(c *rawClient) { c.send("a1 LOGIN " + testUser + " " + testPassword + "\r\n") }, 0},
		{"quoted", func(c *rawClient) { c.send("a1 login " + quote(oddUser) + " " + quote(oddPassword) + "\r\n") }, 0},
		{"synchronising literals", func(c *rawClient) {
			c.send("a1 LOGIN {" + strconv.Itoa(len(oddUser)) + "}\r\n")
			if l := c.line(); !strings.HasPrefix(l, "+ ") {
				t.Fatalf("want a continuation, got %q", l)
			}
			c.send(oddUser + " {" + strconv.Itoa(len(oddPassword)) + "}\r\n")
			if l := c.line(); !strings.HasPrefix(l, "+ ") {
				t.Fatalf("want a continuation, got %q", l)
			}
			c.send(oddPassword + "\r\n")
		}, 0},
		{"non-synchronising literals", func(c *rawClient) {
			c.send("a1 LOGIN {" + strconv.Itoa(len(oddUser)) + "+}\r\n" + oddUser +
				" {" + strconv.Itoa(len(oddPassword)) + "+}\r\n" + oddPassword + "\r\n")
		}, 0},
		{"authenticate plain with SASL-IR", func(c *rawClient) {
			c.send("a1 AUTHENTICATE PLAIN " + plain(oddUser, oddPassword) + "\r\n")
		}, 0},
		{"authenticate plain after continuation", func(c *rawClient) {
			c.send("a1 authenticate plain\r\n")
			if l := c.line(); l != "+ " {
				t.Fatalf("want an empty continuation, got %q", l)
			}
			c.send(plain(testUser, testPassword) + "\r\n")
		}, 0},
		{"authenticate after a cancelled one", func(c *rawClient) {
			c.send("a0 AUTHENTICATE PLAIN\r\n")
			c.line()
			c.send("*\r\n")
			if l := c.line(); !strings.HasPrefix(l, "a0 BAD ") {
				t.Fatalf("cancel: %q", l)
			}
			c.send("a1 AUTHENTICATE PLAIN " + encode(testUser+"\x00"+testUser+"\x00"+testPassword) + "\r\n")
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := w.dialRaw()
			tt.send(c)
			loggedIn(t, c, "a1")
		})
	}
}

func encode(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuthenticateWithImapclient(t *testing.T) {
	w := newWorld(t, worldOptions{TLS: config.TLSImplicit})
	c := w.client()
	if err := c.Authenticate(gosasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select: %v", err)
	}
}

func TestAuthenticateRefusals(t *testing.T) {
	w := newWorld(t, worldOptions{})
	c := w.dialRaw()
	for _, tt := range []struct{ send, want string }{
		{"a AUTHENTICATE XOAUTH2 abc\r\n", "a NO "},
		{"b AUTHENTICATE\r\n", "b BAD "},
		{"c AUTHENTICATE PLAIN !!!\r\n", "c BAD "},
		{"d AUTHENTICATE PLAIN =\r\n", "d BAD "},
		{"e AUTHENTICATE PLAIN " + encode("other\x00"+testUser+"\x00"+testPassword) + "\r\n", "e NO [AUTHORIZATIONFAILED]"},
		{"f LOGIN onlyuser\r\n", "f BAD "},
		{"g LOGIN (a) b\r\n", "g BAD "},
	} {
		c.send(tt.send)
		if l := c.line(); !strings.HasPrefix(l, tt.want) {
			t.Errorf("%q: got %q, want %q...", tt.send, l, tt.want)
		}
	}
	c.send("z LOGIN " + testUser + " " + testPassword + "\r\n")
	loggedIn(t, c, "z")
}

func TestLoginFailures(t *testing.T) {
	tests := []struct {
		name     string
		opts     func(t *testing.T) worldOptions
		prepare  func(w *world)
		user     string
		pass     string
		want     string
		login    string // observer Login result
		upstream string // observer Upstream result, "" for none
	}{
		{
			name: "wrong password", user: testUser, pass: "wrong",
			want: "NO [AUTHENTICATIONFAILED] Authentication failed.", login: "invoices:bad_credentials",
		},
		{
			name: "unknown user", user: "nobody", pass: "wrong",
			want: "NO [AUTHENTICATIONFAILED] Authentication failed.", login: "-:bad_credentials",
		},
		{
			name: "token endpoint down", user: testUser, pass: testPassword,
			prepare: func(w *world) {
				w.fake.FailTokenRequests(100, fakems.TokenFailure{Status: 503, Error: "temporarily_unavailable"})
			},
			want: "NO [UNAVAILABLE] ", login: "invoices:unavailable",
		},
		{
			name: "client secret expired", user: testUser, pass: testPassword,
			prepare: func(w *world) {
				w.fake.FailTokenRequests(100, fakems.TokenFailure{Status: 401, Error: "invalid_client", AADSTS: 7000222,
					Description: "AADSTS7000222: The provided client secret keys for app are expired."})
			},
			want: "NO [AUTHENTICATIONFAILED] ", login: "invoices:needs_attention",
		},
		{
			name: "upstream unreachable", user: testUser, pass: testPassword,
			opts: func(t *testing.T) worldOptions {
				return worldOptions{Upstream: &config.Upstream{Addr: testutil.ClosedAddr(t)}}
			},
			want: "NO [UNAVAILABLE] ", login: "invoices:unavailable", upstream: "invoices:unavailable",
		},
		{
			name: "upstream refuses the token", user: ghostUser, pass: testPassword,
			want: "NO [AUTHENTICATIONFAILED] ", login: "ghost:upstream_rejected", upstream: "ghost:rejected",
		},
		{
			name: "upstream BYE at greeting", user: testUser, pass: testPassword,
			opts: func(t *testing.T) worldOptions {
				addr := scriptedUpstream(t, func(c net.Conn, _ *bufio.Reader) {
					io.WriteString(c, "* BYE Too many connections\r\n")
				})
				return worldOptions{Upstream: &config.Upstream{Addr: addr}}
			},
			want: "NO [UNAVAILABLE] ", login: "invoices:unavailable", upstream: "invoices:unavailable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o worldOptions
			if tt.opts != nil {
				o = tt.opts(t)
			}
			w := newWorld(t, o)
			if tt.prepare != nil {
				tt.prepare(w)
			}
			c := w.dialRaw()
			c.send("a LOGIN " + quote(tt.user) + " " + quote(tt.pass) + "\r\n")
			if l := c.line(); !strings.HasPrefix(l, "a "+tt.want) {
				t.Fatalf("got %q, want %q...", l, "a "+tt.want)
			}
			// The connection stays usable.
			c.send("b NOOP\r\n")
			if l := c.line(); l != "b OK NOOP completed" {
				t.Errorf("after the failure: %q", l)
			}
			logins, ups := w.obs.snapshot()
			if !slices.Equal(logins, []string{tt.login}) {
				t.Errorf("observer logins %v, want [%s]", logins, tt.login)
			}
			if want := []string{tt.upstream}; tt.upstream != "" && !slices.Equal(ups, want) || tt.upstream == "" && len(ups) != 0 {
				t.Errorf("observer upstreams %v, want %q", ups, tt.upstream)
			}
		})
	}
}
