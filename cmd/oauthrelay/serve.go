package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/admin"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
	"github.com/oauthrelay/oauthrelay/proxy"
	imapproxy "github.com/oauthrelay/oauthrelay/proxy/imap"
	smtpproxy "github.com/oauthrelay/oauthrelay/proxy/smtp"
)

// shutdownGrace is how long sessions may finish after SIGTERM.
const shutdownGrace = 30 * time.Second

func runServe(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	path, rest, err := configFlag("serve", args, stderr)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return errUsage
	}
	return serveUntil(ctx, path, stderr)
}

// serveUntil runs the relay of the configuration at cfgPath until ctx is
// done, logging to logOut; SIGHUP reloads the configuration. It is the body
// of `serve` and of the Windows service.
func serveUntil(ctx context.Context, cfgPath string, logOut io.Writer) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, logOut)
	d, err := startDaemon(ctx, cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			d.reload(ctx, cfgPath)
		case <-ctx.Done():
			log.Info("shutting down", "grace", shutdownGrace)
			return d.shutdown(shutdownGrace)
		}
	}
}

// newLogger builds the slog logger the config asks for.
func newLogger(lc config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(lc.Level))
	opts := &slog.HandlerOptions{Level: level}
	if lc.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// openStore opens the token store when some account needs one (every grant
// but client credentials keeps a refresh token). With only client
// credentials, state_dir need not exist.
func openStore(cfg *config.Config) (oauth.Store, error) {
	needed := false
	for _, a := range cfg.Accounts {
		if a.ProviderRef.Grant != "client_credentials" {
			needed = true
		}
	}
	if !needed {
		return nil, nil
	}
	return openStoreAlways(cfg)
}

func openStoreAlways(cfg *config.Config) (*tokenstore.Store, error) {
	key, err := tokenstore.Key(cfg.StateDir, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	st, err := tokenstore.Open(filepath.Clean(cfg.StateDir), key)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// newRelay builds the relay for cfg with the token store it needs.
func newRelay(cfg *config.Config, log *slog.Logger, obs proxy.Observer, hc *http.Client) (*proxy.Relay, oauth.Store, error) {
	store, err := openStore(cfg)
	if err != nil {
		return nil, nil, err
	}
	relay, err := proxy.NewRelay(cfg, proxy.Options{Logger: log, Store: store, Observer: obs, HTTPClient: hc})
	return relay, store, err
}

// daemon is a running relay: its listeners and servers.
type daemon struct {
	log   *slog.Logger
	relay *proxy.Relay
	cfg   *config.Config

	smtp  *smtpproxy.Server
	imap  *imapproxy.Server
	admin *admin.Server

	// Addrs of the listeners actually bound (port 0 resolved).
	smtpAddr, imapAddr, adminAddr net.Addr

	// stopped records a listener that stopped serving, for /readyz.
	stoppedMu sync.Mutex
	stopped   error

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startDaemon binds the listeners of cfg and serves them in the background.
func startDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) (*daemon, error) {
	metrics := admin.NewMetrics()
	relay, store, err := newRelay(cfg, log, metrics, nil)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	d := &daemon{log: log, relay: relay, cfg: cfg, cancel: cancel}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); relay.Run(runCtx) }()

	fail := func(err error) (*daemon, error) {
		d.close()
		return nil, err
	}
	if lc := cfg.Listen.SMTP; lc.Addr != "off" {
		if d.smtp, err = smtpproxy.New(ctx, relay, lc); err != nil {
			return fail(err)
		}
		ln, err := listen(lc, log)
		if err != nil {
			return fail(err)
		}
		d.smtpAddr = ln.Addr()
		d.serve("smtp", func() error { return d.smtp.Serve(ln) })
	}
	if lc := cfg.Listen.IMAP; lc.Addr != "off" {
		if d.imap, err = imapproxy.New(relay, lc); err != nil {
			return fail(err)
		}
		ln, err := listen(lc, log)
		if err != nil {
			return fail(err)
		}
		d.imapAddr = ln.Addr()
		d.serve("imap", func() error { return d.imap.Serve(ln) })
	}
	if lc := cfg.Listen.Admin; lc.Addr != "off" {
		d.admin = admin.New(relay, metrics, admin.Options{Logger: log, Store: store, Ready: d.ready})
		ln, err := net.Listen("tcp", lc.Addr)
		if err != nil {
			return fail(fmt.Errorf("listen %s: %w", lc.Addr, err))
		}
		d.adminAddr = ln.Addr()
		d.serve("admin", func() error { return d.admin.Serve(ln) })
	}
	log.Info("oauthrelay started", "version", version, "smtp", addrString(d.smtpAddr), "imap", addrString(d.imapAddr),
		"admin", addrString(d.adminAddr), "accounts", len(cfg.Accounts))
	return d, nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

// listen binds lc, warning when it is reachable from other hosts.
func listen(lc config.Listener, log *slog.Logger) (net.Listener, error) {
	ln, err := proxy.Listen(lc)
	if err != nil {
		return nil, err
	}
	if host, _, _ := net.SplitHostPort(lc.Addr); !config.IsLoopbackHost(host) {
		log.Warn("listener reachable from other hosts", "addr", lc.Addr, "tls", lc.TLS, "allow_insecure", lc.AllowInsecure)
	}
	return ln, nil
}

// serve runs a listener's Serve; one that returns while the daemon is not
// shutting down makes /readyz fail.
func (d *daemon) serve(name string, f func() error) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := f()
		if errors.Is(err, imapproxy.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			d.log.Error("listener stopped", "proto", name, "err", err)
		}
		d.stoppedMu.Lock()
		if d.stopped == nil {
			d.stopped = fmt.Errorf("%s listener stopped", name)
		}
		d.stoppedMu.Unlock()
	}()
}

// ready reports whether every listener is still serving.
func (d *daemon) ready() error {
	d.stoppedMu.Lock()
	defer d.stoppedMu.Unlock()
	return d.stopped
}

// reload re-reads the configuration; on error the old one stays in force.
// Listener addresses and TLS certificates need a restart.
func (d *daemon) reload(ctx context.Context, path string) {
	cfg, err := config.Load(path)
	if err != nil {
		d.log.Error("reload failed, keeping the running configuration", "err", err)
		return
	}
	if err := d.relay.Reload(ctx, cfg); err != nil {
		d.log.Error("reload failed, keeping the running configuration", "err", err)
		return
	}
	if cfg.Listen != d.cfg.Listen {
		d.log.Warn("listener settings changed: they take effect after a restart")
	}
	d.cfg = cfg
	d.log.Info("configuration reloaded", "accounts", len(cfg.Accounts))
}

// shutdown stops accepting, gives sessions grace to finish, then closes.
func (d *daemon) shutdown(grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, s := range d.servers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	d.close()
	if len(errs) > 0 {
		return fmt.Errorf("shutdown: %w", errors.Join(errs...))
	}
	return nil
}

// server is what the SMTP, IMAP and admin servers have in common.
type server interface {
	Shutdown(context.Context) error
	Close() error
}

// servers returns the servers that run (nil pointers left out, so no
// typed-nil interface is called).
func (d *daemon) servers() []server {
	var s []server
	if d.smtp != nil {
		s = append(s, d.smtp)
	}
	if d.imap != nil {
		s = append(s, d.imap)
	}
	if d.admin != nil {
		s = append(s, d.admin)
	}
	return s
}

func (d *daemon) close() {
	for _, s := range d.servers() {
		s.Close()
	}
	d.cancel()
	d.wg.Wait()
}
