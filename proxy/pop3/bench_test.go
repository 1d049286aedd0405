package pop3

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// BenchmarkLogin measures from connect to the +OK of the login: USER/PASS
// to the relay (local password check, cached token, upstream TLS dial and
// AUTH XOAUTH2) against AUTH XOAUTH2 straight to the fake with the same
// cached token. Run with
//
//	go test -run '^$' -bench Login ./proxy/pop3/
//
// (`oauthrelay bench -only pop3` measures RETR throughput and the relay as
// its own process.)
func BenchmarkLogin(b *testing.B) {
	w := newWorld(b, worldOptions{})
	tok, err := w.relay.Accounts()[0].Source.Token(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	xoauth2 := base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(testMailbox, tok))
	login := func(b *testing.B, dial func() (net.Conn, error), first, second string) time.Duration {
		start := time.Now()
		conn, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := newRawClient(b, conn)
		c.line() // greeting
		c.cmd(first)
		if l := c.cmd(second); !strings.HasPrefix(l, "+OK") {
			b.Fatalf("login: %q", l)
		}
		took := time.Since(start)
		c.send("QUIT\r\n")
		return took
	}
	for _, bc := range []struct {
		name          string
		dial          func() (net.Conn, error)
		first, second string
	}{
		{"proxy", func() (net.Conn, error) { return net.Dial("tcp", w.addr) }, "USER " + testUser, "PASS " + testPassword},
		{"direct", func() (net.Conn, error) {
			return tls.Dial("tcp", w.fake.POP3Addr, w.fake.ClientTLSConfig())
		}, "AUTH XOAUTH2", xoauth2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			login(b, bc.dial, bc.first, bc.second) // warm up: bcrypt memo, TLS session state
			var took []time.Duration
			for b.Loop() {
				took = append(took, login(b, bc.dial, bc.first, bc.second))
			}
			slices.Sort(took)
			pct := func(p float64) float64 { return float64(took[int(p*float64(len(took)-1))].Microseconds()) }
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
		})
	}
}
