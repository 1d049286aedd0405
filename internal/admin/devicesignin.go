package admin

import (
	"context"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// The device code sign-in started from the status page.
//
// The Sign in button of a device_code account posts (with the page's CSRF
// token, as the authorization code one does) to /signin, which asks the
// provider for a code and sends the browser back to the page; the account's
// row then shows the code and the provider's verification link, and the
// page reloads every few seconds while a sign-in is pending. A goroutine
// per pending sign-in polls the token endpoint (oauth.DeviceFlow.Wait);
// when the user has signed in, the refresh token is in the store, the
// account's source reads it, and the row turns OK at the next reload. The
// person who signs in may be on another device: nothing of the sign-in
// comes back through this server but the poll.

const (
	// deviceStartTimeout bounds the request for a code.
	deviceStartTimeout = 30 * time.Second
	// pendingRefresh is the page's reload interval while a device sign-in
	// is pending (otherwise 60 s): the row turns OK within it.
	pendingRefresh = 3
	// maxDeviceFlows bounds the pending sign-ins (one per account at most).
	maxDeviceFlows = 32
)

// deviceSignIn is a pending device code sign-in of one account.
type deviceSignIn struct {
	userCode, uri string
	expiry        time.Time
}

// deviceFlows are the pending device sign-ins by account, and the
// goroutines that wait for them: stop cancels and joins them.
type deviceFlows struct {
	mu      sync.Mutex
	m       map[string]deviceSignIn
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped bool
}

func newDeviceFlows() *deviceFlows {
	ctx, cancel := context.WithCancel(context.Background())
	return &deviceFlows{m: make(map[string]deviceSignIn), ctx: ctx, cancel: cancel}
}

// pending returns the account's sign-in in progress, if any.
func (d *deviceFlows) pending(name string) (deviceSignIn, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.m[name]
	if ok && time.Now().After(p.expiry) {
		return deviceSignIn{}, false
	}
	return p, ok
}

func (d *deviceFlows) any() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.m) > 0
}

// start records the sign-in and runs wait for it in a goroutine that stop
// joins; false when the server is stopping or too many are pending.
func (d *deviceFlows) start(name string, p deviceSignIn, wait func(ctx context.Context)) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped || len(d.m) >= maxDeviceFlows {
		return false
	}
	d.m[name] = p
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithDeadline(d.ctx, p.expiry)
		defer cancel()
		wait(ctx)
		d.mu.Lock()
		delete(d.m, name)
		d.mu.Unlock()
	}()
	return true
}

// stop cancels the pending sign-ins and waits for their goroutines.
func (d *deviceFlows) stop() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.cancel()
	d.wg.Wait()
}

// signinDevice starts the device code sign-in of a (already checked to be
// a device_code account) and sends the browser back to its row. A second
// click while one is pending shows the same code.
func (s *Server) signinDevice(w http.ResponseWriter, r *http.Request, a *account) {
	if _, ok := s.devices.pending(a.Name); ok {
		http.Redirect(w, r, deviceRowURL(a.Name), http.StatusSeeOther)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), deviceStartTimeout)
	defer cancel()
	flow, err := oauth.StartDevice(ctx, a.Account, oauth.Options{
		Store:      s.opts.Store,
		HTTPClient: s.opts.HTTPClient,
		Logger:     s.log,
	})
	if err != nil {
		words := failureWords(err)
		s.log.Warn("device sign-in cannot start", "account", a.Name, "err", err)
		s.metrics.recordError(a.Name, "sign-in from the status page failed: "+words, fixFor(err, config.GrantDeviceCode))
		s.renderStatus(w, r, http.StatusBadGateway, &notice{Error: true, Text: "The sign-in for " + a.Name + " cannot start: " + words})
		return
	}
	name := a.Name
	started := s.devices.start(name, deviceSignIn{userCode: flow.UserCode, uri: flow.VerificationURI, expiry: flow.Expiry},
		func(ctx context.Context) { s.finishDevice(ctx, name, flow) })
	if !started {
		s.renderStatus(w, r, http.StatusServiceUnavailable, &notice{Error: true,
			Text: "Too many sign-ins are pending, or the relay is stopping. Try again in a few minutes."})
		return
	}
	s.log.Info("device sign-in started from the status page", "account", name)
	http.Redirect(w, r, deviceRowURL(name), http.StatusSeeOther)
}

// deviceRowURL is the page the browser comes back to. It has no fragment
// (#account-NAME): Chromium treats the meta refresh of a URL with one as a
// jump within the page, not a reload, and the row would never turn OK.
func deviceRowURL(name string) string {
	return "/?device=" + url.QueryEscape(name)
}

// finishDevice waits for the user, then lets the account's source read the
// new refresh token and get a first access token, so the row turns OK.
func (s *Server) finishDevice(ctx context.Context, name string, flow *oauth.DeviceFlow) {
	if err := flow.Wait(ctx); err != nil {
		if ctx.Err() != nil && s.devices.ctx.Err() != nil {
			return // the server is stopping
		}
		words := failureWords(err)
		s.log.Warn("device sign-in failed", "account", name, "err", err)
		s.metrics.recordError(name, "sign-in from the status page failed: "+words, fixFor(err, config.GrantDeviceCode))
		return
	}
	a := s.account(name)
	if a == nil {
		s.log.Info("signed in, but the account is no longer configured", "account", name)
		return
	}
	a.Source.Reload()
	tctx, cancel := context.WithTimeout(ctx, callbackTimeout)
	defer cancel()
	if _, err := a.Source.Token(tctx); err != nil {
		s.log.Warn("first token after sign-in failed", "account", name, "err", err)
	}
	s.log.Info("signed in by device code from the status page", "account", name)
}
