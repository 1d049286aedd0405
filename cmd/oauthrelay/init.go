package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// runInit is the guided setup: it asks (or takes as flags, for automation)
// what a configuration needs, writes a commented config.yaml with the
// client secret in a separate file only the service can read and the local
// password as a bcrypt hash, writes and prints the Entra ID and Exchange
// Online PowerShell for the choices made, and for delegated grants ends by
// running the sign-in. Existing files are overwritten only when the user
// says so (or -force).
//
// Secrets (client secret, passwords) are never flags: a flag is visible in
// the process list and the shell history. They are read from standard
// input, after the prompt, or as its lines in order when stdin is a pipe.
func runInit(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a, opts, err := parseInitFlags(args)
	if err != nil {
		return err
	}
	p := &prompter{in: bufio.NewReader(stdin), out: stdout, term: isTerminal(stdin)}
	if err := a.ask(p); err != nil {
		return err
	}
	files := a.files(opts.config)
	if err := confirmOverwrite(p, files, opts.force); err != nil {
		return err
	}
	if err := a.write(files); err != nil {
		return err
	}
	cfg, err := config.Load(files.config)
	if err != nil {
		return fmt.Errorf("the written configuration does not load (fix it, or run init again): %w", err)
	}
	ps1 := a.powerShell()
	if err := writePublic(files.ps1, []byte(ps1)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nWrote %s", files.config)
	for _, f := range files.secrets {
		fmt.Fprintf(stdout, ", %s (readable by the service only)", f.path)
	}
	fmt.Fprintf(stdout, " and %s.\n\nThe Entra ID and Exchange Online steps for this setup (also in %s):\n\n%s\n", files.ps1, files.ps1, ps1)
	fmt.Fprintf(stdout, "Then: oauthrelay check -config %s\n      oauthrelay serve -config %s  (or systemctl enable --now oauthrelay)\n",
		files.config, files.config)
	if !a.delegated() || opts.noLogin {
		return nil
	}
	// The sign-in needs the app registration of the steps above.
	fmt.Fprintf(stdout, "\nSigning in (%s). Run the PowerShell above first if the app is not set up yet.\n", a.Grant)
	for _, acct := range cfg.Accounts {
		if err := runLogin(ctx, []string{"-config", files.config, acct.Name}, p.in, stdout, stderr); err != nil {
			return fmt.Errorf("sign-in of %s: %w (run `oauthrelay login -config %s %s` again when the app is ready)",
				acct.Name, err, files.config, acct.Name)
		}
	}
	return nil
}

// initOptions are init's own flags (not answers).
type initOptions struct {
	config  string
	force   bool
	noLogin bool
}

// initAnswers are what the configuration is made of.
type initAnswers struct {
	Cloud, Tenant, ClientID, AppName, Grant string
	// Credential: "secret" (Secret, or SecretFile to reference as it is),
	// "certificate" (CertFile, KeyFile) or "none" (delegated public client).
	Credential, Secret, SecretFile, CertFile, KeyFile string
	Mailboxes, SendAs, Usernames                      []string
	Password, MailboxPassword                         string
	Delivery                                          string
	// Upstream is how mail leaves: config.UpstreamSMTP, Graph or Auto.
	Upstream string
	// RBAC grants SMTP.SendAsApp through RBAC for Applications, scoped to
	// the mailboxes, instead of a tenant-wide consent (client credentials).
	RBAC bool

	// Advanced: endpoints for proxies, sovereign setups and tests; empty
	// means the defaults of the cloud.
	TokenURL, AuthorizeURL, DeviceURL, SMTPAddr, IMAPAddr, POP3Addr, GraphURL, CAFile, StateDir string
}

// The choices offered, with one line each on when to pick which.
var (
	cloudChoices = []choice{
		{config.CloudGlobal, "Microsoft 365 worldwide (almost everyone)"},
		{config.CloudUSGov, "US Government GCC High / DoD (login.microsoftonline.us)"},
		{config.CloudChina, "Microsoft 365 operated by 21Vianet in China"},
	}
	grantChoices = []choice{
		{config.GrantClientCredentials, "app-only, no user: the usual choice for a service; needs an admin's consent and mailbox permission"},
		{config.GrantAuthorizationCode, "delegated: a person signs in once in a browser; when app-only access is not allowed"},
		{config.GrantDeviceCode, "delegated: sign in once with a code on any other device; for servers without a browser"},
		{config.GrantPassword, "delegated with the mailbox's own password (ROPC); only without MFA, a last resort"},
	}
	credentialChoices = []choice{
		{"secret", "a client secret from Certificates & secrets (simple; expires within 2 years)"},
		{"certificate", "a certificate uploaded to the app, its private key kept here (no shared string)"},
		{"none", "no credential: a public client (delegated grants with \"Allow public client flows\")"},
	}
	upstreamChoices = []choice{
		{config.UpstreamSMTP, "SMTP AUTH with OAuth (XOAUTH2): needs SMTP AUTH on for the mailbox"},
		{config.UpstreamGraph, "Microsoft Graph sendMail: for tenants that keep SMTP AUTH off (needs Mail.Send)"},
		{config.UpstreamAuto, "SMTP, moving to Graph by itself if Exchange says SMTP AUTH is disabled"},
	}
	deliveryChoices = []choice{
		{config.DeliveryDirect, "the app waits for Exchange's answer to each message, as it did before"},
		{config.DeliveryQueue, "the relay stores each message on disk first and delivers it, retrying for days; for apps that do not retry well"},
	}
)

func parseInitFlags(args []string) (*initAnswers, initOptions, error) {
	a := &initAnswers{}
	var o initOptions
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.config, "config", "/etc/oauthrelay/config.yaml", "configuration file to write")
	fs.BoolVar(&o.force, "force", false, "overwrite existing files without asking")
	fs.BoolVar(&o.noLogin, "no-login", false, "do not run the sign-in of delegated grants at the end")
	fs.StringVar(&a.Cloud, "cloud", "", "global | usgov | china")
	fs.StringVar(&a.Tenant, "tenant", "", "directory (tenant) id or domain")
	fs.StringVar(&a.ClientID, "client-id", "", "application (client) id")
	fs.StringVar(&a.AppName, "app-name", "", "the app registration's display name (for the PowerShell)")
	fs.StringVar(&a.Grant, "grant", "", "client_credentials | authorization_code | device_code | password")
	fs.StringVar(&a.Credential, "credential", "", "secret | certificate | none")
	fs.StringVar(&a.SecretFile, "client-secret-file", "", "an existing file holding the client secret (else it is read from stdin)")
	fs.StringVar(&a.CertFile, "client-certificate-file", "", "PEM certificate of the app (credential certificate)")
	fs.StringVar(&a.KeyFile, "client-key-file", "", "its private key")
	mailboxes := fs.String("mailbox", "", "mailbox(es), comma-separated")
	sendAs := fs.String("send-as", "", "other addresses the app sends as (From), comma-separated; \"-\" for none")
	usernames := fs.String("username", "", "the application's local user name(s), one per mailbox, comma-separated (\"-\" for a *@domain one)")
	fs.StringVar(&a.Delivery, "delivery", "", "direct | queue")
	fs.StringVar(&a.Upstream, "upstream", "", "smtp | graph | auto (how mail leaves)")
	fs.BoolVar(&a.RBAC, "rbac", false, "client_credentials: grant SMTP.SendAsApp by RBAC for Applications scoped to the mailboxes")
	fs.StringVar(&a.TokenURL, "token-url", "", "advanced: token endpoint (default: the cloud's)")
	fs.StringVar(&a.AuthorizeURL, "authorize-url", "", "advanced: authorization endpoint")
	fs.StringVar(&a.DeviceURL, "device-url", "", "advanced: device code endpoint")
	fs.StringVar(&a.SMTPAddr, "smtp", "", "advanced: upstream SMTP host:port (STARTTLS)")
	fs.StringVar(&a.IMAPAddr, "imap", "", "advanced: upstream IMAP host:port (TLS)")
	fs.StringVar(&a.POP3Addr, "pop3", "", "advanced: upstream POP3 host:port (TLS)")
	fs.StringVar(&a.GraphURL, "graph-url", "", "advanced: Microsoft Graph root URL (default: the cloud's)")
	fs.StringVar(&a.CAFile, "ca-file", "", "advanced: extra CA for upstream TLS")
	fs.StringVar(&a.StateDir, "state-dir", "", "advanced: state directory (default: the platform's)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			var b strings.Builder
			fs.SetOutput(&b)
			fs.PrintDefaults()
			return nil, o, usageError{fmt.Errorf("init asks for every value a flag does not give; secrets come from standard input.\n%s", b.String())}
		}
		return nil, o, usageError{err}
	}
	if fs.NArg() != 0 {
		return nil, o, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	a.Mailboxes, a.Usernames = splitList(*mailboxes), splitList(*usernames)
	a.SendAs = splitList(*sendAs)
	if *sendAs == "-" {
		a.SendAs = []string{}
	}
	return a, o, nil
}

func splitList(s string) []string {
	if s == "" || s == "-" {
		return nil
	}
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		out = append(out, strings.TrimSpace(f))
	}
	return out
}

// ask fills every answer a flag did not give, in the order an
// administrator reading the vendor's guide has them at hand.
func (a *initAnswers) ask(p *prompter) error {
	fmt.Fprintln(p.out, "oauthrelay init: a configuration for Microsoft 365 in a few questions (Enter takes the [default]).")
	steps := []func() error{
		func() error { return p.choose(&a.Cloud, "Cloud", cloudChoices, config.CloudGlobal) },
		func() error {
			return p.choose(&a.Grant, "Grant (how the relay gets its tokens)", grantChoices, config.GrantClientCredentials)
		},
		func() error {
			def := ""
			if a.Grant != config.GrantClientCredentials {
				def = "organizations"
			}
			return p.text(&a.Tenant, "Directory (tenant) ID or a domain of the tenant (Entra admin center → Overview)", def, checkNonEmpty)
		},
		func() error {
			return p.text(&a.ClientID, "Application (client) ID (App registrations → the app → Overview)", "", checkNonEmpty)
		},
		func() error { return p.text(&a.AppName, "The app registration's display name", "oauthrelay", nil) },
		a.askCredential(p),
		func() error {
			if len(a.Mailboxes) > 0 {
				return a.checkMailboxes()
			}
			var s string
			q := "Mailbox(es) the application sends from or reads, comma-separated"
			if a.Grant == config.GrantClientCredentials {
				q += `; "*@domain" for every mailbox of a domain (the application then logs in with the mailbox's address)`
			}
			if err := p.text(&s, q, "", nil); err != nil {
				return err
			}
			a.Mailboxes = splitList(s)
			return a.checkMailboxes()
		},
		func() error {
			if a.SendAs != nil {
				return checkAddresses(a.SendAs)
			}
			var s string
			if err := p.text(&s, "Other addresses the application sends as (shared mailboxes, aliases), comma-separated; Enter for none", "-", nil); err != nil {
				return err
			}
			a.SendAs = splitList(s)
			return checkAddresses(a.SendAs)
		},
		a.askUsers(p),
		a.askPasswords(p),
		func() error { return p.choose(&a.Delivery, "Delivery", deliveryChoices, config.DeliveryDirect) },
		func() error {
			if a.routesMailboxes() {
				// Graph serves one mailbox an account: config refuses
				// graph and auto for these.
				a.Upstream = cmpOr(a.Upstream, config.UpstreamSMTP)
				if a.Upstream != config.UpstreamSMTP {
					return errors.New("upstream graph and auto are for accounts of one mailbox, not *@domain ones")
				}
				return nil
			}
			return p.choose(&a.Upstream, "Upstream (how mail leaves the relay)", upstreamChoices, config.UpstreamSMTP)
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	// The loader takes relative names from the config file's directory;
	// the user typed them relative to the working directory.
	for _, f := range []*string{&a.SecretFile, &a.CertFile, &a.KeyFile, &a.CAFile, &a.StateDir} {
		if *f != "" {
			abs, err := filepath.Abs(*f)
			if err != nil {
				return fmt.Errorf("init: %w", err)
			}
			*f = abs
		}
	}
	if a.Delivery == config.DeliveryQueue && a.Grant == config.GrantPassword && a.MailboxPassword == "" {
		return errors.New("delivery queue needs the mailbox password in a file (grant password)")
	}
	return nil
}

func (a *initAnswers) askCredential(p *prompter) func() error {
	return func() error {
		switch {
		case a.SecretFile != "" || a.Secret != "":
			a.Credential = "secret"
		case a.CertFile != "" || a.KeyFile != "":
			a.Credential = "certificate"
		}
		def := "secret"
		if a.Grant != config.GrantClientCredentials {
			def = "none"
		}
		if err := p.choose(&a.Credential, "Client credential", credentialChoices, def); err != nil {
			return err
		}
		switch a.Credential {
		case "none":
			if a.Grant == config.GrantClientCredentials {
				return errors.New("grant client_credentials needs a client secret or a certificate")
			}
		case "certificate":
			if err := p.text(&a.CertFile, "Certificate file (PEM, the one uploaded to the app)", "", checkFile); err != nil {
				return err
			}
			return p.text(&a.KeyFile, "Its private key file (PEM)", "", checkFile)
		case "secret":
			if a.SecretFile != "" {
				return checkFile(a.SecretFile)
			}
			return p.secret(&a.Secret, "Client secret (the Value, not the Secret ID)")
		}
		return nil
	}
}

func (a *initAnswers) askUsers(p *prompter) func() error {
	return func() error {
		if len(a.Usernames) > 0 && len(a.Usernames) != len(a.Mailboxes) {
			return fmt.Errorf("-username has %d names for %d mailboxes", len(a.Usernames), len(a.Mailboxes))
		}
		if len(a.Usernames) == len(a.Mailboxes) {
			for i, mb := range a.Mailboxes {
				if config.IsMailboxPattern(mb) {
					a.Usernames[i] = "" // the mailbox's address is the user name
				}
			}
			return nil
		}
		for _, mb := range a.Mailboxes {
			if config.IsMailboxPattern(mb) {
				a.Usernames = append(a.Usernames, "")
				continue
			}
			local, _, _ := strings.Cut(mb, "@")
			var u string
			if err := p.text(&u, "User name the application logs in to the relay with, for "+mb, local, checkNonEmpty); err != nil {
				return err
			}
			a.Usernames = append(a.Usernames, u)
		}
		return nil
	}
}

func (a *initAnswers) askPasswords(p *prompter) func() error {
	return func() error {
		if err := p.secret(&a.Password, "Password the application logs in to the relay with (a new one, local to this server)"); err != nil {
			return err
		}
		if len(a.Password) > 72 {
			return errors.New("password longer than 72 bytes (bcrypt's limit)")
		}
		if a.Grant == config.GrantPassword {
			return p.secret(&a.MailboxPassword, "The mailbox's own Microsoft 365 password (stored in a file only the service can read)")
		}
		return nil
	}
}

// routesMailboxes reports a *@domain mailbox among the answers.
func (a *initAnswers) routesMailboxes() bool {
	for _, mb := range a.Mailboxes {
		if config.IsMailboxPattern(mb) {
			return true
		}
	}
	return false
}

// sendsThroughGraph reports an upstream that may send through Graph.
func (a *initAnswers) sendsThroughGraph() bool {
	return a.Upstream == config.UpstreamGraph || a.Upstream == config.UpstreamAuto
}

func (a *initAnswers) delegated() bool {
	return a.Grant == config.GrantAuthorizationCode || a.Grant == config.GrantDeviceCode
}

// choice is one value offered, with when to pick it.
type choice struct{ value, when string }

// prompter asks on out and reads answers, one a line, from in.
type prompter struct {
	in   *bufio.Reader
	out  io.Writer
	term bool // in is a terminal: secrets are read without echo
}

func (p *prompter) line() (string, error) {
	s, err := p.in.ReadString('\n')
	if err != nil && (!errors.Is(err, io.EOF) || s == "") {
		return "", err
	}
	return strings.TrimRight(s, "\r\n"), nil
}

// text asks for a value unless *v is set (a flag), and checks it.
func (p *prompter) text(v *string, question, def string, check func(string) error) error {
	for *v == "" {
		if def != "" {
			fmt.Fprintf(p.out, "%s [%s]: ", question, def)
		} else {
			fmt.Fprintf(p.out, "%s: ", question)
		}
		s, err := p.line()
		if err != nil {
			return fmt.Errorf("no answer to %q (give it as a flag: oauthrelay init -h): %w", question, err)
		}
		*v = cmpOr(strings.TrimSpace(s), def)
		if *v == "" {
			continue
		}
		if check != nil {
			if err := check(*v); err != nil {
				if !p.term {
					return fmt.Errorf("%s: %w", question, err)
				}
				fmt.Fprintf(p.out, "  %v\n", err)
				*v = ""
			}
		}
	}
	if *v == "-" {
		*v = ""
	}
	if check != nil && *v != "" {
		return check(*v)
	}
	return nil
}

// choose asks for one of choices, by value or number.
func (p *prompter) choose(v *string, question string, choices []choice, def string) error {
	valid := func(s string) error {
		if slices.ContainsFunc(choices, func(c choice) bool { return c.value == s }) {
			return nil
		}
		vals := make([]string, len(choices))
		for i, c := range choices {
			vals[i] = c.value
		}
		return fmt.Errorf("%q is not one of %s", s, strings.Join(vals, ", "))
	}
	if *v != "" {
		return valid(*v)
	}
	fmt.Fprintf(p.out, "\n%s:\n", question)
	for i, c := range choices {
		fmt.Fprintf(p.out, "  %d. %-19s %s\n", i+1, c.value, c.when)
	}
	return p.text(v, "Choose", def, func(s string) error {
		if n, err := strconv.Atoi(s); err == nil && n >= 1 && n <= len(choices) {
			*v = choices[n-1].value
			return nil
		}
		return valid(s)
	})
}

// secret reads a secret line, without echo on a terminal.
func (p *prompter) secret(v *string, question string) error {
	if *v != "" {
		return nil
	}
	// Echo goes off before the question is shown: someone who types at
	// once (or a script that answers on seeing it) is never echoed.
	restore := noEcho(p.term)
	fmt.Fprintf(p.out, "%s: ", question)
	s, err := p.line()
	restore()
	fmt.Fprintln(p.out) // the Enter typed was not echoed (or the answer came from a pipe)
	if err != nil {
		return fmt.Errorf("no answer to %q (secrets are read from standard input): %w", question, err)
	}
	if s == "" {
		return fmt.Errorf("%s: empty", question)
	}
	*v = s
	return nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func checkNonEmpty(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("required")
	}
	return nil
}

func checkFile(s string) error {
	if _, err := os.Stat(s); err != nil {
		return err
	}
	return nil
}

// checkMailboxes: addresses, and for app-only access "*@domain" patterns
// (a domain-wide account).
func (a *initAnswers) checkMailboxes() error {
	if len(a.Mailboxes) == 0 {
		return errors.New("at least one mailbox is required")
	}
	for _, mb := range a.Mailboxes {
		domain, pattern := strings.CutPrefix(mb, "*@")
		switch {
		case !pattern:
			if err := checkAddresses([]string{mb}); err != nil {
				return err
			}
		case a.Grant != config.GrantClientCredentials:
			return fmt.Errorf("%q: a domain-wide mailbox needs grant client_credentials (app-only)", mb)
		default:
			if err := checkAddresses([]string{"x@" + domain}); err != nil {
				return fmt.Errorf("%q is not \"*@\" and a domain", mb)
			}
		}
	}
	return nil
}

func checkAddresses(list []string) error {
	for _, s := range list {
		// Quotes would also break the PowerShell's string literals.
		if !config.IsAddress(s) || strings.ContainsAny(s, "\"'`$") {
			return fmt.Errorf("%q is not an email address", s)
		}
	}
	return nil
}

// initFiles are the files init writes.
type initFiles struct {
	config, ps1 string
	secrets     []secretFile
}

type secretFile struct {
	path string
	data []byte
}

// files names what a writes next to the configuration: the secrets as
// NAME-client-secret and ACCOUNT-mailbox-password, the PowerShell as
// oauthrelay-setup.ps1.
func (a *initAnswers) files(configPath string) initFiles {
	dir := filepath.Dir(configPath)
	f := initFiles{config: configPath, ps1: filepath.Join(dir, "oauthrelay-setup.ps1")}
	if a.Credential == "secret" && a.SecretFile == "" {
		f.secrets = append(f.secrets, secretFile{filepath.Join(dir, providerName+"-client-secret"), []byte(a.Secret + "\n")})
	}
	if a.MailboxPassword != "" {
		for _, name := range a.accountNames() {
			f.secrets = append(f.secrets, secretFile{filepath.Join(dir, name+"-mailbox-password"), []byte(a.MailboxPassword + "\n")})
		}
	}
	return f
}

// confirmOverwrite asks before any existing file is replaced.
func confirmOverwrite(p *prompter, f initFiles, force bool) error {
	var existing []string
	for _, path := range append([]string{f.config, f.ps1}, secretPaths(f)...) {
		if _, err := os.Lstat(path); err == nil {
			existing = append(existing, path)
		}
	}
	if len(existing) == 0 || force {
		return nil
	}
	fmt.Fprintf(p.out, "\nThese files exist: %s\nOverwrite them? [y/N]: ", strings.Join(existing, ", "))
	s, err := p.line()
	if err != nil || !strings.EqualFold(strings.TrimSpace(s), "y") && !strings.EqualFold(strings.TrimSpace(s), "yes") {
		return fmt.Errorf("not overwritten: %s (run init with -force to replace them, or with another -config)", strings.Join(existing, ", "))
	}
	return nil
}

func secretPaths(f initFiles) []string {
	var out []string
	for _, s := range f.secrets {
		out = append(out, s.path)
	}
	return out
}

// write writes the secrets (0600, atomically) and the configuration.
func (a *initAnswers) write(f initFiles) error {
	if err := os.MkdirAll(filepath.Dir(f.config), 0o755); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for _, s := range f.secrets {
		if err := securefile.WriteFile(s.path, s.data); err != nil {
			return fmt.Errorf("init: %w", err)
		}
		giveToService(s.path, false)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(a.Password), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("init: hash password: %w", err)
	}
	// The config holds bcrypt hashes and file names, no secret: readable
	// by the service (its group, with the packages), not by everyone.
	if err := securefile.WriteFile(f.config, []byte(a.configYAML(string(hash)))); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if runtime.GOOS != "windows" {
		if err := os.Chmod(f.config, 0o640); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	giveToService(f.config, true)
	return nil
}

// serviceUser is the system user the packages run the relay as.
const serviceUser = "oauthrelay"

// giveToService lets the packaged service read a file init wrote as root:
// a secret becomes the service user's (0600), the config its group's
// (root:oauthrelay 0640). Elsewhere (no such user, not root, Windows) the
// file stays the current user's.
func giveToService(path string, group bool) {
	if runtime.GOOS == "windows" || os.Geteuid() != 0 {
		return
	}
	u, err := user.Lookup(serviceUser)
	if err != nil {
		return
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if group {
		uid = 0
	}
	_ = os.Chown(path, uid, gid) // best effort: the file is still private
}

// writePublic writes a file that holds no secret (the PowerShell).
func writePublic(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	return nil
}
