//go:build !windows

package main

import (
	"context"
	"errors"
	"io"
)

// runService is `oauthrelay service ...`, the Windows service manager
// integration (service_windows.go).
func runService(_ context.Context, _ []string, _ io.Reader, _, _ io.Writer) error {
	return errors.New("the service command is for Windows; on Linux use the systemd unit in dist/systemd")
}
