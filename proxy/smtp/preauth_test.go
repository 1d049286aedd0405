package smtp

import (
	"bufio"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// TestPreAuthCapSMTP: the SMTP front end serves through proxy.Listener, so a
// connection over the cap of unauthenticated ones gets the SMTP busy line
// and is closed, and a client that logs in frees its place.
func TestPreAuthCapSMTP(t *testing.T) {
	w := newWorld(t, worldOptions{})
	ln, err := proxy.Listen(config.Listener{Addr: "127.0.0.1:0", TLS: config.TLSNone})
	if err != nil {
		t.Fatal(err)
	}
	ln.MaxUnauthenticated = 1
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.srv.Serve(ln) }()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	addr := ln.Addr().String()

	first := dialLine(t, addr)
	if !strings.HasPrefix(first.line(), "220") {
		t.Fatal("no greeting on the first connection")
	}
	over := dialLine(t, addr)
	if l := over.line(); l != busyLine {
		t.Fatalf("over the cap: got %q, want %q", l, busyLine)
	}
	if _, err := over.r.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("over the cap: connection not closed (%v)", err)
	}

	first.send("EHLO app")
	for l := first.line(); !strings.HasPrefix(l, "250 "); l = first.line() {
	}
	first.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+username+"\x00"+password)))
	if l := first.line(); !strings.HasPrefix(l, "235") {
		t.Fatalf("AUTH: %q", l)
	}
	// The login freed the only place: a new client is greeted.
	next := dialLine(t, addr)
	if l := next.line(); !strings.HasPrefix(l, "220") {
		t.Fatalf("after a login: got %q, want a greeting", l)
	}
}

type lineConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialLine(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &lineConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (l *lineConn) send(s string) { l.c.Write([]byte(s + "\r\n")) }

func (l *lineConn) line() string {
	l.t.Helper()
	s, err := l.r.ReadString('\n')
	if err != nil {
		l.t.Fatalf("read: %v", err)
	}
	return strings.TrimRight(s, "\r\n")
}
