package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// runHashPassword reads one password line on stdin and prints its bcrypt
// hash, for password_hash. Reading stdin (not an argument) keeps the
// password out of the shell history and the process list.
func runHashPassword(_ context.Context, args []string, stdin io.Reader, stdout, _ io.Writer) error {
	if len(args) != 0 {
		return errUsage
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return errors.New("empty password on standard input")
	}
	if len(pw) > 72 {
		return errors.New("password longer than 72 bytes (bcrypt's limit)")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	fmt.Fprintln(stdout, string(h))
	return nil
}
