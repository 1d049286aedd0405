package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/admin"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
	"github.com/oauthrelay/oauthrelay/proxy"
	imapproxy "github.com/oauthrelay/oauthrelay/proxy/imap"
	pop3proxy "github.com/oauthrelay/oauthrelay/proxy/pop3"
	smtpproxy "github.com/oauthrelay/oauthrelay/proxy/smtp"
)

// shutdownGrace is how long sessions may finish after SIGTERM.
const shutdownGrace = 30 * time.Second

func runServe(ctx context.Context, args []string, _ io.Reader, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints the error and the usage line once
	path := fs.String("config", "/etc/oauthrelay/config.yaml", "configuration file")
	addrFile := fs.String("addr-file", "", "write the bound listener addresses to this file once serving")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 0 {
		return errUsage
	}
	return serve(ctx, *path, *addrFile, stderr)
}

// serve runs the relay of the configuration at cfgPath until ctx is done,
// logging to logOut; SIGHUP reloads the configuration. It is the body of
// `serve` and of the Windows service. A listener that cannot be bound ends
// it at once with an error naming the listener and the reason. It writes
// the bound addresses to addrFile (when not empty) once every listener is
// served, and removes it when it
// returns. With port 0 in the configuration the kernel picks the ports, and
// this is how a supervisor (oauthrelay bench, a test) learns them without
// parsing logs or guessing a free port.
func serve(ctx context.Context, cfgPath, addrFile string, logOut io.Writer) error {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, logOut)
	// Registered before the start, so that a SIGHUP arriving while the
	// listeners are bound is a reload afterwards, not the default action
	// (the end of the process).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d, err := startDaemon(ctx, cfg, log)
	if err != nil {
		return err
	}
	if addrFile != "" {
		if err := writeAddrFile(addrFile, d); err != nil {
			d.close()
			return err
		}
		defer os.Remove(addrFile)
	}
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

// writeAddrFile writes d's addresses to path, one "name=ADDR" line per
// listener ("off" for one that is off), as the started log line has them.
// The file appears whole (written aside, then renamed), so a reader that
// finds it can read it.
func writeAddrFile(path string, d *daemon) error {
	text := fmt.Sprintf("smtp=%s\nimap=%s\npop3=%s\nadmin=%s\n", addrString(d.smtpAddr), addrString(d.imapAddr),
		addrString(d.pop3Addr), addrString(d.adminAddr))
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return fmt.Errorf("addr-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("addr-file: %w", err)
	}
	return nil
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
func openStore(cfg *config.Config, log *slog.Logger) (oauth.Store, error) {
	needed := false
	for _, a := range cfg.Accounts {
		if a.ProviderRef.Grant != "client_credentials" {
			needed = true
		}
	}
	if !needed {
		return nil, nil
	}
	return openStoreAlways(cfg, log)
}

// openStoreAlways opens the token store; warnings about the key (a key
// file others may read) go to log, in the configured format.
func openStoreAlways(cfg *config.Config, log *slog.Logger) (*tokenstore.Store, error) {
	key, err := tokenstore.LoadKey(cfg.StateDir, tokenstore.KeyOptions{Getenv: os.LookupEnv, Logger: log})
	if err != nil {
		return nil, err
	}
	st, err := tokenstore.Open(filepath.Clean(cfg.StateDir), key)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// newRelay builds the relay for cfg with the token store it needs (shared
// with the other instances when shared holds the cluster's store).
func newRelay(cfg *config.Config, log *slog.Logger, obs proxy.Observer, hc *http.Client, shared ...delivery.SharedLimits) (*proxy.Relay, oauth.Store, error) {
	store, err := openStore(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	store = shareTokens(store, clusterOf(shared), log)
	opts := proxy.Options{Logger: log, Store: store, Observer: obs, HTTPClient: hc}
	if len(shared) > 0 {
		opts.Shared = shared[0]
	}
	relay, err := proxy.NewRelay(cfg, opts)
	return relay, store, err
}

// daemon is a running relay: its listeners and servers.
//
// It owns the net.Listeners it bound and closes them itself when it stops,
// before and besides asking the servers to: a server's Close or Shutdown
// closes only the listeners its Serve has registered, so one called before
// that Serve goroutine ran would leave Serve accepting for ever and the
// stop waiting on it.
type daemon struct {
	log   *slog.Logger
	relay *proxy.Relay
	cfg   *config.Config

	smtp  *smtpproxy.Server
	imap  *imapproxy.Server
	pop3  *pop3proxy.Server
	admin *admin.Server

	// Addrs of the listeners actually bound (port 0 resolved).
	smtpAddr, imapAddr, pop3Addr, adminAddr net.Addr

	// listeners are bound before any is served; fixed after startDaemon.
	listeners []bound
	// closing is set before the daemon closes its listeners: a Serve that
	// returns then is stopping, not failing.
	closing atomic.Bool

	// stopped records a listener that stopped serving, for /readyz.
	stoppedMu sync.Mutex
	stopped   error

	cancel context.CancelFunc
	wg     sync.WaitGroup

	// cluster is the shared store (nil without cluster in the
	// configuration); joined once it answered (see ready).
	cluster *cluster.Store
	joined  atomic.Bool
}

// bound is a listener of the daemon and the server that serves it.
type bound struct {
	name string // smtp, imap, pop3, admin: the key under listen
	ln   net.Listener
	srv  server // nil until the servers are built
}

// startDaemon binds every listener of cfg, builds the servers, and only
// then serves them in the background. Nothing is served when a listener
// cannot be bound, and the error names it.
func startDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) (*daemon, error) {
	metrics := admin.NewMetrics()
	var shared []delivery.SharedLimits
	var cl *cluster.Store
	if cfg.Cluster.Enabled() {
		s, err := openSharedStore(cfg.Cluster, log, clusterOptions(os.LookupEnv, log))
		if err != nil {
			return nil, err
		}
		cl, shared = s, []delivery.SharedLimits{s}
	}
	relay, store, err := newRelay(cfg, log, metrics, nil, shared...)
	if err != nil {
		if cl != nil {
			cl.Close()
		}
		return nil, err
	}
	if cl != nil {
		cl.PublishQueue(func() (cluster.QueueStats, bool) { return queueStats(relay) })
		cl.Join()
	}
	lns, err := bindListeners(cfg, log)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	d := &daemon{log: log, relay: relay, cfg: cfg, listeners: lns, cancel: cancel, cluster: cl}
	d.wg.Go(func() { relay.Run(runCtx) })
	if err := d.newServers(ctx, metrics, store); err != nil {
		d.close()
		return nil, err
	}
	for _, b := range d.listeners {
		d.serve(b)
	}
	log.Info("oauthrelay started", "version", version, "smtp", addrString(d.smtpAddr), "imap", addrString(d.imapAddr),
		"pop3", addrString(d.pop3Addr), "admin", addrString(d.adminAddr), "accounts", len(cfg.Accounts))
	return d, nil
}

// bindListeners binds the listeners that are not off, in the order smtp,
// imap, pop3, admin; on an error it closes those it bound.
func bindListeners(cfg *config.Config, log *slog.Logger) ([]bound, error) {
	l := cfg.Listen
	specs := []struct {
		name, addr string
		listen     func() (net.Listener, error)
	}{
		{"smtp", l.SMTP.Addr, func() (net.Listener, error) { return listen(l.SMTP, log) }},
		{"imap", l.IMAP.Addr, func() (net.Listener, error) { return listen(l.IMAP, log) }},
		{"pop3", l.POP3.Addr, func() (net.Listener, error) { return listen(l.POP3, log) }},
		{"admin", l.Admin.Addr, func() (net.Listener, error) { return net.Listen("tcp", l.Admin.Addr) }},
	}
	var lns []bound
	for _, sp := range specs {
		if sp.addr == config.AddrOff {
			continue
		}
		ln, err := sp.listen()
		if err != nil {
			for _, b := range lns {
				b.ln.Close()
			}
			return nil, fmt.Errorf("listen.%s: %w", sp.name, err)
		}
		lns = append(lns, bound{name: sp.name, ln: ln})
	}
	return lns, nil
}

// newServers builds the server of each bound listener.
func (d *daemon) newServers(ctx context.Context, metrics *admin.Metrics, store oauth.Store) error {
	for i := range d.listeners {
		b := &d.listeners[i]
		switch b.name {
		case "smtp":
			srv, err := smtpproxy.New(ctx, d.relay, d.cfg.Listen.SMTP)
			if err != nil {
				return err
			}
			d.smtp, b.srv, d.smtpAddr = srv, srv, b.ln.Addr()
		case "imap":
			srv, err := imapproxy.New(d.relay, d.cfg.Listen.IMAP)
			if err != nil {
				return err
			}
			d.imap, b.srv, d.imapAddr = srv, srv, b.ln.Addr()
		case "pop3":
			srv, err := pop3proxy.New(d.relay, d.cfg.Listen.POP3)
			if err != nil {
				return err
			}
			d.pop3, b.srv, d.pop3Addr = srv, srv, b.ln.Addr()
		case "admin":
			opts := admin.Options{Logger: d.log, Store: store, Ready: d.ready}
			if d.cluster != nil {
				opts.Cluster = d.cluster // a nil *cluster.Store would be a non-nil Cluster
			}
			srv := admin.New(d.relay, metrics, opts)
			d.admin, b.srv, d.adminAddr = srv, srv, b.ln.Addr()
		}
	}
	return nil
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
// stopping makes /readyz fail.
func (d *daemon) serve(b bound) {
	d.wg.Go(func() {
		err := b.srv.Serve(b.ln)
		if d.closing.Load() {
			return
		}
		if errors.Is(err, imapproxy.ErrServerClosed) || errors.Is(err, pop3proxy.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			d.log.Error("listener stopped", "proto", b.name, "err", err)
		}
		d.stoppedMu.Lock()
		if d.stopped == nil {
			d.stopped = fmt.Errorf("%s listener stopped", b.name)
		}
		d.stoppedMu.Unlock()
	})
}

// acceptErrer is a listener that can say why it is not accepting
// connections (proxy.Listen's, when it offers it).
type acceptErrer interface{ Err() error }

// ready reports whether every listener is still serving and accepting.
func (d *daemon) ready() error {
	d.stoppedMu.Lock()
	err := d.stopped
	d.stoppedMu.Unlock()
	if err != nil {
		return err
	}
	var errs []error
	if d.cluster != nil && !d.joined.Load() {
		// Not ready until the instance has reached the shared store once:
		// a new instance takes no traffic before it counts its limits with
		// the others. Later outages keep it ready, on its safe share, so
		// that a store down does not take every instance out of service.
		if err := d.cluster.Ping(context.Background()); err != nil {
			return fmt.Errorf("the shared store has not answered yet: %w", err)
		}
		d.joined.Store(true)
	}
	for _, b := range d.listeners {
		if ae, ok := b.ln.(acceptErrer); ok {
			if err := ae.Err(); err != nil {
				errs = append(errs, fmt.Errorf("%s listener: %w", b.name, err))
			}
		}
	}
	return errors.Join(errs...)
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
	if cfg.Cluster != d.cfg.Cluster {
		d.log.Warn("cluster settings changed: they take effect after a restart")
	}
	d.cfg = cfg
	d.log.Info("configuration reloaded", "accounts", len(cfg.Accounts))
}

// shutdown stops accepting, gives sessions grace to finish, then closes.
func (d *daemon) shutdown(grace time.Duration) error {
	// New connections are refused at once, whether or not each Serve has
	// started.
	d.closeListeners()
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, s := range d.servers() {
		wg.Go(func() {
			// A server closing a listener the daemon closed first is told
			// net.ErrClosed: expected here.
			if err := s.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	d.close()
	if len(errs) > 0 {
		return fmt.Errorf("shutdown: %w", errors.Join(errs...))
	}
	return nil
}

// server is what the SMTP, IMAP, POP3 and admin servers have in common.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// servers returns the servers that were built.
func (d *daemon) servers() []server {
	var s []server
	for _, b := range d.listeners {
		if b.srv != nil {
			s = append(s, b.srv)
		}
	}
	return s
}

// closeListeners closes the daemon's listeners (a server may have closed
// one already: that error is of no interest).
func (d *daemon) closeListeners() {
	d.closing.Store(true)
	for _, b := range d.listeners {
		b.ln.Close()
	}
}

// close stops everything at once and waits for the daemon's goroutines.
func (d *daemon) close() {
	d.closeListeners()
	for _, s := range d.servers() {
		s.Close()
	}
	d.cancel()
	d.wg.Wait()
	if d.cluster != nil {
		d.cluster.Close()
	}
}
