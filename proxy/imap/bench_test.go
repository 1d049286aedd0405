package imap

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// Benchmarks: run with
//
//	go test -run '^$' -bench . -benchtime 3x ./proxy/imap/
//
// BenchmarkFetch reads a mailbox of 1,000 messages of 200 KB with one FETCH
// 1:* BODY.PEEK[], through the proxy and straight from the fake, with the
// same client (imapclient, bodies streamed to io.Discard). The difference
// is the cost of the byte copy (one more TLS hop on loopback).
//
// BenchmarkLogin measures from connect to the tagged OK of the login: LOGIN
// to the proxy (local password check, cached token, upstream TLS dial and
// XOAUTH2) against AUTHENTICATE XOAUTH2 straight to the fake with the same
// cached token.

const (
	benchMessages    = 1000
	benchMessageSize = 200 << 10
)

func BenchmarkFetch(b *testing.B) {
	w := newWorld(b, worldOptions{})
	line := []byte(strings.Repeat("x", 74) + "\r\n")
	for range benchMessages {
		msg := testMessage("bench", "")
		msg = append(msg, bytes.Repeat(line, (benchMessageSize-len(msg))/len(line))...)
		if err := w.fake.AppendIMAP(testMailbox, "INBOX", msg); err != nil {
			b.Fatal(err)
		}
	}
	fetchAll := func(b *testing.B, c *imapclient.Client) int64 {
		var total int64
		cmd := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}},
			&imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
		for {
			m := cmd.Next()
			if m == nil {
				break
			}
			for {
				item := m.Next()
				if item == nil {
					break
				}
				if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
					n, err := io.Copy(io.Discard, bs.Literal)
					if err != nil {
						b.Fatal(err)
					}
					total += n
				}
			}
		}
		if err := cmd.Close(); err != nil {
			b.Fatal(err)
		}
		return total
	}
	for _, bc := range []struct {
		name string
		dial func() *imapclient.Client
	}{
		{"proxy", w.login},
		{"direct", w.direct},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := bc.dial()
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				b.Fatal(err)
			}
			var total int64
			start := time.Now()
			for b.Loop() {
				total += fetchAll(b, c)
			}
			if want := int64(b.N) * benchMessages * (benchMessageSize - 200); total < want {
				b.Fatalf("fetched %d bytes, want at least %d", total, want)
			}
			b.ReportMetric(float64(total)/1e6/time.Since(start).Seconds(), "MB/s")
			c.Logout().Wait()
		})
	}
}

func BenchmarkLogin(b *testing.B) {
	w := newWorld(b, worldOptions{DomainWide: true})
	tok, err := w.relay.Accounts()[0].Source.Token(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	xoauth2 := base64.StdEncoding.EncodeToString(sasl.XOAuth2Response(testMailbox, tok))

	login := func(b *testing.B, dial func() (net.Conn, error), cmd string) time.Duration {
		start := time.Now()
		conn, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := newRawClient(b, conn)
		c.line() // greeting
		c.send(cmd)
		if l := c.until("a "); !strings.HasPrefix(l[len(l)-1], "a OK") {
			b.Fatalf("login: %q", l)
		}
		took := time.Since(start)
		c.send("z LOGOUT\r\n")
		return took
	}
	for _, bc := range []struct {
		name string
		dial func() (net.Conn, error)
		cmd  string
	}{
		{"proxy", func() (net.Conn, error) { return net.Dial("tcp", w.addr) },
			"a LOGIN " + testUser + " " + testPassword + "\r\n"},
		// A domain-wide account: the same login plus STATUS INBOX, which
		// makes sure the app may open the mailbox it named.
		{"proxy-domain-wide", func() (net.Conn, error) { return net.Dial("tcp", w.addr) },
			"a LOGIN " + testMailbox + " " + testPassword + "\r\n"},
		{"direct", func() (net.Conn, error) {
			return tls.Dial("tcp", w.fake.IMAPAddr, w.fake.ClientTLSConfig())
		}, "a AUTHENTICATE XOAUTH2 " + xoauth2 + "\r\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			login(b, bc.dial, bc.cmd) // warm up: bcrypt memo, TLS session state
			var took []time.Duration
			for b.Loop() {
				took = append(took, login(b, bc.dial, bc.cmd))
			}
			slices.Sort(took)
			pct := func(p float64) float64 {
				return float64(took[int(p*float64(len(took)-1))].Microseconds())
			}
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
		})
	}
}
