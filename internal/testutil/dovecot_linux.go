package testutil

import (
	"os/exec"
	"syscall"
)

// stopWithParent has the kernel send SIGTERM to cmd when the test process
// dies.
func stopWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
