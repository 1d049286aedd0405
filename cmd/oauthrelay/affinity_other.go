//go:build !linux

package main

// splitCPUs does nothing outside Linux: the bench runs unpinned.
func splitCPUs() (string, error) { return "", nil }
