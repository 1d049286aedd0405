//go:build !linux

package main

import "io"

// isTerminal is false off Linux: init asks the same questions, reads
// secrets with echo, and fails on a wrong answer (as with a pipe).
func isTerminal(io.Reader) bool { return false }

func noEcho(bool) func() { return func() {} }
