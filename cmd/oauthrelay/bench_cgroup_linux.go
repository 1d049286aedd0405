//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupV1CPU is the cgroup v1 cpu controller's mount. cgroup v2 would
// need the cpu controller delegated to our subtree; v1 (this machine's)
// lets root make a group anywhere below it.
const cgroupV1CPU = "/sys/fs/cgroup/cpu"

// cgroupPeriod is the CFS period of the bench's groups: Kubernetes' (and
// the kernel's) default, 100 ms. A relay over its quota is held back until
// the period ends, as a pod with a CPU limit is.
const cgroupPeriod = 100 * time.Millisecond

// groupShares is the groups' cpu.shares: 4 times a process's weight
// outside a group.
const groupShares = 4 * 1024

// cpuHosts models small hosts on one machine for the cluster bench: each
// relay instance runs in a cpu cgroup of its own whose CFS quota is a
// fraction of one CPU, so that one instance is bound by its CPU the way a
// small host is, and three instances have three times the CPU — as three
// hosts do, and as three processes sharing two cores with the fake, Redis
// and the load generator do not.
type cpuHosts struct {
	root   string // this run's parent group
	cpu    float64
	groups []string
}

// newCPUHosts makes this run's parent group (cgroupV1CPU/oauthrelay-bench-
// PID), after removing those of benches that died without cleaning up.
func newCPUHosts(cpu float64) (*cpuHosts, error) {
	if cpu <= 0 || cpu > 64 {
		return nil, fmt.Errorf("a quota of %g CPUs", cpu)
	}
	removeStaleGroups()
	root := filepath.Join(cgroupV1CPU, fmt.Sprintf("oauthrelay-bench-%d", os.Getpid()))
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, fmt.Errorf("the cgroup v1 cpu controller (%s) is not writable here: %w", cgroupV1CPU, err)
	}
	return &cpuHosts{root: root, cpu: cpu}, nil
}

// quota is the group's CFS quota per period.
func (h *cpuHosts) quota() time.Duration {
	return time.Duration(float64(cgroupPeriod) * h.cpu)
}

// group makes the group called name with the quota and returns its
// cgroup.procs file, where a process is put (see inGroup).
func (h *cpuHosts) group(name string) (string, error) {
	dir := filepath.Join(h.root, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", dir, err)
	}
	h.groups = append(h.groups, dir)
	for _, kv := range [][2]string{
		{"cpu.cfs_period_us", strconv.FormatInt(cgroupPeriod.Microseconds(), 10)},
		{"cpu.cfs_quota_us", strconv.FormatInt(h.quota().Microseconds(), 10)},
		// Within its quota the group goes first: a host's CPU is its
		// own, and the machine's other processes (a build next to
		// the bench) must not decide the figure. The quota caps what
		// this takes from them.
		{"cpu.shares", strconv.Itoa(groupShares)},
	} {
		if err := os.WriteFile(filepath.Join(dir, kv[0]), []byte(kv[1]), 0); err != nil {
			return "", fmt.Errorf("cgroup %s: %s: %w", dir, kv[0], err)
		}
	}
	return filepath.Join(dir, "cgroup.procs"), nil
}

// rest puts process pid in the group of what is not a relay (the bench
// itself, the fake and the load generator in it, and Redis): no quota, the
// relays' shares, so that the machine's other processes do not starve
// what the relays wait for — Exchange and the apps are not on the relays'
// hosts either.
func (h *cpuHosts) rest(pid int) error {
	dir := filepath.Join(h.root, "rest")
	if _, err := os.Stat(dir); err != nil {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		h.groups = append(h.groups, dir)
		if err := os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(groupShares)), 0); err != nil {
			return fmt.Errorf("cgroup %s: cpu.shares: %w", dir, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("cgroup %s: add %d: %w", dir, pid, err)
	}
	return nil
}

// throttled reads a group's cpu.stat: the CFS periods it ran in and those
// it was held back in for its quota.
func throttled(procs string) (periods, held int64) {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(procs), "cpu.stat"))
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "nr_periods":
			periods = n
		case "nr_throttled":
			held = n
		}
	}
	return periods, held
}

// close moves any process still in the groups (the bench itself, in rest)
// back to the root group and removes the groups (a group with a process
// in it cannot be removed).
func (h *cpuHosts) close() error {
	var errs []error
	for _, dir := range slices.Backward(h.groups) {
		errs = append(errs, removeGroup(dir))
	}
	h.groups = nil
	errs = append(errs, removeGroup(h.root))
	return errors.Join(errs...)
}

// removeGroup empties the group dir into the root group and removes it.
func removeGroup(dir string) error {
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
		for line := range strings.Lines(string(b)) {
			if pid := strings.TrimSpace(line); pid != "" {
				os.WriteFile(filepath.Join(cgroupV1CPU, "cgroup.procs"), []byte(pid), 0)
			}
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	return nil
}

// removeStaleGroups removes the groups of benches whose process is gone
// (killed before their cleanup ran).
func removeStaleGroups() {
	dirs, _ := filepath.Glob(filepath.Join(cgroupV1CPU, "oauthrelay-bench-*"))
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "oauthrelay-bench-"))
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		subs, _ := os.ReadDir(dir)
		for _, s := range subs {
			if s.IsDir() {
				removeGroup(filepath.Join(dir, s.Name()))
			}
		}
		removeGroup(dir)
	}
}

// inGroup returns args run so that the process is in the group of procs
// before it starts: a shell puts itself there, then execs args. The Go
// runtime of the relay then reads the group's quota at start-up.
func inGroup(procs string, args []string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, procs}, args...)
}
