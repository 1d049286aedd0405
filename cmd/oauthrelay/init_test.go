package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// fakeFlags point init's advanced flags at the fake Microsoft 365; the
// rest of the answers come from the prompts or other flags.
func fakeFlags(ms *fakems.Server, dir string) []string {
	return []string{"-token-url", ms.TokenURL, "-device-url", ms.DeviceURL, "-authorize-url", ms.AuthorizeURL,
		"-smtp", ms.SMTPAddr, "-imap", ms.IMAPAddr, "-pop3", ms.POP3Addr, "-graph-url", ms.GraphURL, "-ca-file", ms.CAFile, "-state-dir", filepath.Join(dir, "state")}
}

// onLoopbackPort0 rewrites the listeners init writes (the usual
// 127.0.0.1:2525, :1143, :8025) to free ports, so the test does not
// depend on what else runs on this machine.
func onLoopbackPort0(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, addr := range []string{"127.0.0.1:2525", "127.0.0.1:1143", "127.0.0.1:1110", "127.0.0.1:8025"} {
		if !strings.Contains(s, `"`+addr+`"`) {
			t.Fatalf("init wrote no listener %s:\n%s", addr, s)
		}
		s = strings.ReplaceAll(s, `"`+addr+`"`, `"127.0.0.1:0"`)
	}
	writeFile(t, path, s)
}

// deliversThroughRelay proves the written configuration end to end: check
// passes, serve starts, the app's login and a message go through to the
// fake Exchange.
func deliversThroughRelay(t *testing.T, ms *fakems.Server, path, user, pass, from, subject string, checkArgs ...string) {
	t.Helper()
	if r := runCmd(t, nil, append([]string{"check", "-config", path}, checkArgs...)...); r.code != 0 || !strings.Contains(r.stdout, "All checks passed") {
		t.Fatalf("check of the written configuration: %v", r)
	}
	onLoopbackPort0(t, path)
	s := startServe(t, path)
	c := mustLogin(t, s.smtp, user, pass)
	sendOn(t, c, from, subject)
	c.Quit()
	if m := delivered(t, ms, subject); m.From != from {
		t.Errorf("delivered from %q, want %q", m.From, from)
	}
}

func wantMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
	}
}

// TestInitPrompts answers init's questions through standard input, in the
// order it asks them, for the usual setup (client credentials with a
// secret): the configuration it writes loads, keeps the secret in a 0600
// file and the password as a bcrypt hash, passes check and relays a
// message; the PowerShell names the app and the mailbox.
func TestInitPrompts(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "config.yaml")
	answers := strings.Join([]string{
		"",          // cloud: [global]
		"1",         // grant: client_credentials
		ms.Tenant,   // tenant
		appID,       // client id
		"ERP Relay", // app name
		"",          // credential: [secret]
		appSecret,   // the secret
		mailbox,     // mailboxes
		"",          // send as: none
		localUser,   // user name for the mailbox
		localPass,   // the application's password
		"",          // delivery: [direct]
		"",          // upstream: [smtp]
	}, "\n") + "\n"
	r := runCmd(t, strings.NewReader(answers), append([]string{"init", "-config", path}, fakeFlags(ms, dir)...)...)
	if r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	wantAll(t, r.stdout, "Cloud:", "client_credentials", "app-only", "device_code", "Delivery:", "Wrote "+path,
		"New-ServicePrincipal", "Add-MailboxPermission -Identity '"+mailbox+"'")

	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("the written configuration does not load: %v", err)
	}
	a := cfg.Accounts[0]
	if a.Mailbox != mailbox || a.Username != localUser || a.Delivery != config.DeliveryDirect || a.ProviderRef.ClientSecret != appSecret {
		t.Errorf("account %+v, provider secret from the file %v", a, a.ProviderRef.ClientSecret == appSecret)
	}
	if bcrypt.CompareHashAndPassword([]byte(a.PasswordHash), []byte(localPass)) != nil {
		t.Error("password_hash is not the hash of the password given")
	}
	text, _ := os.ReadFile(path)
	if strings.Contains(string(text), appSecret) || strings.Contains(string(text), localPass) {
		t.Error("the configuration holds the client secret or the password")
	}
	if !strings.Contains(string(text), "client_secret_file:") || !strings.Contains(string(text), "# client_credentials: app-only") {
		t.Errorf("the configuration lacks client_secret_file or its comments:\n%s", text)
	}
	secretPath := filepath.Join(dir, "etc", "m365-client-secret")
	wantMode(t, secretPath, 0o600)
	wantMode(t, path, 0o640)

	ps1, err := os.ReadFile(filepath.Join(dir, "etc", "oauthrelay-setup.ps1"))
	if err != nil {
		t.Fatal(err)
	}
	wantAll(t, string(ps1), "App:       ERP Relay (client id "+appID+")", "Mailboxes: "+mailbox,
		"$appId = '"+appID+"'", "'SMTP.SendAsApp','IMAP.AccessAsApp','POP.AccessAsApp'", "New-MgServicePrincipalAppRoleAssignment",
		"New-ServicePrincipal -AppId $appId -ObjectId $sp.Id -DisplayName 'ERP Relay'",
		"Add-MailboxPermission -Identity '"+mailbox+"' -User $sp.Id -AccessRights FullAccess",
		"Set-CASMailbox -Identity '"+mailbox+"' -SmtpClientAuthenticationDisabled $false")
	if strings.Contains(string(ps1), appSecret) {
		t.Error("the PowerShell holds the client secret")
	}

	deliversThroughRelay(t, ms, path, localUser, localPass, mailbox, "init-prompts")
}

// TestInitFlags: the same through flags, as automation runs it (only the
// secret and the password on standard input): two mailboxes, another
// sender, queued delivery, SMTP by RBAC for Applications.
func TestInitFlags(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	args := append([]string{"init", "-config", path, "-cloud", "global", "-tenant", ms.Tenant, "-client-id", appID,
		"-app-name", "Monitor ERP", "-grant", "client_credentials", "-credential", "secret",
		"-mailbox", mailbox + "," + salesBox, "-username", localUser + "," + salesUser,
		"-send-as", "billing@contoso.com", "-delivery", "queue", "-upstream", "auto", "-rbac"}, fakeFlags(ms, dir)...)
	r := runCmd(t, strings.NewReader(appSecret+"\n"+localPass+"\n"), args...)
	if r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	if strings.Contains(r.stdout, "Choose") {
		t.Errorf("init asked although every flag was given:\n%s", r.stdout)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Accounts) != 2 || cfg.Accounts[1].Username != salesUser || cfg.Accounts[0].Delivery != config.DeliveryQueue ||
		!cfg.Accounts[0].AllowsSender("billing@contoso.com") || cfg.Accounts[1].Upstream != config.UpstreamAuto {
		t.Errorf("accounts: %+v %+v", cfg.Accounts[0], cfg.Accounts[1])
	}
	ps1, _ := os.ReadFile(filepath.Join(dir, "oauthrelay-setup.ps1"))
	wantAll(t, string(ps1), "Monitor ERP", mailbox, salesBox,
		"New-ManagementScope -Name 'oauthrelay-monitor-erp' -RecipientRestrictionFilter \"PrimarySmtpAddress -eq '"+mailbox+"' -or PrimarySmtpAddress -eq '"+salesBox+"'\"",
		"New-ManagementRoleAssignment -App $sp.Id", "-CustomResourceScope 'oauthrelay-monitor-erp'",
		"Add-MailboxPermission -Identity '"+salesBox+"'",
		"Add-RecipientPermission -Identity 'billing@contoso.com' -Trustee '"+mailbox+"' -AccessRights SendAs",
		"'Mail.Send','Mail.ReadWrite'", "Set-CASMailbox -Identity '"+mailbox+"' -SmtpClientAuthenticationDisabled $false")
	if strings.Contains(string(ps1), "'SMTP.SendAsApp','IMAP.AccessAsApp','POP.AccessAsApp'") || !strings.Contains(string(ps1), "'IMAP.AccessAsApp','POP.AccessAsApp'") {
		t.Error("with -rbac SMTP.SendAsApp is consented tenant-wide as well")
	}
	// check proves each sender: done what the script says for billing@.
	ms.GrantSendAs(mailbox, "billing@contoso.com")
	ms.GrantSendAs(salesBox, "billing@contoso.com")
	deliversThroughRelay(t, ms, path, salesUser, localPass, salesBox, "init-flags")
}

// TestInitNoOverwrite: an existing configuration is replaced only when the
// user says yes, or with -force.
func TestInitNoOverwrite(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "# mine\n")
	args := append([]string{"init", "-config", path, "-tenant", ms.Tenant, "-client-id", appID, "-app-name", "x",
		"-cloud", "global", "-grant", "client_credentials", "-credential", "secret", "-mailbox", mailbox,
		"-username", localUser, "-send-as", "-", "-delivery", "direct", "-upstream", "smtp"}, fakeFlags(ms, dir)...)
	r := runCmd(t, strings.NewReader(appSecret+"\n"+localPass+"\nn\n"), args...)
	if r.code != 1 || !strings.Contains(r.stderr, "not overwritten") {
		t.Fatalf("want a refusal: %v", r)
	}
	if b, _ := os.ReadFile(path); string(b) != "# mine\n" {
		t.Fatal("the existing configuration was changed")
	}
	if _, err := os.Stat(filepath.Join(dir, "m365-client-secret")); err == nil {
		t.Error("the secret file was written although the user said no")
	}
	r = runCmd(t, strings.NewReader(appSecret+"\n"+localPass+"\n"), append(args, "-force")...)
	if r.code != 0 {
		t.Fatalf("init -force: %v", r)
	}
	if _, err := config.Load(path); err != nil {
		t.Fatal(err)
	}
}

// TestInitDeviceCode: for a delegated grant init ends by running the
// sign-in; once the code is approved the account has its refresh token and
// the relay delivers.
func TestInitDeviceCode(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	args := append([]string{"init", "-config", path, "-tenant", ms.Tenant, "-client-id", publicID, "-app-name", "Front desk",
		"-cloud", "global", "-grant", "device_code", "-credential", "none", "-mailbox", salesBox,
		"-username", salesUser, "-send-as", "-", "-delivery", "direct", "-upstream", "smtp"}, fakeFlags(ms, dir)...)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out, errb syncBuffer
	done := background(ctx, strings.NewReader(salesPass+"\n"), &out, &errb, args...)
	code := waitMatch(t, &out, userCodeRE, "the user code on stdout", done, &errb)[1]
	if err := ms.ApproveDevice(code, salesBox); err != nil {
		t.Fatal(err)
	}
	if c := exitCode(t, done, "init"); c != 0 {
		t.Fatalf("init exited %d:\n%s\n%s", c, out.String(), errb.String())
	}
	wantAll(t, out.String(), "Signing in (device_code)", "Signed in", "IsFallbackPublicClient",
		"New-MgOauth2PermissionGrant -ClientId $sp.Id -ConsentType AllPrincipals -ResourceId $exo.Id -Scope 'SMTP.Send IMAP.AccessAsUser.All POP.AccessAsUser.All'")
	if strings.Contains(out.String(), "New-ServicePrincipal -AppId") {
		t.Error("a delegated setup registers an Exchange service principal")
	}
	deliversThroughRelay(t, ms, path, salesUser, salesPass, salesBox, "init-device")
}

// TestInitDomainWide: "*@domain" as the mailbox (app-only) makes a
// domain-wide account: no username key, the application logs in with a
// mailbox's address; the PowerShell grants every mailbox of the domain.
func TestInitDomainWide(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	args := append([]string{"init", "-config", path, "-tenant", ms.Tenant, "-client-id", appID, "-app-name", "ERP",
		"-cloud", "global", "-grant", "client_credentials", "-credential", "secret", "-mailbox", "*@contoso.com",
		"-send-as", "-", "-delivery", "direct", "-upstream", "smtp"}, fakeFlags(ms, dir)...)
	r := runCmd(t, strings.NewReader(appSecret+"\n"+localPass+"\n"), args...)
	if r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Accounts[0]; !a.DomainWide() || a.Username != "" || a.Name != "all-contoso.com" {
		t.Errorf("account %+v", a)
	}
	wantAll(t, r.stdout, `Get-Mailbox -ResultSize Unlimited -Filter "PrimarySmtpAddress -like '*@contoso.com'" | ForEach-Object { Add-MailboxPermission`,
		`Get-Mailbox -ResultSize Unlimited -Filter "PrimarySmtpAddress -like '*@contoso.com'" | Set-CASMailbox -SmtpClientAuthenticationDisabled $false`)
	// A delegated grant cannot be domain-wide: refused before anything is written.
	bad := append([]string{"init", "-config", filepath.Join(dir, "other.yaml"), "-grant", "device_code", "-credential", "none",
		"-tenant", ms.Tenant, "-client-id", publicID, "-cloud", "global", "-mailbox", "*@contoso.com"}, fakeFlags(ms, dir)...)
	if r := runCmd(t, strings.NewReader(localPass+"\n"), bad...); r.code != 1 || !strings.Contains(r.stderr, "needs grant client_credentials") {
		t.Errorf("a domain-wide delegated init: %v", r)
	}
	deliversThroughRelay(t, ms, path, mailbox, localPass, mailbox, "init-domain", "all-contoso.com", mailbox)
}

// TestInitRelativeFiles: a file named relative to the working directory
// (an existing client secret file, here) is written into the config as an
// absolute name, since the loader reads relative names from the config's
// own directory.
func TestInitRelativeFiles(t *testing.T) {
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	t.Chdir(dir)
	writeFile(t, "secret.txt", appSecret+"\n")
	path := filepath.Join(dir, "etc", "config.yaml")
	args := append([]string{"init", "-config", path, "-tenant", ms.Tenant, "-client-id", appID, "-app-name", "x",
		"-cloud", "global", "-grant", "client_credentials", "-client-secret-file", "secret.txt", "-mailbox", mailbox,
		"-username", localUser, "-send-as", "-", "-delivery", "direct", "-upstream", "smtp"}, fakeFlags(ms, dir)...)
	if r := runCmd(t, strings.NewReader(localPass+"\n"), args...); r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Accounts[0].ProviderRef; p.ClientSecretFile != filepath.Join(dir, "secret.txt") || p.ClientSecret != appSecret {
		t.Errorf("client_secret_file %q", p.ClientSecretFile)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc", "m365-client-secret")); err == nil {
		t.Error("init copied a secret it was given as a file")
	}
}
