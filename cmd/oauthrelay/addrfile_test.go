package main

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// serve -addr-file: with port 0 everywhere, the file names the ports the
// relay bound (each answering its own protocol), "off" for a listener that
// is off, and it is gone once serve has stopped.
func TestServeAddrFile(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	path := newConfig(t, ms, cfgSpec{smtp: listenAny, imap: listenAny, pop3: listenAny, accounts: []acct{invoices(t)}})
	addrFile := filepath.Join(t.TempDir(), "addrs")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := background(ctx, nil, &stderr, &stderr, "serve", "-config", path, "-addr-file", addrFile)

	var text []byte
	waitFor(t, waitTimeout, "the address file", func() bool {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d:\n%s", code, stderr.String())
		default:
		}
		var err error
		text, err = os.ReadFile(addrFile)
		return err == nil
	})
	addrs := map[string]string{}
	for line := range strings.Lines(string(text)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		addrs[k] = v
	}
	if len(addrs) != 4 || addrs["admin"] != "off" {
		t.Fatalf("address file:\n%s", text)
	}
	// The same addresses as the started line.
	line := startedRE.FindString(stderr.String())
	if addrIn(line, "smtp") != addrs["smtp"] || addrIn(line, "imap") != addrs["imap"] || addrIn(line, "pop3") != addrs["pop3"] {
		t.Errorf("address file %q, log %q", text, line)
	}
	for proto, greeting := range map[string]string{"smtp": "220 ", "imap": "* OK", "pop3": "+OK"} {
		c, err := net.DialTimeout("tcp", addrs[proto], waitTimeout)
		if err != nil {
			t.Fatalf("%s at %s: %v", proto, addrs[proto], err)
		}
		c.SetDeadline(time.Now().Add(waitTimeout))
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.HasPrefix(got, greeting) {
			t.Errorf("%s at %s greets %q (%v), want %q…", proto, addrs[proto], got, err, greeting)
		}
	}

	cancel()
	if code := exitCode(t, done, "serve"); code != 0 {
		t.Fatalf("serve exit %d:\n%s", code, stderr.String())
	}
	if _, err := os.Stat(addrFile); !os.IsNotExist(err) {
		t.Errorf("the address file outlives serve: %v", err)
	}
}
