package proxy

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/oauthrelay/oauthrelay/config"
)

// ServerTLS loads a listener's certificate; nil when its tls is none.
func ServerTLS(lc config.Listener) (*tls.Config, error) {
	if lc.TLS == "" || lc.TLS == "none" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(lc.CertFile, lc.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("listener %s: load certificate: %w", lc.Addr, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Listen opens a listener's socket; with tls implicit every connection is
// TLS from the first byte.
func Listen(lc config.Listener) (net.Listener, error) {
	ln, err := net.Listen("tcp", lc.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", lc.Addr, err)
	}
	if lc.TLS == "implicit" {
		tc, err := ServerTLS(lc)
		if err != nil {
			ln.Close()
			return nil, err
		}
		return tls.NewListener(ln, tc), nil
	}
	return ln, nil
}

// PlaintextAuthAllowed reports whether a client may send a password on this
// connection: over TLS always; in the clear only from a loopback address
// (the app on the same host, or a sidecar's pod network namespace), or when
// the administrator set allow_insecure for a trusted network.
func PlaintextAuthAllowed(lc config.Listener, remote net.Addr, isTLS bool) bool {
	return isTLS || lc.AllowInsecure || AddrOf(remote).IsLoopback()
}
