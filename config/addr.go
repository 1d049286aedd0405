package config

import (
	"fmt"
	"net"
	"net/mail"
	"net/netip"
	"strconv"
	"strings"
)

// IsLoopbackHost reports whether host (a name or IP, as net.SplitHostPort
// returns it) is this machine only: localhost, 127.0.0.0/8 or ::1 (also
// IPv4-mapped). An empty host (":25", every interface) is not loopback.
// It decides where plaintext logins and cleartext upstreams are allowed.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// AllowsSender reports whether the account may use addr as MAIL FROM. The
// patterns of AllowedFrom match without regard to case: "local@domain" that
// address, "*@domain" any address at exactly that domain (not subdomains),
// "*" any address. The null sender (empty addr, or "<>") is allowed only if
// AllowedFrom contains "<>": bounces are not what a legacy app should send.
func (a *Account) AllowsSender(addr string) bool {
	if addr == "<>" {
		addr = ""
	}
	_, domain, _ := cutAt(addr)
	for _, pat := range a.AllowedFrom {
		switch {
		case pat == "<>":
			if addr == "" {
				return true
			}
		case addr == "":
		case pat == "*", strings.EqualFold(pat, addr):
			return true
		case strings.HasPrefix(pat, "*@"):
			if domain != "" && strings.EqualFold(pat[2:], domain) {
				return true
			}
		}
	}
	return false
}

// cutAt splits an address at its last '@'.
func cutAt(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr, "", false
	}
	return addr[:i], addr[i+1:], true
}

// isAddress reports whether s is a bare email address (no display name, no
// angle brackets).
func isAddress(s string) bool {
	a, err := mail.ParseAddress(s)
	return err == nil && a.Address == s && a.Name == ""
}

// IsAddress reports whether s is a bare email address, as a mailbox must be
// (for `oauthrelay init`, which checks answers before it writes a file).
func IsAddress(s string) bool { return isAddress(s) }

// isAllowedFrom reports whether s is a valid allowed_from pattern.
func isAllowedFrom(s string) bool {
	if s == "*" || s == "<>" {
		return true
	}
	if domain, ok := strings.CutPrefix(s, "*@"); ok {
		return isAddress("x@" + domain)
	}
	return isAddress(s)
}

// splitAddr checks a host:port address and returns its host. Port 0 is
// accepted only where minPort is 0 (a listener picking a free port).
func splitAddr(addr string, minPort int) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("want host:port, not %q", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < minPort || n > 65535 {
		return "", fmt.Errorf("%q: the port must be a number from %d to 65535", addr, minPort)
	}
	return host, nil
}
