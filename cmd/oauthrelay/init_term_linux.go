package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// isTerminal: r is a terminal (init then reads secrets without echo and
// asks again after a wrong answer instead of failing).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// noEcho turns the echo of standard input off while a secret is typed;
// the returned function turns it back on.
func noEcho(term bool) func() {
	if !term {
		return func() {}
	}
	fd := int(os.Stdin.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	t := *old
	t.Lflag &^= unix.ECHO
	if unix.IoctlSetTermios(fd, unix.TCSETS, &t) != nil {
		return func() {}
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}
