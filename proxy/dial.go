package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
)

// Dial connects to an upstream server of a's provider. With tls "implicit"
// the TLS handshake is done here and verified; with "starttls" and "none" the
// connection is plain and the protocol upgrades it itself.
func (r *Relay) Dial(ctx context.Context, a *Account, up config.Upstream) (net.Conn, error) {
	c, err := r.opts.Dialer.DialContext(ctx, "tcp", up.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", up.Addr, err)
	}
	if up.TLS != "implicit" {
		return c, nil
	}
	tc, err := r.ClientTLS(ctx, c, a, up.Addr)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// ClientTLS runs a verified TLS handshake on c for an upstream at addr.
func (r *Relay) ClientTLS(ctx context.Context, c net.Conn, a *Account, addr string) (*tls.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	tc := tls.Client(c, a.UpstreamTLS(host))
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS handshake with upstream %s: %w", addr, err)
	}
	return tc, nil
}
