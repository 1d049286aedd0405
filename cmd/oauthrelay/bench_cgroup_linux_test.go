//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The bench's modelled hosts: a process started through inGroup is in
// its group from its first instruction, with the group's quota, and close
// leaves no group behind, also with a process still in one (moved back to
// the root group first).
func TestCPUHosts(t *testing.T) {
	h, err := newCPUHosts(0.2)
	if err != nil {
		t.Skipf("no writable cgroup v1 cpu controller: %v", err)
	}
	t.Cleanup(func() { h.close() })
	procs, err := h.group("test-relay0")
	if err != nil {
		t.Fatal(err)
	}
	quota, err := os.ReadFile(filepath.Join(filepath.Dir(procs), "cpu.cfs_quota_us"))
	if err != nil || strings.TrimSpace(string(quota)) != "20000" {
		t.Fatalf("quota %q (%v), want 20000 µs of 100000", quota, err)
	}
	args := inGroup(procs, []string{"/bin/cat", "/proc/self/cgroup"})
	out, err := exec.Command(args[0], args[1:]...).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := ":cpu:/" + filepath.Base(h.root) + "/test-relay0\n"
	if !strings.Contains(string(out), want) {
		t.Fatalf("the process's cgroups:\n%s\nwant a line ending %q", out, want)
	}

	args = inGroup(procs, []string{"/bin/sleep", "30"})
	sleeper := exec.Command(args[0], args[1:]...)
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for pid := strconv.Itoa(sleeper.Process.Pid); ; {
		b, _ := os.ReadFile(procs)
		if slices.Contains(strings.Fields(string(b)), pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s never appeared in %s", pid, procs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	root := h.root
	if err := h.close(); err != nil {
		t.Fatalf("close with a process in a group: %v", err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("%s is still there (%v)", root, err)
	}
}
