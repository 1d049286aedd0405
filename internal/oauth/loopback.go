package oauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
)

// LoginAuthCodeOptions are the knobs of an interactive authorization code
// sign-in.
type LoginAuthCodeOptions struct {
	// RedirectURL is the redirect URI registered for the app. Empty: the
	// provider's redirect_url, else a loopback listener on 127.0.0.1:0
	// announced as http://localhost:PORT/ (Entra accepts any port for a
	// registered http://localhost). A loopback URL with a port is listened
	// on; any other URL needs Paste.
	RedirectURL string
	// Out receives the address to open. Nil: io.Discard.
	Out io.Writer
	// Paste, when set, is read for the address the browser was redirected
	// to, for a browser on another machine than the relay. Reading it may
	// outlive the call (a terminal cannot be interrupted); that is fine for
	// a command that exits afterwards.
	Paste io.Reader
}

// LoginAuthCode runs an authorization code sign-in for acct and saves the
// refresh token in opts.Store: it prints the URL, waits for the redirect on
// the loopback listener (or a pasted redirect address), checks state and
// redeems the code. It returns when the sign-in is done, failed, or ctx ends.
func LoginAuthCode(ctx context.Context, acct *config.Account, opts Options, lo LoginAuthCodeOptions) error {
	out := lo.Out
	if out == nil {
		out = io.Discard
	}
	redirect := lo.RedirectURL
	if redirect == "" && acct != nil && acct.ProviderRef != nil {
		redirect = acct.ProviderRef.RedirectURL
	}
	var ln net.Listener
	path := "/"
	switch {
	case redirect == "":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("oauth: loopback listener: %w", err)
		}
		ln = l
		redirect = fmt.Sprintf("http://localhost:%d/", l.Addr().(*net.TCPAddr).Port)
	default:
		addr, p, ok := loopbackRedirect(redirect)
		if ok {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("oauth: listen for redirect %s: %w", redirect, err)
			}
			ln, path = l, p
		} else if lo.Paste == nil {
			return fmt.Errorf("oauth: redirect URL %s is not a loopback address this command can listen on; paste the redirected address instead", redirect)
		}
	}
	if ln != nil {
		defer ln.Close()
	}

	flow, err := NewAuthCodeFlow(acct, redirect, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Open this address in a browser and sign in as %s:\n\n  %s\n\n", acct.Mailbox, flow.URL())
	if lo.Paste != nil {
		fmt.Fprintf(out, "If the browser runs on another machine, paste the address it was redirected to (it starts with %s) here:\n", redirect)
	}

	done := make(chan error, 2)
	if ln != nil {
		srv := &http.Server{
			Handler:           callbackHandler(ctx, flow, path, done),
			ReadHeaderTimeout: 10 * time.Second,
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			srv.Serve(ln)
		}()
		defer func() {
			// Let the callback page reach the browser before closing.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if srv.Shutdown(sctx) != nil {
				srv.Close()
			}
			<-served // Shutdown and Close end Serve
		}()
	}
	if lo.Paste != nil {
		go readPasted(ctx, flow, lo.Paste, out, done)
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return classify(ctx.Err(), grantAuthCode, flow.src.now())
	}
}

// loopbackRedirect reports whether u is an http URL on a loopback host with
// an explicit port, and the address and path to serve it on.
func loopbackRedirect(u string) (addr, path string, ok bool) {
	pu, err := url.Parse(u)
	if err != nil || pu.Scheme != "http" || pu.Port() == "" {
		return "", "", false
	}
	switch pu.Hostname() {
	case "localhost", "127.0.0.1":
		addr = net.JoinHostPort("127.0.0.1", pu.Port())
	case "::1":
		addr = net.JoinHostPort("::1", pu.Port())
	default:
		return "", "", false
	}
	path = pu.Path
	if path == "" {
		path = "/"
	}
	return addr, path, true
}

// callbackHandler answers the browser's redirect. Requests that are not a
// redirect for this flow (favicon, a forged state) get an error page and do
// not end the sign-in.
func callbackHandler(ctx context.Context, flow *AuthCodeFlow, path string, done chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != path || q.Get("code") == "" && q.Get("error") == "" {
			http.NotFound(w, r)
			return
		}
		err := flow.Callback(ctx, q)
		if errors.Is(err, errStateMismatch) {
			http.Error(w, "This redirect does not belong to the running sign-in.", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "<!doctype html><title>oauthrelay</title><p>Sign-in failed: %s</p>", html.EscapeString(reasonOf(err)))
		} else {
			fmt.Fprint(w, "<!doctype html><title>oauthrelay</title><p>Signed in. You can close this window.</p>")
		}
		select {
		case done <- err:
		default:
		}
	})
}

// readPasted reads lines until one is a redirect address for this flow.
func readPasted(ctx context.Context, flow *AuthCodeFlow, r io.Reader, out io.Writer, done chan<- error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		raw := line
		if i := strings.IndexByte(line, '?'); i >= 0 {
			raw = line[i+1:]
		}
		if i := strings.IndexByte(raw, '#'); i >= 0 {
			raw = raw[:i]
		}
		q, err := url.ParseQuery(raw)
		if err != nil || q.Get("code") == "" && q.Get("error") == "" {
			fmt.Fprintln(out, "That is not the redirected address (it has no code= parameter); try again:")
			continue
		}
		err = flow.Callback(ctx, q)
		if errors.Is(err, errStateMismatch) {
			fmt.Fprintln(out, "That address belongs to another sign-in (state differs); try again:")
			continue
		}
		select {
		case done <- err:
		default:
		}
		return
	}
}

func reasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		if e.Fix != "" {
			return e.Reason + ". " + e.Fix
		}
		return e.Reason
	}
	return err.Error()
}
