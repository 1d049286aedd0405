//go:build linux

package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// splitCPUs pins this process (load generator and fake upstream) to the
// first half of the CPUs and returns the CPU list for the relay, so the two
// sides of the measurement do not compete for the same cores, as in
// production where Exchange Online does not run on the relay's host. It
// returns "" (no pinning) on a single-CPU machine.
func splitCPUs() (relayCPUs string, err error) {
	n := runtime.NumCPU()
	if n < 2 {
		return "", nil
	}
	var own unix.CPUSet
	for i := 0; i < n/2; i++ {
		own.Set(i)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return "", err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &own); err != nil {
			return "", fmt.Errorf("pin bench threads: %w", err)
		}
	}
	return fmt.Sprintf("%d-%d", n/2, n-1), nil
}
