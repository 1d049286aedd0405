package upstream

// Fixtures: the fake Microsoft 365 (internal/fakems) as the upstream, with a
// real oauth.Source as the credentials "exactly as the relay", and scripted
// upstreams on loopback for behaviour the fake does not have. Every server
// and goroutine is torn down and joined by t.Cleanup.

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/splice"
)

const (
	testClientID = "11111111-1111-1111-1111-111111111111"
	testSecret   = "fake-client-secret"
	testMailbox  = "invoices@contoso.com"
	// notGranted exists but the app has no FullAccess on it: Exchange lets
	// the IMAP login through and fails every command.
	notGranted = "nogrant@contoso.com"
	// ghost has no mailbox at the fake: Exchange refuses the token.
	ghost = "ghost@contoso.com"
	// scriptLimit bounds every scripted exchange and every wait.
	scriptLimit = 10 * time.Second
)

type world struct {
	fake *fakems.Server
	obs  *recorder
}

func newWorld(t *testing.T) *world {
	t.Helper()
	// Exchange's field behaviour: an ungranted app-only IMAP login passes
	// and every command fails.
	fake, err := fakems.Start(context.Background(), fakems.Options{IMAPNotConnected: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fake.Close() })
	fake.AddApp(fakems.App{ClientID: testClientID, Secret: testSecret})
	for _, m := range []string{testMailbox, notGranted} {
		fake.AddMailbox(m, "mailbox-pw")
	}
	fake.GrantApp(testClientID, testMailbox)
	fake.GrantSendAs(testMailbox, "billing@contoso.com")
	return &world{fake: fake, obs: &recorder{}}
}

// provider is a client-credentials provider at the fake, as config.Load
// would build it.
func (w *world) provider(secret string) *config.Provider {
	return &config.Provider{
		Name:         "contoso",
		Type:         config.TypeMicrosoft,
		Cloud:        config.CloudGlobal,
		Tenant:       w.fake.Tenant,
		ClientID:     testClientID,
		ClientSecret: secret,
		Grant:        config.GrantClientCredentials,
		TokenURL:     w.fake.TokenURL,
		Scopes:       []string{"https://outlook.office365.com/.default"},
		SMTP:         config.Upstream{Addr: w.fake.SMTPAddr, TLS: config.TLSStartTLS},
		IMAP:         config.Upstream{Addr: w.fake.IMAPAddr, TLS: config.TLSImplicit},
		POP3:         config.Upstream{Addr: w.fake.POP3Addr, TLS: config.TLSImplicit},
		CAFile:       w.fake.CAFile,
	}
}

// source is the relay's token source for mailbox at the fake.
func (w *world) source(t *testing.T, mailbox, secret string) *countingCreds {
	t.Helper()
	acct := &config.Account{Name: "invoices", Provider: "contoso", Mailbox: mailbox, ProviderRef: w.provider(secret)}
	src, err := oauth.NewSource(acct, oauth.Options{HTTPClient: w.fake.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	return &countingCreds{Credentials: src}
}

// target is mailbox's way to the fake's server for p.
func (w *world) target(p events.Proto, mailbox string) Target {
	srv := w.provider(testSecret).IMAP
	switch p {
	case events.SMTP:
		srv = w.provider(testSecret).SMTP
	case events.POP3:
		srv = w.provider(testSecret).POP3
	}
	return Target{
		Account:  events.Account{Name: "invoices", Mailbox: mailbox, Provider: "contoso"},
		Server:   srv,
		TLS:      &tls.Config{RootCAs: w.fake.CAPool},
		Observer: w.obs,
	}
}

// countingCreds counts Invalidate calls on the credentials it wraps.
type countingCreds struct {
	Credentials
	invalidated atomic.Int32
}

func (c *countingCreds) Invalidate() {
	c.invalidated.Add(1)
	c.Credentials.Invalidate()
}

// staticCreds hands out one token (or error), for scripted upstreams.
type staticCreds struct {
	token string
	err   error
}

func (c staticCreds) Token(context.Context) (string, error) { return c.token, c.err }
func (staticCreds) Invalidate()                             {}

// recorder is an events.Observer that keeps the upstream results.
type recorder struct {
	events.Nop
	mu  sync.Mutex
	ups []string
}

func (r *recorder) Upstream(p events.Proto, a events.Account, res events.UpstreamResult, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ups = append(r.ups, string(p)+":"+a.Name+":"+string(res))
}

func (r *recorder) upstreams() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ups...)
}

func wantUpstreams(t *testing.T, r *recorder, want ...string) {
	t.Helper()
	got := r.upstreams()
	if len(got) != len(want) {
		t.Errorf("observer upstreams %v, want %v", got, want)
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("observer upstreams %v, want %v", got, want)
			return
		}
	}
}

// scriptedUpstream serves each connection with script on a loopback port
// (plain TCP). script runs on its own goroutine, reports problems with
// t.Error only, and is joined at cleanup.
func scriptedUpstream(t *testing.T, script func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(scriptLimit))
				script(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// scriptedTarget is a target for a scripted upstream at addr.
func scriptedTarget(addr, tlsMode string, obs events.Observer) Target {
	return Target{
		Account:  events.Account{Name: "invoices", Mailbox: testMailbox, Provider: "contoso"},
		Server:   config.Upstream{Addr: addr, TLS: tlsMode},
		Observer: obs,
	}
}

// expectLine reads a line in a script and checks its beginning.
func expectLine(t *testing.T, br *bufio.Reader, prefix string) string {
	t.Helper()
	l, err := splice.ReadLine(br, 1<<20)
	if err != nil {
		t.Errorf("upstream script: read: %v", err)
		return ""
	}
	if len(l) < len(prefix) || string(l[:len(prefix)]) != prefix {
		t.Errorf("upstream script: got %q, want %q...", l, prefix)
	}
	return string(l)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), scriptLimit)
	t.Cleanup(cancel)
	return ctx
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
