package upstream

import (
	"crypto/tls"
	"testing"

	"github.com/oauthrelay/oauthrelay/config"
)

// ClientTLS names the host and asks for TLS 1.2 or newer, on a copy of a
// base configuration (which it leaves alone); a configuration that already
// does both is shared as it is, so that idle sessions do not each hold one.
func TestClientTLS(t *testing.T) {
	srv := config.Upstream{Addr: "outlook.office365.com:993", TLS: config.TLSImplicit}
	base := &tls.Config{MinVersion: tls.VersionTLS10}
	got := Target{Server: srv, TLS: base}.ClientTLS()
	if got == base || got.ServerName != "outlook.office365.com" || got.MinVersion != tls.VersionTLS12 {
		t.Fatalf("from a base: %p (base %p), ServerName %q, MinVersion %#x", got, base, got.ServerName, got.MinVersion)
	}
	if base.ServerName != "" || base.MinVersion != tls.VersionTLS10 {
		t.Error("the base configuration was changed")
	}
	if again := (Target{Server: srv, TLS: got}).ClientTLS(); again != got {
		t.Error("a configuration made for the host was copied again")
	}
	other := config.Upstream{Addr: "smtp.office365.com:587", TLS: config.TLSStartTLS}
	if c := (Target{Server: other, TLS: got}).ClientTLS(); c == got || c.ServerName != "smtp.office365.com" {
		t.Errorf("another host's configuration was used as it is: %q", c.ServerName)
	}
	if c := (Target{Server: srv}).ClientTLS(); c.ServerName != "outlook.office365.com" || c.MinVersion != tls.VersionTLS12 {
		t.Errorf("without a base: ServerName %q, MinVersion %#x", c.ServerName, c.MinVersion)
	}
}
