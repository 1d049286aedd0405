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

// Listen opens a listener's socket as a *Listener (accept errors retried,
// connections that have not logged in capped); with tls implicit every
// connection it returns is TLS from the first byte.
func Listen(lc config.Listener) (*Listener, error) {
	var tc *tls.Config
	if lc.TLS == config.TLSImplicit {
		var err error
		if tc, err = ServerTLS(lc); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", lc.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", lc.Addr, err)
	}
	return NewListener(ln, tc), nil
}

// PlaintextAuthAllowed reports whether a client may send a password on this
// connection: over TLS always; in the clear only from a loopback address
// (the app on the same host, or a sidecar's pod network namespace), or when
// the administrator set allow_insecure for a trusted network.
func PlaintextAuthAllowed(lc config.Listener, remote net.Addr, isTLS bool) bool {
	return isTLS || lc.AllowInsecure || AddrOf(remote).IsLoopback()
}
