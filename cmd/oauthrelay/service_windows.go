//go:build windows

package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// The Windows service: `oauthrelay service install|uninstall|start|stop|run`.
// install registers the service with the service control manager (SCM) to
// start automatically as LocalSystem, running `oauthrelay service run
// -config FILE`, and registers an Application event log source of the same
// name. run is what the SCM starts: it serves until the SCM says stop or
// shutdown, logging to the event log (or to a file with -log).
//
// Out of scope: configuration reload without a restart (Windows has no
// SIGHUP; Restart-Service applies a changed config), log file rotation, and
// running under another account (change it with sc.exe config or the
// Services console; the account then needs write access to state_dir).

const (
	defaultServiceName = "oauthrelay"
	serviceDisplayName = "oauthrelay"
	serviceDescription = "Lets applications keep using plain SMTP and IMAP with a local username and password " +
		"on localhost, and authenticates to Microsoft 365 with OAuth 2.0."

	// serviceStartWait and serviceStopWait bound how long start and stop
	// wait for the service to reach its new state. serve gives sessions 30 s
	// to finish after a stop.
	serviceStartWait = 30 * time.Second
	serviceStopWait  = shutdownGrace + 15*time.Second

	// Event IDs of the event log source (EventCreate.exe accepts 1-1000).
	eventInfo    = 1
	eventWarning = 2
	eventError   = 3
)

func runService(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("service "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", defaultServiceName, "service name (and event log source)")
	var cfgPath, logPath *string
	switch sub {
	case "install", "run":
		cfgPath = fs.String("config", defaultWindowsConfig(), "configuration file")
		logPath = fs.String("log", "", "log to this file instead of the Windows event log")
	case "uninstall", "start", "stop":
	default:
		return errUsage
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return errUsage
	}
	switch sub {
	case "install":
		return installService(*name, *cfgPath, *logPath, stdout, stderr)
	case "uninstall":
		return uninstallService(*name, stdout)
	case "start":
		return startService(*name, stdout)
	case "stop":
		return stopService(*name, stdout)
	default:
		return runAsService(*name, *cfgPath, *logPath)
	}
}

// defaultWindowsConfig is %ProgramData%\oauthrelay\config.yaml.
func defaultWindowsConfig() string {
	dir := os.Getenv("ProgramData")
	if dir == "" {
		dir = `C:\ProgramData`
	}
	return filepath.Join(dir, "oauthrelay", "config.yaml")
}

func connectSCM() (*mgr.Mgr, error) {
	m, err := mgr.Connect()
	if err != nil {
		return nil, fmt.Errorf("connect to the service control manager (run as Administrator): %w", err)
	}
	return m, nil
}

func installService(name, cfgPath, logPath string, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if cfgPath, err = filepath.Abs(cfgPath); err != nil {
		return err
	}
	if _, err := os.Stat(cfgPath); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	svcArgs := []string{"service", "run", "-name", name, "-config", cfgPath}
	if logPath != "" {
		if logPath, err = filepath.Abs(logPath); err != nil {
			return err
		}
		svcArgs = append(svcArgs, "-log", logPath)
	}
	// A config with problems is reported now, but installed anyway: the
	// service's environment (LocalSystem) may differ from this shell's.
	if cfg, err := config.Load(cfgPath); err != nil {
		fmt.Fprintf(stderr, "warning: the configuration does not load yet (the service will not start until it does):\n%v\n", err)
	} else if err := prepareStateDir(cfg.StateDir, stdout); err != nil {
		fmt.Fprintf(stderr, "warning: state_dir: %v\n", err)
	}

	m, err := connectSCM()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	if s, err := m.OpenService(name); err == nil {
		s.Close()
		return fmt.Errorf("service %s already exists (oauthrelay service uninstall -name %s)", name, name)
	}
	s, err := m.CreateService(name, exe, mgr.Config{
		DisplayName:      displayName(name),
		Description:      serviceDescription,
		StartType:        mgr.StartAutomatic,
		DelayedAutoStart: true, // after the network is up
		ErrorControl:     mgr.ErrorNormal,
	}, svcArgs...)
	if err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	defer s.Close()
	// Like systemd's Restart=on-failure: restart after 5 s, 30 s, then every
	// minute, also when the service stops with an error rather than
	// crashing; failures are forgotten after a day without one.
	restart := func(d time.Duration) mgr.RecoveryAction {
		return mgr.RecoveryAction{Type: mgr.ServiceRestart, Delay: d}
	}
	actions := []mgr.RecoveryAction{restart(5 * time.Second), restart(30 * time.Second), restart(time.Minute)}
	if err := s.SetRecoveryActions(actions, 86400); err != nil {
		fmt.Fprintf(stderr, "warning: set recovery actions: %v\n", err)
	} else if err := s.SetRecoveryActionsOnNonCrashFailures(true); err != nil {
		fmt.Fprintf(stderr, "warning: set recovery actions: %v\n", err)
	}
	// A source left over from an earlier installation is replaced.
	_ = eventlog.Remove(name)
	if err := eventlog.InstallAsEventCreate(name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil {
		s.Delete()
		return fmt.Errorf("register event log source %s: %w", name, err)
	}
	fmt.Fprintf(stdout, "installed service %s: %s %s\n", name, exe, strings.Join(svcArgs, " "))
	fmt.Fprintf(stdout, "start it with: oauthrelay service start -name %s (or Start-Service %s)\n", name, name)
	return nil
}

func displayName(name string) string {
	if name == defaultServiceName {
		return serviceDisplayName
	}
	return serviceDisplayName + " (" + name + ")"
}

// prepareStateDir creates dir, if missing, readable by SYSTEM and
// Administrators only. An existing directory is left as it is.
func prepareStateDir(dir string, stdout io.Writer) error {
	if !filepath.IsAbs(dir) {
		// A path like /var/lib/oauthrelay means \var\lib\oauthrelay on
		// the current drive: almost certainly not what was meant.
		return fmt.Errorf("%q is not an absolute Windows path: set state_dir in the config, e.g. state_dir: state "+
			"(relative to the config file's directory)", dir)
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	// securefile gives the directory the same protected DACL the relay
	// checks its files against: SYSTEM, Administrators and this account.
	if err := securefile.MkdirAll(dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created %s (SYSTEM, Administrators and this account only)\n", dir)
	return nil
}

// withService opens the service manager and the named service for f.
func withService(name string, f func(*mgr.Service) error) error {
	m, err := connectSCM()
	if err != nil {
		return err
	}
	defer m.Disconnect()
	s, err := m.OpenService(name)
	if err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	defer s.Close()
	return f(s)
}

func uninstallService(name string, stdout io.Writer) error {
	return withService(name, func(s *mgr.Service) error { return uninstallOpened(s, name, stdout) })
}

func uninstallOpened(s *mgr.Service, name string, stdout io.Writer) error {
	if st, err := s.Query(); err == nil && st.State != svc.Stopped {
		if err := controlAndWait(s, svc.Stop, svc.Stopped, serviceStopWait); err != nil {
			return err
		}
	}
	if err := s.Delete(); err != nil {
		return fmt.Errorf("delete service %s: %w", name, err)
	}
	if err := eventlog.Remove(name); err != nil {
		fmt.Fprintf(stdout, "note: event log source %s: %v\n", name, err)
	}
	fmt.Fprintf(stdout, "uninstalled service %s\n", name)
	return nil
}

func startService(name string, stdout io.Writer) error {
	return withService(name, func(s *mgr.Service) error { return startOpened(s, name, stdout) })
}

func startOpened(s *mgr.Service, name string, stdout io.Writer) error {
	if err := s.Start(); err != nil {
		return fmt.Errorf("start service %s: %w", name, err)
	}
	if err := waitState(s, svc.Running, serviceStartWait); err != nil {
		return fmt.Errorf("%w; see the Application event log, source %s", err, name)
	}
	fmt.Fprintf(stdout, "service %s is running\n", name)
	return nil
}

func stopService(name string, stdout io.Writer) error {
	return withService(name, func(s *mgr.Service) error { return stopOpened(s, name, stdout) })
}

func stopOpened(s *mgr.Service, name string, stdout io.Writer) error {
	if err := controlAndWait(s, svc.Stop, svc.Stopped, serviceStopWait); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "service %s is stopped\n", name)
	return nil
}

func controlAndWait(s *mgr.Service, c svc.Cmd, want svc.State, timeout time.Duration) error {
	if _, err := s.Control(c); err != nil {
		return fmt.Errorf("service %s: %w", s.Name, err)
	}
	return waitState(s, want, timeout)
}

// waitState polls s until it is in state want. A service that stops while
// waiting for another state has failed.
func waitState(s *mgr.Service, want svc.State, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.Query()
		if err != nil {
			return fmt.Errorf("service %s: %w", s.Name, err)
		}
		switch {
		case st.State == want:
			return nil
		case st.State == svc.Stopped:
			return fmt.Errorf("service %s stopped (exit code %d, service exit code %d)",
				s.Name, st.Win32ExitCode, st.ServiceSpecificExitCode)
		case time.Now().After(deadline):
			return fmt.Errorf("service %s: still in state %d after %v", s.Name, st.State, timeout)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// runAsService is `service run`, started by the SCM.
func runAsService(name, cfgPath, logPath string) error {
	isSvc, err := svc.IsWindowsService()
	if err != nil {
		return err
	}
	if !isSvc {
		return errors.New("service run is started by the service control manager; " +
			"to run the relay in this console use: oauthrelay serve -config " + cfgPath)
	}
	elog, err := eventlog.Open(name)
	if err != nil {
		return fmt.Errorf("open event log source %s: %w", name, err)
	}
	defer elog.Close()
	var logOut io.Writer = &eventLogWriter{log: elog}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			elog.Error(eventError, fmt.Sprintf("open log file: %v", err))
			return err
		}
		defer f.Close()
		logOut = f
	}
	h := &serviceHandler{cfgPath: cfgPath, logOut: logOut, elog: elog, serve: func(ctx context.Context, cfgPath string, logOut io.Writer) error {
		return serve(ctx, cfgPath, "", logOut)
	}}
	if err := svc.Run(name, h); err != nil {
		elog.Error(eventError, fmt.Sprintf("service %s failed: %v", name, err))
		return err
	}
	return nil
}

// serviceHandler runs the relay for the SCM.
type serviceHandler struct {
	cfgPath string
	logOut  io.Writer
	elog    eventLogger // startup failures go here even when logOut is a file
	serve   func(ctx context.Context, cfgPath string, logOut io.Writer) error
}

// Execute implements svc.Handler.
//
// Its context is deliberately not the one main derives from SIGINT and
// SIGTERM: Go turns the CTRL_LOGOFF_EVENT a service receives whenever any
// user logs off into SIGTERM, which would stop the relay. Only the SCM's
// Stop and Shutdown stop it.
func (h *serviceHandler) Execute(_ []string, r <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- h.serve(ctx, h.cfgPath, h.logOut) }()
	const accepts = svc.AcceptStop | svc.AcceptShutdown
	status <- svc.Status{State: svc.Running, Accepts: accepts}
	for {
		select {
		case err := <-done:
			// The relay ended by itself: a configuration or listener error.
			if err != nil {
				h.elog.Error(eventError, fmt.Sprintf("oauthrelay stopped: %v", err))
				return true, 1
			}
			return false, 0
		case c := <-r:
			switch c.Cmd {
			case svc.Interrogate:
				status <- c.CurrentStatus
			case svc.Stop, svc.Shutdown:
				cancel()
				return h.stopping(done, status)
			}
		}
	}
}

// stopping waits for the relay's graceful shutdown, telling the SCM that
// it progresses.
func (h *serviceHandler) stopping(done <-chan error, status chan<- svc.Status) (bool, uint32) {
	const hint = 5 * time.Second
	tick := time.NewTicker(hint / 2)
	defer tick.Stop()
	for checkpoint := uint32(1); ; checkpoint++ {
		status <- svc.Status{State: svc.StopPending, CheckPoint: checkpoint, WaitHint: uint32(hint / time.Millisecond)}
		select {
		case err := <-done:
			if err != nil {
				h.elog.Warning(eventWarning, fmt.Sprintf("oauthrelay stopped: %v", err))
			}
			return false, 0
		case <-tick.C:
		}
	}
}

// eventLogWriter writes each log line (one slog record, text or JSON) to
// the event log as information, a warning or an error by its level.
type eventLogWriter struct {
	mu  sync.Mutex
	log eventLogger
	buf []byte
}

// eventLogger is the part of *eventlog.Log the writer uses.
type eventLogger interface {
	Info(eid uint32, msg string) error
	Warning(eid uint32, msg string) error
	Error(eid uint32, msg string) error
}

// maxEventLen keeps a message under the event log's limit of 31,839
// characters per string.
const maxEventLen = 31000

func (w *eventLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(bytes.TrimRight(w.buf[:i], "\r"))
		w.buf = w.buf[i+1:]
		if line == "" {
			continue
		}
		if len(line) > maxEventLen {
			line = line[:maxEventLen] + " …(truncated)"
		}
		var err error
		switch logLevel(line) {
		case "ERROR":
			err = w.log.Error(eventError, line)
		case "WARN":
			err = w.log.Warning(eventWarning, line)
		default:
			err = w.log.Info(eventInfo, line)
		}
		if err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// logLevel finds the level of a slog line written by the text handler
// (level=WARN) or the JSON handler ("level":"WARN"). Levels between the
// named ones print as WARN+2 and count as the level they start with.
func logLevel(line string) string {
	// The earliest of the two keys: the handlers write the level before the
	// message, so a message that contains either key does not count.
	v, at := "", len(line)
	for _, key := range []string{`"level":"`, "level="} {
		if i := strings.Index(line, key); i >= 0 && i < at {
			v, at = line[i+len(key):], i
		}
	}
	for _, l := range []string{"ERROR", "WARN", "INFO", "DEBUG"} {
		if strings.HasPrefix(v, l) {
			return l
		}
	}
	return "INFO"
}
