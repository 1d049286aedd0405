//go:build !linux

package testutil

import "os/exec"

// stopWithParent does nothing here: only Linux has a parent-death signal.
func stopWithParent(*exec.Cmd) {}
