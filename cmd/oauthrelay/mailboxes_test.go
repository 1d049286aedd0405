package main

// One app registration, many mailboxes, end to end: `serve` with a
// configuration holding a domain-wide account, send-as accounts and a
// delegate with a shared mailbox, against the fake Microsoft 365, driven
// by go-smtp, go-imap and Python's smtplib and imaplib over real sockets.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// The mailboxes of these tests, besides the fixture's invoices@ and
// sales@ (granted to the app) and nogrant@ (not granted).
const (
	wideUser   = "WIDE"                  // not a login name: domain-wide accounts log in by address
	widePass   = "wide-Local-Password-3" // the domain-wide account's password
	reminders  = "reminders@contoso.com" // granted to the app
	supportBox = "support@contoso.com"   // a shared mailbox
	billingBox = "billing@contoso.com"   // a shared mailbox nobody may send as
	alice      = "alice@contoso.com"     // a user, the delegate of support@
	alicePass  = "alice-Entra-Password"
	deskUser   = "helpdesk"
	deskPass   = "helpdesk-Local-Password-4"
	sendAsUser = "erp-sender"
	sendAsPass = "erp-sender-Password-5"
	mbxUser    = "erp-mailbox"
	mbxPass    = "erp-mailbox-Password-6"
)

// mailboxWorld is the fake, set up as the tests' tenant, and a running
// relay with the accounts of mailboxesYAML.
type mailboxWorld struct {
	ms                   *fakems.Server
	smtpAddr, imap, pop3 string
	stderr               *syncBuffer
}

func newMailboxWorld(t *testing.T, opts fakems.Options) *mailboxWorld {
	t.Helper()
	return newMailboxWorldWith(t, opts, "")
}

// newMailboxWorldWith adds accounts (YAML list items) to the configuration.
func newMailboxWorldWith(t *testing.T, opts fakems.Options, accounts string) *mailboxWorld {
	t.Helper()
	ms := startFake(t, opts)
	ms.AddMailbox(reminders, "x")
	ms.GrantApp(appID, reminders)
	ms.AddMailbox(alice, alicePass)
	ms.AddSharedMailbox(supportBox)
	ms.AddSharedMailbox(billingBox)
	ms.GrantFullAccess(supportBox, alice)
	ms.GrantSendAs(alice, supportBox)
	ms.GrantSendAs(reminders, supportBox)
	ms.GrantApp(appID, supportBox) // send_as: sender logs in as support@ itself
	ms.GrantSendAs(mailbox, "team@contoso.com")
	if err := ms.AppendIMAP(supportBox, "INBOX", []byte("Subject: ticket 1\r\n\r\nhelp\r\n")); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "oauthrelay.yaml")
	writeFile(t, path, mailboxesYAML(t, ms, filepath.Join(dir, "state"))+accounts)
	addrFile := filepath.Join(dir, "addrs")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := background(ctx, nil, &stderr, &stderr, "serve", "-config", path, "-addr-file", addrFile)
	t.Cleanup(func() {
		cancel()
		if code := exitCode(t, done, "serve"); code != 0 {
			t.Errorf("serve exit %d:\n%s", code, stderr.String())
		}
	})
	addrs := map[string]string{}
	waitFor(t, waitTimeout, "the address file", func() bool {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d:\n%s", code, stderr.String())
		default:
		}
		text, err := os.ReadFile(addrFile)
		if err != nil {
			return false
		}
		for line := range strings.Lines(string(text)) {
			k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
			addrs[k] = v
		}
		return true
	})
	return &mailboxWorld{ms: ms, smtpAddr: addrs["smtp"], imap: addrs["imap"], pop3: addrs["pop3"], stderr: &stderr}
}

// mailboxesYAML: a domain-wide account restricted to a list (with one
// mailbox the app has no permission on) and one message a minute per
// mailbox; an app-only account with send_as: sender and one with
// send_as: mailbox; a delegate (password grant) with a shared mailbox.
func mailboxesYAML(t *testing.T, ms *fakems.Server, stateDir string) string {
	return fmt.Sprintf(`state_dir: %q
log: {level: debug}
listen:
  smtp: {addr: "127.0.0.1:0"}
  imap: {addr: "127.0.0.1:0"}
  pop3: {addr: "127.0.0.1:0"}
  admin: {addr: "off"}
providers:
%[25]saccounts:
  - name: wide
    provider: app
    mailbox: "*@contoso.com"
    mailboxes: [%[10]q, %[11]q, %[12]q]
    password_hash: %[13]q
    allowed_from: ["*@contoso.com"]
    limits: {messages_per_minute: 1, max_wait: 0s}
  - name: sender
    provider: app
    mailbox: %[14]q
    username: %[15]q
    password_hash: %[16]q
    allowed_from: [%[14]q, %[17]q]
    send_as: sender
  - name: mbx
    provider: app
    mailbox: %[14]q
    username: %[18]q
    password_hash: %[19]q
    allowed_from: [%[14]q, %[17]q, %[20]q]
  - name: desk
    provider: ropc
    mailbox: %[21]q
    mailboxes: [%[17]q]
    username: %[22]q
    password_hash: %[23]q
    password: %[24]q
    allowed_from: [%[21]q, %[17]q]
`, stateDir, ms.Tenant, appID, appSecret, ms.TokenURL, ms.SMTPAddr, ms.IMAPAddr, ms.CAFile, publicID,
		mailbox, salesBox, noGrantBox, hashOf(t, widePass),
		reminders, sendAsUser, hashOf(t, sendAsPass), supportBox, mbxUser, hashOf(t, mbxPass), billingBox,
		alice, deskUser, hashOf(t, deskPass), alicePass,
		fakeProvider(ms, "app", appID, "client_credentials", "    client_secret: "+strconv.Quote(appSecret)+"\n")+
			fakeProvider(ms, "ropc", publicID, "password", ""))
}

// fakeProvider is a provider block pointing at the fake ms.
func fakeProvider(ms *fakems.Server, name, clientID, grant, extra string) string {
	return fmt.Sprintf(`  %s:
    type: microsoft
    tenant: %q
    client_id: %q
    grant: %s
    token_url: %q
    smtp: {addr: %q, tls: starttls}
    imap: {addr: %q, tls: implicit}
    pop3: {addr: %q, tls: implicit}
    ca_file: %q
%s`, name, ms.Tenant, clientID, grant, ms.TokenURL, ms.SMTPAddr, ms.IMAPAddr, ms.POP3Addr, ms.CAFile, extra)
}

// smtpLogin logs in to the relay over SMTP with AUTH PLAIN.
func (w *mailboxWorld) smtpLogin(t *testing.T, user, pass string) (*smtp.Client, error) {
	t.Helper()
	c, err := smtp.Dial(w.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.Auth(gosasl.NewPlainClient("", user, pass))
}

// imapLogin logs in to the relay over IMAP with LOGIN.
func (w *mailboxWorld) imapLogin(t *testing.T, user, pass string) (*imapclient.Client, error) {
	t.Helper()
	c, err := imapclient.DialInsecure(w.imap, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.Login(user, pass).Wait()
}

// pop3Login logs in to the relay over POP3 with USER/PASS and returns the
// reply to PASS and, on success, the upstream's reply to STAT.
func (w *mailboxWorld) pop3Login(t *testing.T, user, pass string) (passReply, stat string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.pop3, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	br := bufio.NewReader(c)
	cmd := func(line string) string {
		if line != "" {
			fmt.Fprintf(c, "%s\r\n", line)
		}
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("POP3 %q: %v", line, err)
		}
		return strings.TrimRight(l, "\r\n")
	}
	cmd("") // the greeting
	cmd("USER " + user)
	if passReply = cmd("PASS " + pass); !strings.HasPrefix(passReply, "+OK") {
		return passReply, ""
	}
	stat = cmd("STAT")
	cmd("QUIT")
	return passReply, stat
}

func wantSMTPCode(t *testing.T, what string, err error, code int, enh smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code || se.EnhancedCode != enh {
		t.Errorf("%s: got %v, want %d %d.%d.%d", what, err, code, enh[0], enh[1], enh[2])
	}
}

// The domain-wide account: each listed mailbox logs in by its address (any
// case, a trailing dot), opens that mailbox over IMAP, sends as itself
// over SMTP (XOAUTH2 user = MAIL FROM, even after logging in as another of
// its mailboxes), each at its own pace; a listed mailbox the app has no
// permission on fails at login on both protocols.
func TestDomainWideAccount(t *testing.T) {
	t.Parallel()
	w := newMailboxWorld(t, fakems.Options{})

	c, err := w.smtpLogin(t, "Invoices@CONTOSO.com.", widePass)
	if err != nil {
		t.Fatalf("SMTP login as a listed mailbox: %v", err)
	}
	sendOn(t, c, mailbox, "wide-invoices")
	if m := delivered(t, w.ms, "wide-invoices"); m.AuthUser != mailbox || !m.AppOnly {
		t.Errorf("upstream XOAUTH2 user %q (app-only %v), want %s", m.AuthUser, m.AppOnly, mailbox)
	}
	// Another of the account's mailboxes logs in as itself, with its own
	// pace: invoices@ used its one message a minute, sales@ has its own.
	sendOn(t, c, salesBox, "wide-sales")
	if m := delivered(t, w.ms, "wide-sales"); m.AuthUser != salesBox {
		t.Errorf("MAIL FROM %s went upstream as %q", salesBox, m.AuthUser)
	}
	wantSMTPCode(t, "a second message of invoices@ within its minute", sendMail(c, mailbox, "wide-over"), 451, smtp.EnhancedCode{4, 7, 0})

	ic, err := w.imapLogin(t, "sales@contoso.com", widePass)
	if err != nil {
		t.Fatalf("IMAP login as a listed mailbox: %v", err)
	}
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		t.Errorf("SELECT INBOX of sales@: %v", err)
	}

	// Listed, but the app has no permission on it: refused at login.
	_, err = w.smtpLogin(t, noGrantBox, widePass)
	wantSMTPCode(t, "SMTP login to a mailbox without app permission", err, 535, smtp.EnhancedCode{5, 7, 3})
	if _, err := w.imapLogin(t, noGrantBox, widePass); err == nil {
		t.Error("IMAP login to a mailbox without app permission succeeded")
	}
	if !strings.Contains(w.stderr.String(), "user="+noGrantBox) {
		t.Errorf("the log does not name the refused mailbox:\n%s", w.stderr.String())
	}
}

// Every trick to open a mailbox outside the account's list fails at
// login, over SMTP and IMAP, with the account's own password.
func TestDomainWideTricksRefused(t *testing.T) {
	t.Parallel()
	w := newMailboxWorld(t, fakems.Options{})
	for _, name := range []string{
		"invoices@contoso.com@evil.com",
		"invoices%evil.com@contoso.com",
		"evil.com!invoices@contoso.com",
		`"invoices@evil.com"@contoso.com`,
		`"invoices"@contoso.com`,
		"invoices@contoso.com..",
		"invoices@соntoso.com", // Cyrillic о
		"іnvoices@contoso.com", // Cyrillic і
		"invoices＠contoso.com", // fullwidth @
		"@contoso.com",
		" invoices@contoso.com",
		"invoices@contoso.com ",
		"other@contoso.com", // in the pattern's domain, not in the list
		"invoices@sub.contoso.com",
		"invoices@contoso.com.evil.com",
		"invoices@fabrikam.com",
		"*@contoso.com",
		wideUser,
		"",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := w.smtpLogin(t, name, widePass)
			wantSMTPCode(t, "SMTP "+name, err, 535, smtp.EnhancedCode{5, 7, 8})
			if _, err := w.imapLogin(t, name, widePass); err == nil {
				t.Errorf("IMAP login as %q succeeded", name)
			} else if !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
				t.Errorf("IMAP login as %q: %v, want NO [AUTHENTICATIONFAILED]", name, err)
			}
		})
	}
	if n := len(w.ms.Messages()); n != 0 {
		t.Errorf("the fake got %d messages", n)
	}
}

// POP3 logs in through the same account lookup as IMAP: a domain-wide
// account's mailbox by its address, a delegate into the shared mailbox it
// has FullAccess on; a mailbox without the app's permission and every trick
// fail at login with -ERR [AUTH].
func TestMailboxesPOP3(t *testing.T) {
	t.Parallel()
	w := newMailboxWorld(t, fakems.Options{})
	if err := w.ms.AppendIMAP(salesBox, "INBOX", []byte("Subject: for sales\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ user, pass, stat string }{
		{"Sales@contoso.com.", widePass, "+OK 1 "},
		{supportBox, deskPass, "+OK 1 "}, // the delegate in the shared mailbox (ticket 1)
		{deskUser, deskPass, "+OK 0 0"},  // the delegate's own
	} {
		if reply, stat := w.pop3Login(t, tt.user, tt.pass); reply != "+OK Logged in." || !strings.HasPrefix(stat, tt.stat) {
			t.Errorf("POP3 %s: %q, STAT %q; want +OK and %q", tt.user, reply, stat, tt.stat)
		}
	}
	for _, user := range []string{noGrantBox, "invoices%evil.com@contoso.com", "other@contoso.com", "*@contoso.com"} {
		if reply, _ := w.pop3Login(t, user, widePass); !strings.HasPrefix(reply, "-ERR [AUTH] ") {
			t.Errorf("POP3 %s: %q, want -ERR [AUTH]", user, reply)
		}
	}
	if !strings.Contains(w.stderr.String(), "user="+noGrantBox) {
		t.Errorf("the log does not name the refused mailbox")
	}
}

// Send-as: with send_as: mailbox the account's mailbox logs in and MAIL
// FROM is the shared address (Exchange checks SendAs: 550 5.7.60 without
// it, explained in the log with Add-RecipientPermission); with send_as:
// sender the shared mailbox logs in itself.
func TestSendAs(t *testing.T) {
	t.Parallel()
	w := newMailboxWorld(t, fakems.Options{})

	c, err := w.smtpLogin(t, mbxUser, mbxPass)
	if err != nil {
		t.Fatal(err)
	}
	sendOn(t, c, supportBox, "sendas-granted")
	if m := delivered(t, w.ms, "sendas-granted"); m.AuthUser != reminders || m.From != supportBox {
		t.Errorf("XOAUTH2 user %q, MAIL FROM %q; want %s as %s", m.AuthUser, m.From, reminders, supportBox)
	}
	wantSMTPCode(t, "MAIL FROM a shared mailbox without SendAs", sendMail(c, billingBox, "sendas-denied"), 550, smtp.EnhancedCode{5, 7, 60})
	fix := "Add-RecipientPermission -Identity " + billingBox + " -Trustee " + reminders + " -AccessRights SendAs"
	waitFor(t, waitTimeout, "the explanation in the log", func() bool { return strings.Contains(w.stderr.String(), fix) })

	c, err = w.smtpLogin(t, sendAsUser, sendAsPass)
	if err != nil {
		t.Fatal(err)
	}
	sendOn(t, c, supportBox, "sendas-sender")
	if m := delivered(t, w.ms, "sendas-sender"); m.AuthUser != supportBox {
		t.Errorf("send_as: sender logged in upstream as %q, want %s", m.AuthUser, supportBox)
	}
}

// A delegate opens the shared mailbox it has FullAccess on over IMAP by
// logging in with the shared address (XOAUTH2 user = the shared address,
// the delegate's token), and its own with its username; over SMTP the
// delegate logs in and sends as the shared address.
func TestDelegateSharedMailbox(t *testing.T) {
	t.Parallel()
	w := newMailboxWorld(t, fakems.Options{})
	ic, err := w.imapLogin(t, supportBox, deskPass)
	if err != nil {
		t.Fatalf("IMAP login into the shared mailbox: %v", err)
	}
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("the shared INBOX: %+v, %v; want its one message", sel, err)
	}
	msgs, err := ic.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(msgs) != 1 || msgs[0].Envelope.Subject != "ticket 1" {
		t.Fatalf("FETCH: %v, %v", msgs, err)
	}
	ic2, err := w.imapLogin(t, deskUser, deskPass)
	if err != nil {
		t.Fatal(err)
	}
	if sel, err := ic2.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 0 {
		t.Errorf("the delegate's own INBOX: %+v, %v", sel, err)
	}

	c, err := w.smtpLogin(t, supportBox, deskPass)
	if err != nil {
		t.Fatalf("SMTP login with the shared address: %v", err)
	}
	sendOn(t, c, supportBox, "delegate-sends")
	if m := delivered(t, w.ms, "delegate-sends"); m.AuthUser != alice || m.From != supportBox || m.AppOnly {
		t.Errorf("XOAUTH2 user %q (app-only %v), MAIL FROM %q; want the delegate %s as %s", m.AuthUser, m.AppOnly, m.From, alice, supportBox)
	}
}

// Exchange in the field lets an app-only token without permission log in
// over IMAP and fails every command after: the relay fails the login.
func TestDomainWideNotConnectedFailsAtLogin(t *testing.T) {
	t.Parallel()
	w := newMailboxWorld(t, fakems.Options{IMAPNotConnected: true})
	_, err := w.imapLogin(t, noGrantBox, widePass)
	if err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("IMAP login to a mailbox the app cannot open: %v, want NO [AUTHENTICATIONFAILED]", err)
	}
	if !strings.Contains(w.stderr.String(), "User is authenticated but not connected") {
		t.Errorf("the log does not say why:\n%s", w.stderr.String())
	}
	if _, err := w.imapLogin(t, mailbox, widePass); err != nil {
		t.Errorf("a granted mailbox: %v", err)
	}
}

// Python's smtplib and imaplib, clients nobody here wrote: a domain-wide
// login sends as its mailbox, a trick is refused at AUTH, and the
// delegate reads the shared mailbox.
func TestMailboxesPythonClients(t *testing.T) {
	t.Parallel()
	py := testutil.Tool(t, "python3")
	w := newMailboxWorld(t, fakems.Options{})
	script := `
import imaplib, smtplib, sys
from email.message import EmailMessage
shost, sport, ihost, iport, wide_pw, desk_pw, inv, shared, to = sys.argv[1:]
m = EmailMessage()
m["From"], m["To"], m["Subject"] = inv, to, "from python"
m.set_content("Hello.\n")
with smtplib.SMTP(shost, int(sport), timeout=30) as s:
    s.login(inv.upper(), wide_pw)
    s.send_message(m)
with smtplib.SMTP(shost, int(sport), timeout=30) as s:
    try:
        s.login("invoices%evil.com@contoso.com", wide_pw)
        print("TRICK ACCEPTED")
    except smtplib.SMTPAuthenticationError as e:
        print("trick refused", e.smtp_code)
i = imaplib.IMAP4(ihost, int(iport), timeout=30)
i.login(shared, desk_pw)
typ, data = i.select("INBOX", readonly=True)
print("shared inbox", typ, data[0].decode())
i.logout()
`
	sh, sp, _ := strings.Cut(w.smtpAddr, ":")
	ih, ip, _ := strings.Cut(w.imap, ":")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script, sh, sp, ih, ip, widePass, deskPass, mailbox, supportBox, recipient).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	for _, want := range []string{"trick refused 535", "shared inbox OK 1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("python printed %q, want %q", out, want)
		}
	}
	if m := delivered(t, w.ms, "from python"); m.AuthUser != mailbox {
		t.Errorf("XOAUTH2 user %q, want %s", m.AuthUser, mailbox)
	}
}

// check ACCOUNT MAILBOX tests one mailbox of the domain-wide account;
// without MAILBOX its logins are skipped, and a mailbox outside it is an
// error.
func TestCheckDomainWideMailbox(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	ms.AddMailbox(reminders, "x")
	ms.GrantApp(appID, reminders)
	ms.AddMailbox(alice, alicePass)
	ms.AddSharedMailbox(supportBox)
	ms.AddSharedMailbox(billingBox)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	writeFile(t, path, mailboxesYAML(t, ms, filepath.Join(dir, "state")))

	r := runCmd(t, nil, "check", "-config", path, "wide", "Sales@contoso.com")
	if r.code != 0 || !strings.Contains(r.stdout, "wide sales@contoso.com") {
		t.Fatalf("check wide sales@: %v", r)
	}
	r = runCmd(t, nil, "check", "-config", path, "wide", noGrantBox)
	if r.code != 1 || !strings.Contains(r.stdout, "535 5.7.3") {
		t.Errorf("check wide nogrant@: %v", r)
	}
	r = runCmd(t, nil, "check", "-config", path, "wide")
	if !strings.Contains(r.stdout, "skipped: domain-wide: name a mailbox") || r.code != 0 {
		t.Errorf("check wide: %v", r)
	}
	r = runCmd(t, nil, "check", "-config", path, "wide", "a%evil.com@contoso.com")
	if r.code == 0 || !strings.Contains(r.stderr, "has no mailbox") {
		t.Errorf("check wide with a trick: %v", r)
	}

	// A delegate's shared mailbox: the delegate logs in over SMTP and sends
	// as the shared address, and opens it over IMAP with FullAccess.
	r = runCmd(t, nil, "check", "-config", path, "desk", supportBox)
	wantStep(t, r.stdout, "desk "+supportBox, "SMTP AUTH", "ok", "as "+alice)
	wantStep(t, r.stdout, "desk "+supportBox, "send as "+supportBox, "FAIL", "550 5.7.60")
	wantAll(t, fixOf(t, r.stdout, "desk "+supportBox, "send as "+supportBox),
		"Add-RecipientPermission -Identity '"+supportBox+"' -Trustee '"+alice+"' -AccessRights SendAs")
	wantStep(t, r.stdout, "desk "+supportBox, "IMAP", "FAIL")
	ms.GrantSendAs(alice, supportBox)
	ms.GrantFullAccess(supportBox, alice)
	r = runCmd(t, nil, "check", "-config", path, "desk", supportBox)
	if r.code != 0 {
		t.Fatalf("check desk support@ with SendAs and FullAccess: %v", r)
	}
	wantStep(t, r.stdout, "desk "+supportBox, "send as "+supportBox, "ok", alice+" may send as "+supportBox)
}

// delivery: queue keeps the mailbox per message: each queued message is
// delivered as the mailbox it was sent as, and a mailbox the app has no
// permission on still fails at login (the queue accepts mail while the
// upstream is down, not for a mailbox Exchange refuses).
func TestDomainWideQueue(t *testing.T) {
	t.Parallel()
	const a, b, c = "a@fabrikam.com", "b@fabrikam.com", "c@fabrikam.com"
	accounts := fmt.Sprintf(`  - name: wideq
    provider: app
    mailbox: "*@fabrikam.com"
    password_hash: %q
    delivery: queue
`, hashOf(t, widePass))
	w := newMailboxWorldWith(t, fakems.Options{AppGrants: map[string][]string{appID: {a, b}}}, accounts)
	for _, m := range []string{a, b, c} {
		w.ms.AddMailbox(m, "x")
	}
	cl, err := w.smtpLogin(t, a, widePass)
	if err != nil {
		t.Fatal(err)
	}
	sendOn(t, cl, a, "queued-a")
	sendOn(t, cl, b, "queued-b")
	if m := delivered(t, w.ms, "queued-a"); m.AuthUser != a {
		t.Errorf("queued-a delivered as %q", m.AuthUser)
	}
	if m := delivered(t, w.ms, "queued-b"); m.AuthUser != b {
		t.Errorf("queued-b delivered as %q", m.AuthUser)
	}
	_, err = w.smtpLogin(t, c, widePass)
	wantSMTPCode(t, "queue mode, a mailbox without app permission", err, 535, smtp.EnhancedCode{5, 7, 3})
}

// The new keys' mistakes stop serve before it binds anything, each at its
// file, line and key.
func TestMailboxesConfigErrors(t *testing.T) {
	t.Parallel()
	ms := startFake(t, fakems.Options{})
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	bad := `  - name: deleg
    provider: ropc
    mailbox: "*@contoso.com"
    password_hash: "x"
  - name: tricks
    provider: app
    mailbox: "*@fabrikam.com"
    mailboxes: ["a%evil.com@fabrikam.com", "b@contoso.com"]
    send_as: owner
    password_hash: ` + strconv.Quote(hashOf(t, widePass)) + "\n"
	good := mailboxesYAML(t, ms, filepath.Join(dir, "state"))
	writeFile(t, path, good+bad)
	at := func(n int) string { return fmt.Sprintf("c.yaml:%d: ", strings.Count(good, "\n")+n) } // line n of bad
	r := runCmd(t, nil, "serve", "-config", path)
	if r.code != 1 {
		t.Fatalf("serve with a bad configuration: %v", r)
	}
	for _, want := range []string{
		at(3) + `accounts[4].mailbox: "*@contoso.com" is a pattern: it needs grant client_credentials (provider ropc has password)`,
		at(8) + `accounts[5].mailboxes[0]: "a%evil.com@fabrikam.com" has '%' in the local part`,
		at(8) + `accounts[5].mailboxes[1]: "b@contoso.com" is not in the domain of mailbox "*@fabrikam.com"`,
		at(9) + `accounts[5].send_as: "owner" is not a send_as (have: mailbox, sender)`,
		at(1) + `accounts[4].mailboxes: some mailboxes are also those of accounts[0] (wide)`,
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}
