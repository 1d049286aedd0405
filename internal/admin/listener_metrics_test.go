package admin

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// TestPreAuthMetrics drives a real proxy.Listener with Metrics as its
// observer: a connection over the cap is refused and counted, the caps and
// the connections that have not logged in are exported, and a login takes
// the connection out of the gauge.
func TestPreAuthMetrics(t *testing.T) {
	w := newWorld(t, worldOptions{})
	ln, err := proxy.Listen(config.Listener{Addr: "127.0.0.1:0", TLS: config.TLSNone})
	if err != nil {
		t.Fatal(err)
	}
	ln.Proto, ln.Observer, ln.Busy = "imap", w.metrics, "* BYE busy"
	ln.MaxUnauthenticated = 1
	accepted := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Accept: %v", err)
				}
				return
			}
			accepted <- c
		}
	}()
	var server net.Conn
	t.Cleanup(func() {
		ln.Close()
		<-done
		if server != nil {
			server.Close()
		}
	})

	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	select {
	case server = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("first connection not accepted")
	}
	refused := dial()
	refused.SetReadDeadline(time.Now().Add(10 * time.Second))
	if l, _ := bufio.NewReader(refused).ReadString('\n'); l != "* BYE busy\r\n" {
		t.Fatalf("over the cap: %q", l)
	}

	check := func(want map[string]float64) {
		t.Helper()
		_, body := w.do(nil, "GET", "/metrics", nil, nil)
		for series, v := range want {
			if got, ok := sample(body, series); !ok || got != v {
				t.Errorf("%s = %v (present: %v), want %v", series, got, ok, v)
			}
		}
		if t.Failed() {
			for line := range strings.SplitSeq(body, "\n") {
				if strings.HasPrefix(line, "oauthrelay_connections_") {
					t.Log(line)
				}
			}
		}
	}
	check(map[string]float64{
		`oauthrelay_connections_unauthenticated{proto="imap"}`:                        1,
		`oauthrelay_connections_unauthenticated{proto="smtp"}`:                        0,
		`oauthrelay_connections_refused_total{proto="imap",reason="listener_cap"}`:    1,
		`oauthrelay_connections_refused_total{proto="imap",reason="address_cap"}`:     0,
		`oauthrelay_connections_unauthenticated_limit{proto="imap",scope="listener"}`: 1,
		`oauthrelay_connections_unauthenticated_limit{proto="imap",scope="address"}`:  proxy.DefaultMaxUnauthenticatedPerAddr,
		`oauthrelay_connections_refused_total{proto="smtp",reason="address_cap"}`:     0,
	})
	proxy.MarkAuthenticated(server)
	check(map[string]float64{`oauthrelay_connections_unauthenticated{proto="imap"}`: 0})
}
