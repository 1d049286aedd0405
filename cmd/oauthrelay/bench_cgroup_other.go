//go:build !linux

package main

import (
	"errors"
	"time"
)

// cpuHosts models small hosts with Linux cpu cgroups; elsewhere the
// cluster bench runs unconstrained.
type cpuHosts struct{}

func newCPUHosts(float64) (*cpuHosts, error) {
	return nil, errors.New("cpu cgroups are Linux only")
}

func (h *cpuHosts) quota() time.Duration         { return 0 }
func (h *cpuHosts) group(string) (string, error) { return "", errors.New("cpu cgroups are Linux only") }
func (h *cpuHosts) rest(int) error               { return nil }
func (h *cpuHosts) close() error                 { return nil }
func throttled(string) (periods, held int64)     { return 0, 0 }
func inGroup(_ string, args []string) []string   { return args }

const cgroupPeriod = 100 * time.Millisecond

const groupShares = 4 * 1024
