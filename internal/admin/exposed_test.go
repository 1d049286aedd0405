package admin

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// otherAddr is a loopback listener that says it listens on a LAN
// address, for the start-up warnings (the tests bind loopback only).
type otherAddr struct{ net.Listener }

func (otherAddr) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 8025} }

// TestExposedWithoutTLSWarns: an admin listener on a non-loopback address
// without cert_file and key_file is warned about (the admin password would
// cross the network in clear); with them it is not.
func TestExposedWithoutTLSWarns(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		o := worldOptions{basicAuth: true}
		if withTLS {
			o.tls = testutil.NewLocalCert(t)
		}
		w := newWorld(t, o)
		logger, buf := testutil.Logger(t)
		srv := New(w.relay, nil, Options{Logger: logger})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(otherAddr{ln}) }()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(buf.String(), "reachable from other hosts") && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		warned := strings.Contains(buf.String(), "without TLS on a non-loopback address")
		if warned == withTLS {
			t.Errorf("TLS %v: warned %v about plain HTTP:\n%s", withTLS, warned, buf.String())
		}
	}
}
