package main

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

// errListener is a bound listener that reports an accept failure through
// Err, as proxy.Listen's listener does while accepts fail.
type errListener struct {
	net.Listener
	err error
}

func (l errListener) Err() error { return l.err }

// The daemon is not ready while a listener says it is not accepting, and
// says which listener and why (for the log; /readyz shows no reason).
func TestReadyListenerNotAccepting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	failing := &errListener{Listener: ln}
	d := &daemon{listeners: []bound{{name: "smtp", ln: plain}, {name: "imap", ln: failing}}}
	if err := d.ready(); err != nil {
		t.Fatalf("ready with every listener accepting: %v", err)
	}
	failing.err = syscall.EMFILE
	err = d.ready()
	if !errors.Is(err, syscall.EMFILE) || !strings.Contains(err.Error(), "imap listener") || strings.Contains(err.Error(), "smtp") {
		t.Fatalf("ready while imap accepts fail: %v", err)
	}
	failing.err = nil
	if err := d.ready(); err != nil {
		t.Fatalf("ready once accepts succeed again: %v", err)
	}
}
