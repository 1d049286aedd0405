// Command oauthrelay lets legacy software keep speaking plain SMTP and IMAP
// with a username and password on localhost while it authenticates upstream
// to Microsoft 365 (or Gmail, or any OAuth 2.0 mail provider) with XOAUTH2.
//
// Usage:
//
//	oauthrelay init [-config FILE] [-force] [FLAGS]
//	oauthrelay serve -config FILE [-addr-file FILE]
//	oauthrelay check -config FILE [-json] [ACCOUNT [MAILBOX]]
//	oauthrelay login -config FILE ACCOUNT
//	oauthrelay token -config FILE ACCOUNT
//	oauthrelay queue -config FILE list|show|retry|delete|export [ARGS]
//	oauthrelay hash-password < password
//	oauthrelay demo [-graph]
//	oauthrelay bench
//	oauthrelay service install|uninstall|start|stop|run [-name NAME] [-config FILE] [-log FILE]
//	oauthrelay version
//	oauthrelay help (or -h, --help)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped by the build (-ldflags -X main.version=...).
var version = "dev"

// command is one subcommand.
type command struct {
	name  string
	usage string
	run   func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"init", "init [-config FILE] [-force] [FLAGS]  guided setup: config, secret file, Entra/Exchange PowerShell, sign-in (init -h)", runInit},
		{"serve", "serve -config FILE [-addr-file FILE]  run the relay", runServe},
		{"check", "check -config FILE [-json] [ACCOUNT [MAILBOX]]  prove each setup step of each account (or one mailbox of it), with the fix for each failure; exit 0 all passed (warnings allowed), 1 a step failed, 2 usage or configuration error (check -h)", runCheck},
		{"login", "login -config FILE [-replace] ACCOUNT  sign an account in (authorization code or device code)", runLogin},
		{"token", "token -config FILE ACCOUNT    print a fresh access token", runToken},
		{"queue", "queue -config FILE list|show|retry|delete|export [ARGS]  see and steer delivery: queue (queue -h)", runQueue},
		{"hash-password", "hash-password                 read a password on stdin, print its bcrypt hash", runHashPassword},
		{"demo", "demo [-graph]                 run the relay against a fake Microsoft 365 on loopback (-graph: SMTP AUTH off, sent through Graph)", runDemo},
		{"bench", "bench                         measure relay vs direct throughput against the fake", runBench},
		{"service", "service install|uninstall|start|stop|run [-name NAME] [-config FILE] [-log FILE]  Windows service", runService},
		{"version", "version                       print the version", runVersion},
	}
}

// errUsage makes main print the usage and exit 2.
var errUsage = errors.New("usage")

// usageError is a usage error with a message of its own (a bad flag).
type usageError struct{ error }

func (usageError) Is(target error) bool { return target == errUsage }
func (e usageError) Unwrap() error      { return e.error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		// Asked for: the usage goes to stdout and is a success (the man
		// page and README list the same commands).
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdin, stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
			if err != errUsage && !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintln(stderr, "oauthrelay:", err)
			}
			fmt.Fprintln(stderr, "usage: oauthrelay", c.usage)
			return 2
		case errors.Is(err, errCheckFailed):
			return 1
		case errors.As(err, new(configError)):
			fmt.Fprintln(stderr, "oauthrelay:", err)
			return 2
		}
		fmt.Fprintln(stderr, "oauthrelay:", err)
		return 1
	}
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: oauthrelay COMMAND [ARGS]")
	for _, c := range commands() {
		fmt.Fprintln(w, "  oauthrelay", c.usage)
	}
}

func runVersion(_ context.Context, _ []string, _ io.Reader, stdout, _ io.Writer) error {
	fmt.Fprintln(stdout, "oauthrelay", version)
	return nil
}

// configFlag parses "-config FILE", the flags more defines, and
// positional arguments.
func configFlag(name string, args []string, stderr io.Writer, more ...func(*flag.FlagSet)) (string, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints the error and the usage line once
	path := fs.String("config", "/etc/oauthrelay/config.yaml", "configuration file")
	for _, f := range more {
		f(fs)
	}
	if err := fs.Parse(args); err != nil {
		return "", nil, usageError{err}
	}
	return *path, fs.Args(), nil
}
