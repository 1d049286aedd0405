package testutil

// A real Dovecot 2.3 as an XOAUTH2 IMAP upstream for end-to-end tests: it
// validates bearer tokens through an RFC 7662 introspection endpoint (the
// fake Microsoft 365's), so a token the relay got from the fake is accepted
// or refused by a server that is not ours.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

const (
	// dovecotStartTimeout bounds the wait for Dovecot's IMAPS port.
	dovecotStartTimeout = 10 * time.Second
	// dovecotStopTimeout is how long Dovecot gets to stop after SIGTERM
	// before it is killed.
	dovecotStopTimeout = 5 * time.Second
	// dovecotPOP3 is the POP3 service's binary (Debian's dovecot-pop3d).
	dovecotPOP3 = "/usr/lib/dovecot/pop3"
	// dovecotStartAttempts: a free port picked before the start may be
	// taken by another process before Dovecot binds it; start again.
	dovecotStartAttempts = 3
)

// DovecotOptions configures StartDovecot.
type DovecotOptions struct {
	// IntrospectURL is the RFC 7662 endpoint Dovecot's oauth2 passdb posts
	// each token to (fakems.Server.IntrospectURL); its answer must be
	// {"active": true, "username": "<the XOAUTH2 user>"}. Required.
	IntrospectURL string
	// Users get their home directory made before the start, so a test can
	// put files there (Home). Other users get one on their first login.
	Users []string
	// Extra is appended to dovecot.conf (settings of a test's own).
	Extra string
	// Debug turns on auth_debug and the oauth2 passdb's debug log. Dovecot
	// then logs the tokens themselves; by default it logs only why a login
	// failed (auth_verbose).
	Debug bool
	// Submission adds Dovecot's submission service (dovecot-submissiond)
	// on a loopback port with STARTTLS (SubmissionAddr), AUTH XOAUTH2 and
	// OAUTHBEARER as for IMAP, relaying every message to an SMTP sink in
	// the test process (Sink).
	Submission bool
	// POP3 adds Dovecot's POP3 service (dovecot-pop3d) on a loopback port
	// with implicit TLS (POP3Addr), AUTH XOAUTH2 and OAUTHBEARER as for
	// IMAP, over the same Maildir (Deliver puts mail there).
	POP3 bool
}

// Dovecot is a running Dovecot. It is stopped by t.Cleanup; its log is
// printed with t.Log when the test failed.
type Dovecot struct {
	// IMAPAddr is the IMAP server on implicit TLS (imaps), 127.0.0.1:port.
	IMAPAddr string
	// CAFile is the PEM file of the test CA that signed Dovecot's
	// certificate (a provider's ca_file); CAPool holds the same CA.
	CAFile string
	CAPool *x509.CertPool
	// Dir holds dovecot.conf, the certificate, the log and the homes.
	Dir string
	// SubmissionAddr is the submission service (STARTTLS), 127.0.0.1:port,
	// and Sink the SMTP server it relays to; both only with
	// DovecotOptions.Submission.
	SubmissionAddr string
	Sink           *SMTPSink
	// POP3Addr is the POP3 server on implicit TLS (pop3s),
	// 127.0.0.1:port; only with DovecotOptions.POP3.
	POP3Addr string

	logFile  string
	stderr   *Buf
	bin      string
	confFile string
	t        testing.TB
	ids      dovecotIDs
	stop     func() error // nil while stopped
	cleanup  bool         // the cleanup that stops it is registered
	// delivered counts Deliver's messages, for unique file names.
	delivered int
}

// ClientTLS is a client configuration that trusts Dovecot's certificate.
func (d *Dovecot) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: d.CAPool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// Home is user's home directory (mail is in Home(user)/Maildir).
func (d *Dovecot) Home(user string) string {
	return filepath.Join(d.Dir, "home", strings.ToLower(user))
}

// Log returns what Dovecot logged so far (its log file and its standard
// error).
func (d *Dovecot) Log() string {
	b, _ := os.ReadFile(d.logFile)
	return string(b) + d.stderr.String()
}

// DovecotPath returns the dovecot binary. When it is not installed the test
// is skipped, unless the CI environment variable is set: .ci/run installs
// dovecot-core and dovecot-imapd, so it must be there.
func DovecotPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("dovecot")
	if err != nil {
		// /usr/sbin is not on every user's PATH.
		if _, serr := os.Stat("/usr/sbin/dovecot"); serr == nil {
			return "/usr/sbin/dovecot"
		}
		if os.Getenv("CI") != "" {
			t.Fatalf("dovecot not installed (CI installs dovecot-core and dovecot-imapd in .ci/run): %v", err)
		}
		t.Skip("dovecot not installed (Debian: dovecot-core dovecot-imapd)")
	}
	return p
}

// StartDovecot writes a configuration into a temporary directory and runs
// `dovecot -F -c FILE` until the test ends: IMAP on implicit TLS only (no
// plaintext listener), AUTHENTICATE XOAUTH2 and OAUTHBEARER checked by the
// oauth2 passdb against o.IntrospectURL, a static userdb, Maildir homes,
// Sent and Trash special-use folders, a 100 MB quota (QUOTA) and
// COMPRESS=DEFLATE.
// Mail processes run as nobody when the test runs as root (Dovecot's login
// and internal processes as dovenull and dovecot, which the Debian packages
// create), else as the current user.
func StartDovecot(t testing.TB, o DovecotOptions) *Dovecot {
	t.Helper()
	bin := DovecotPath(t)
	if o.IntrospectURL == "" {
		t.Fatal("StartDovecot: IntrospectURL is required")
	}
	if _, err := os.Stat(dovecotPOP3); o.POP3 && err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("dovecot's pop3 not installed (CI installs dovecot-pop3d in .ci/run): %v", err)
		}
		t.Skip("dovecot's pop3 not installed (Debian: dovecot-pop3d)")
	}
	ids := dovecotIdentities(t)

	// Mail processes run as ids.uid and must reach the homes: t.TempDir()
	// and its parent are 0700.
	d := &Dovecot{Dir: t.TempDir(), stderr: &Buf{}}
	for _, dir := range []string{filepath.Dir(d.Dir), d.Dir} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	home := filepath.Join(d.Dir, "home")
	mkdirOwned(t, home, 0o755, ids)
	for _, u := range o.Users {
		mkdirOwned(t, d.Home(u), 0o700, ids)
	}
	checkTraversable(t, home, ids)

	// Unix socket paths are limited to 108 bytes: base_dir gets a short
	// name of its own (Dovecot creates it).
	short, err := os.MkdirTemp("", "dc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	if err := os.Chmod(short, 0o755); err != nil {
		t.Fatal(err)
	}

	certFile, keyFile := filepath.Join(d.Dir, "dovecot.crt"), filepath.Join(d.Dir, "dovecot.key")
	d.CAFile = filepath.Join(d.Dir, "ca.crt")
	d.CAPool = WriteCert(t, d.CAFile, certFile, keyFile)
	d.logFile = filepath.Join(d.Dir, "dovecot.log")

	oauth2Conf := filepath.Join(d.Dir, "oauth2.conf.ext")
	if err := os.WriteFile(oauth2Conf, []byte(dovecotOAuth2Conf(o.IntrospectURL, o.Debug)), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(d.Dir, "state")
	if err := os.Mkdir(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}

	if o.Submission {
		d.Sink = StartSMTPSink(t)
	}
	d.bin, d.t, d.ids = bin, t, ids
	var lastErr error
	for attempt := 1; attempt <= dovecotStartAttempts; attempt++ {
		port := freePort(t)
		conf := dovecotConf{
			BaseDir:  filepath.Join(short, fmt.Sprintf("run%d", attempt)),
			StateDir: stateDir, LogFile: d.logFile, Instance: filepath.Base(short),
			CertFile: certFile, KeyFile: keyFile, Port: port, OAuth2Conf: oauth2Conf,
			Home: home, IDs: ids, Extra: o.Extra, Debug: o.Debug,
		}
		if o.POP3 {
			conf.POP3Port = freePort(t)
			d.POP3Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(conf.POP3Port))
		}
		if o.Submission {
			conf.SubmissionPort = freePort(t)
			conf.SinkAddr = d.Sink.Addr
			d.SubmissionAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(conf.SubmissionPort))
		}
		d.confFile = filepath.Join(d.Dir, "dovecot.conf")
		if err := os.WriteFile(d.confFile, []byte(conf.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		d.IMAPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		lastErr = d.start()
		if lastErr == nil {
			return d
		}
		if !strings.Contains(d.Log(), "Address already in use") {
			break
		}
	}
	t.Fatalf("dovecot did not start: %v\n%s", lastErr, d.Log())
	return nil
}

// Stop stops Dovecot (an upstream outage); Start runs it again with the
// same configuration and ports. Stop of a stopped Dovecot does nothing.
func (d *Dovecot) Stop() {
	d.t.Helper()
	if d.stop == nil {
		return
	}
	if err := d.stop(); err != nil && !errors.Is(err, context.Canceled) {
		d.t.Logf("dovecot stopped: %v", err)
	}
	d.stop = nil
}

// Start runs a stopped Dovecot again; the test fails if it does not serve.
func (d *Dovecot) Start() {
	d.t.Helper()
	if d.stop != nil {
		return
	}
	if err := d.start(); err != nil {
		d.t.Fatalf("dovecot did not start again: %v\n%s", err, d.Log())
	}
}

// start runs Dovecot and waits for its ports. On failure the process is
// gone when it returns; the first successful start registers the cleanup
// that stops it.
func (d *Dovecot) start() error {
	t := d.t
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, d.bin, "-F", "-c", d.confFile)
	cmd.Stdout, cmd.Stderr = d.stderr, d.stderr
	// A cancelled context asks for a clean stop first: the master then stops
	// its children (auth, imap-login, imap), which SIGKILL would orphan.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = dovecotStopTimeout
	// If the test binary dies without its cleanups (a -timeout panic),
	// Dovecot goes with it rather than keep the ports.
	stopWithParent(cmd)
	if err := cmd.Start(); err != nil {
		cancel()
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cancel()
		return <-exited
	}

	deadline := time.Now().Add(dovecotStartTimeout)
	for {
		select {
		case err := <-exited:
			cancel()
			return fmt.Errorf("dovecot exited: %v", err)
		default:
		}
		err := d.probe()
		if err == nil && d.SubmissionAddr != "" {
			err = d.probeSubmission()
		}
		if err == nil && d.POP3Addr != "" {
			err = d.probePOP3()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("port %s not open after %v: %v", d.IMAPAddr, dovecotStartTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.stop = stop
	if d.cleanup {
		return nil
	}
	d.cleanup = true
	t.Cleanup(func() {
		// Wait reports the cancellation itself when the master stopped on
		// SIGTERM; anything else (ErrWaitDelay: it had to be killed) is
		// worth a line.
		d.Stop()
		if t.Failed() {
			t.Logf("dovecot log (%s):\n%s", d.logFile, d.Log())
		}
	})
	return nil
}

// probe connects to the IMAPS port and reads the greeting: Dovecot is
// serving when the TLS handshake and the greeting succeed.
func (d *Dovecot) probe() error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", d.IMAPAddr, d.ClientTLS())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != "* OK " {
		return fmt.Errorf("greeting starts %q", b)
	}
	return nil
}

// probeSubmission connects to the submission port and reads the start of
// the greeting (RFC 5321 section 4.2: 220).
func (d *Dovecot) probeSubmission() error {
	c, err := net.DialTimeout("tcp", d.SubmissionAddr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != "220 " {
		return fmt.Errorf("submission greeting starts %q", b)
	}
	return nil
}

// probePOP3 connects to the POP3S port and reads the start of the greeting
// (RFC 1939 §4: +OK).
func (d *Dovecot) probePOP3() error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", d.POP3Addr, d.ClientTLS())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 3)
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != "+OK" {
		return fmt.Errorf("POP3 greeting starts %q", b)
	}
	return nil
}

// Deliver puts msg into user's INBOX as a mail delivery agent does
// (Maildir: written in tmp, renamed into new), owned by the mail
// processes' user, so that POP3 and IMAP find it.
func (d *Dovecot) Deliver(t testing.TB, user string, msg []byte) {
	t.Helper()
	md := filepath.Join(d.Home(user), "Maildir")
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		mkdirOwned(t, filepath.Join(md, sub), 0o700, d.ids)
	}
	d.delivered++
	name := fmt.Sprintf("%d.M%dP%d.oauthrelay-test", time.Now().Unix(), d.delivered, os.Getpid())
	tmp := filepath.Join(md, "tmp", name)
	if err := os.WriteFile(tmp, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	if d.ids.root {
		if err := os.Chown(tmp, d.ids.uid, d.ids.gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
		t.Fatal(err)
	}
}

// dovecotIDs are the users Dovecot's processes run as.
type dovecotIDs struct {
	uid, gid                    int
	internalUser, loginUser     string
	internalGroup               string // "" keeps Dovecot's default (dovecot)
	root                        bool
	firstValidUID, lastValidUID int
}

func dovecotIdentities(t testing.TB) dovecotIDs {
	t.Helper()
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			t.Fatal(err)
		}
		g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
		if err != nil {
			t.Fatal(err)
		}
		uid, gid := os.Getuid(), os.Getgid()
		// Dovecot's unix sockets belong to default_internal_group: one
		// this user is in.
		return dovecotIDs{uid: uid, gid: gid, internalUser: u.Username, loginUser: u.Username,
			internalGroup: g.Name, firstValidUID: uid, lastValidUID: uid}
	}
	lookup := func(name string) *user.User {
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatalf("dovecot as root needs the user %s (the Debian packages create dovecot and dovenull): %v", name, err)
		}
		return u
	}
	nobody := lookup("nobody")
	lookup("dovecot")
	lookup("dovenull")
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	return dovecotIDs{uid: uid, gid: gid, internalUser: "dovecot", loginUser: "dovenull", root: true,
		firstValidUID: uid, lastValidUID: uid}
}

// mkdirOwned makes dir for the mail processes' user.
func mkdirOwned(t testing.TB, dir string, mode os.FileMode, ids dovecotIDs) {
	t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	if ids.root {
		if err := os.Chown(dir, ids.uid, ids.gid); err != nil {
			t.Fatal(err)
		}
	}
}

// checkTraversable fails early, with a message that says why, when a
// directory above dir is not searchable by others, so not by the mail
// processes' user (Dovecot would only log "Permission denied" at the first
// login).
func checkTraversable(t testing.TB, dir string, ids dovecotIDs) {
	t.Helper()
	if !ids.root {
		return
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("dovecot: uid %d cannot traverse %s (mode %v): set TMPDIR to a world-searchable directory",
				ids.uid, p, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return
		}
	}
}

type dovecotConf struct {
	BaseDir, StateDir, LogFile, Instance string
	CertFile, KeyFile                    string
	Port                                 int
	OAuth2Conf                           string
	Home                                 string
	IDs                                  dovecotIDs
	Extra                                string
	Debug                                bool
	// SubmissionPort, when not 0, adds the submission service relaying to
	// SinkAddr.
	SubmissionPort int
	SinkAddr       string
	// POP3Port, when not 0, adds the POP3 service on implicit TLS.
	POP3Port int
}

func (c dovecotConf) String() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# Written by testutil.StartDovecot.")
	p("base_dir = %s", c.BaseDir)
	p("state_dir = %s", c.StateDir)
	p("instance_name = %s", c.Instance)
	p("log_path = %s", c.LogFile)
	protocols := "imap"
	if c.SubmissionPort != 0 {
		protocols += " submission"
	}
	if c.POP3Port != 0 {
		protocols += " pop3"
	}
	p("protocols = %s", protocols)
	p("listen = 127.0.0.1")
	p("default_internal_user = %s", c.IDs.internalUser)
	p("default_login_user = %s", c.IDs.loginUser)
	if c.IDs.internalGroup != "" {
		p("default_internal_group = %s", c.IDs.internalGroup)
	}
	p("first_valid_uid = %d", c.IDs.firstValidUID)
	p("last_valid_uid = %d", c.IDs.lastValidUID)
	p("")
	p("ssl = required")
	p("ssl_cert = <%s", c.CertFile)
	p("ssl_key = <%s", c.KeyFile)
	p("ssl_min_protocol = TLSv1.2")
	p("")
	p("auth_mechanisms = xoauth2 oauthbearer")
	// A refused login is answered at once (the default waits 2 s), and
	// tests may open more than the default 10 connections per user and IP.
	p("auth_failure_delay = 0")
	p("mail_max_userip_connections = 50")
	p("auth_verbose = yes")
	p("auth_debug = %s", yesNo(c.Debug))
	p("passdb {")
	p("  driver = oauth2")
	p("  mechanisms = xoauth2 oauthbearer")
	p("  args = %s", c.OAuth2Conf)
	p("}")
	p("userdb {")
	p("  driver = static")
	p("  args = uid=%d gid=%d home=%s/%%u", c.IDs.uid, c.IDs.gid, c.Home)
	p("}")
	p("mail_location = maildir:~/Maildir")
	p("namespace inbox {")
	p("  inbox = yes")
	p("  separator = /")
	p("  mailbox Sent {")
	p("    special_use = \\Sent")
	p("    auto = subscribe")
	p("  }")
	p("  mailbox Trash {")
	p("    special_use = \\Trash")
	p("    auto = subscribe")
	p("  }")
	p("}")
	// Extensions a semantic proxy built on go-imap would lose: QUOTA
	// (RFC 9208) and COMPRESS=DEFLATE (RFC 4978).
	p("mail_plugins = $mail_plugins quota zlib")
	p("protocol imap {")
	p("  mail_plugins = $mail_plugins imap_quota imap_zlib")
	p("}")
	p("plugin {")
	p("  quota = count:User quota")
	p("  quota_rule = *:storage=100M")
	p("  quota_vsizes = yes")
	p("}")
	p("")
	p("service imap-login {")
	p("  inet_listener imap {")
	p("    port = 0")
	p("  }")
	p("  inet_listener imaps {")
	p("    address = 127.0.0.1")
	p("    port = %d", c.Port)
	p("    ssl = yes")
	p("  }")
	p("}")
	if c.SubmissionPort != 0 {
		c.writeSubmission(p)
	}
	if c.POP3Port != 0 {
		c.writePOP3(p)
	}
	if !c.IDs.root {
		// chroot needs root: every service that has one by default runs
		// without it.
		for _, svc := range []string{"imap-login", "imap-urlauth-login", "submission-login", "pop3-login", "anvil", "ipc", "old-stats", "aggregator", "director"} {
			p("service %s {", svc)
			p("  chroot =")
			p("}")
		}
	}
	if c.Extra != "" {
		p("")
		p("%s", c.Extra)
	}
	return b.String()
}

// writeSubmission adds the submission service: STARTTLS only (ssl =
// required refuses AUTH before it), the login's user taken from the
// token's introspection as for IMAP, every message relayed in the clear to
// the sink (a trusted relay on loopback, no authentication).
func (c dovecotConf) writeSubmission(p func(string, ...any)) {
	host, port, _ := net.SplitHostPort(c.SinkAddr)
	p("hostname = dovecot.test")
	p("submission_relay_host = %s", host)
	p("submission_relay_port = %s", port)
	p("submission_relay_trusted = no")
	p("submission_relay_ssl = no")
	p("submission_max_mail_size = 50M")
	p("service submission-login {")
	p("  inet_listener submission {")
	p("    address = 127.0.0.1")
	p("    port = %d", c.SubmissionPort)
	p("  }")
	p("}")
}

// writePOP3 adds the POP3 service: implicit TLS only, UIDLs Dovecot's
// recommended format.
func (c dovecotConf) writePOP3(p func(string, ...any)) {
	p("pop3_uidl_format = %%08Xu%%08Xv")
	p("service pop3-login {")
	p("  inet_listener pop3 {")
	p("    port = 0")
	p("  }")
	p("  inet_listener pop3s {")
	p("    address = 127.0.0.1")
	p("    port = %d", c.POP3Port)
	p("    ssl = yes")
	p("  }")
	p("}")
}

// dovecotOAuth2Conf is the oauth2 passdb's settings: every token is checked
// by POSTing token=... to the introspection endpoint (no local validation,
// no cache), and the login's user must be the "username" it returns.
func dovecotOAuth2Conf(introspectURL string, debug bool) string {
	return strings.Join([]string{
		"introspection_mode = post",
		"introspection_url = " + introspectURL,
		"force_introspection = yes",
		"username_attribute = username",
		"active_attribute = active",
		"active_value = true",
		"timeout_msecs = 5000",
		"debug = " + yesNo(debug),
		"",
	}, "\n")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// freePort returns a loopback port nothing listens on at the moment.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sinkReadTimeout bounds each read of the sink's server, so a peer that
// stops talking cannot hold a test.
const sinkReadTimeout = 30 * time.Second

// SinkMessage is one message the sink accepted: the envelope and the bytes
// of DATA as they came (dot-unstuffed, CRLF kept).
type SinkMessage struct {
	From string
	To   []string
	Data []byte
}

// SMTPSink is an SMTP server in the test process that accepts every
// message (no authentication, no TLS: Dovecot relays to it on loopback)
// and records it, with the number of connections open at once.
type SMTPSink struct {
	// Addr is where it listens, 127.0.0.1:port.
	Addr string

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every new message
	msgs     []SinkMessage
	open     int
	maxOpen  int
	sessions int
}

// StartSMTPSink starts a sink that t.Cleanup stops.
func StartSMTPSink(t testing.TB) *SMTPSink {
	t.Helper()
	k := &SMTPSink{changed: make(chan struct{})}
	srv := smtp.NewServer(sinkBackend{k})
	srv.Domain = "sink.test"
	srv.ReadTimeout = sinkReadTimeout
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k.Addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return k
}

// Messages returns a copy of what the sink accepted so far.
func (k *SMTPSink) Messages() []SinkMessage {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.msgs)
}

// MaxConcurrent is the largest number of connections that were open at
// the sink at once; Sessions the number of connections in all.
func (k *SMTPSink) MaxConcurrent() (maxOpen, sessions int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.maxOpen, k.sessions
}

// WaitMessages waits until the sink holds n messages or ctx ends, and
// returns what it holds.
func (k *SMTPSink) WaitMessages(ctx context.Context, n int) ([]SinkMessage, error) {
	for {
		k.mu.Lock()
		msgs, changed := slices.Clone(k.msgs), k.changed
		k.mu.Unlock()
		if len(msgs) >= n {
			return msgs, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return msgs, fmt.Errorf("sink has %d of %d messages: %w", len(msgs), n, ctx.Err())
		}
	}
}

type sinkBackend struct{ k *SMTPSink }

func (b sinkBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	k := b.k
	k.mu.Lock()
	k.open++
	k.sessions++
	k.maxOpen = max(k.maxOpen, k.open)
	k.mu.Unlock()
	return &sinkSession{k: k}, nil
}

// sinkSession is one connection at the sink; go-smtp calls Logout when it
// closes, whatever ended it.
type sinkSession struct {
	k    *SMTPSink
	from string
	to   []string
}

func (s *sinkSession) Reset() { s.from, s.to = "", nil }

func (s *sinkSession) Logout() error {
	s.k.mu.Lock()
	s.k.open--
	s.k.mu.Unlock()
	return nil
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("sink: reading DATA: %w", err)
	}
	k := s.k
	k.mu.Lock()
	k.msgs = append(k.msgs, SinkMessage{From: s.from, To: slices.Clone(s.to), Data: b})
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
	return nil
}
