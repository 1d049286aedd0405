// Package admin is the relay's HTTP admin listener: /healthz (the process
// answers), /readyz (listeners up, every account's token usable, and every
// provider's mail server accepting TCP connections),
// /metrics (Prometheus), a status page at / with one row per account, and
// the sign-ins started from that page: authorization code, whose redirect
// comes back to /oauth2/callback, and device code, whose code the page
// shows while it waits for the user (devicesignin.go).
//
// Security: the listener binds loopback by default; config validation
// requires listen.admin.username and password_hash (bcrypt) for any other
// address, and then every path but /healthz and /readyz needs HTTP basic
// auth. listen.admin.cert_file and key_file serve it over HTTPS; a
// non-loopback listener without them is warned about at start-up (the basic
// auth password would cross the network in clear). Without a password,
// requests must name the host as an IP address or localhost, which defeats
// DNS rebinding. The Sign in button is a POST form carrying a per-process
// token (see signin). The pages never show a token, a client secret, a
// password or a hash: only what oauth.Error says is safe.
//
// Out of scope: changing the configuration, reloading the admin
// certificate without a restart, and JavaScript.
package admin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

// Options are a Server's dependencies. Nil fields have the documented
// default.
type Options struct {
	// Logger receives structured logs; nil: the relay's logger.
	Logger *slog.Logger
	// Ready reports whether the relay's listeners are up; /readyz fails
	// while it returns an error. Nil: the listeners count as up.
	Ready func() error
	// Store receives the refresh token of a sign-in from the status page;
	// it must be the relay's store (proxy.Options.Store). Nil: the page
	// offers no Sign in.
	Store oauth.Store
	// HTTPClient makes the sign-in's token request; nil: oauth's default.
	HTTPClient *http.Client
	// Cluster is the store shared with other instances; the status page
	// lists them and their queues. Nil: no cluster, no such section.
	Cluster Cluster
}

// Timeouts of the admin listener. The sign-in callback makes two requests to
// the identity provider (code exchange, then the first access token).
const (
	readHeaderTimeout = 10 * time.Second
	writeTimeout      = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	callbackTimeout   = time.Minute
)

// Server is the admin HTTP server. Its methods are safe for concurrent use.
type Server struct {
	relay   Relay
	metrics *Metrics
	opts    Options
	log     *slog.Logger
	admin   config.Admin // basic auth settings, fixed at New
	csrf    string       // per-process token of the Sign in forms
	handler http.Handler
	httpSrv *http.Server
	flows   flows
	devices *deviceFlows
	tmpl    pageTemplate
	// upstreams probes the providers' mail servers for /readyz and the
	// status page.
	upstreams *upstreamChecker
	// conns lets Close and Shutdown wait for the connections' goroutines.
	conns *httpConns
}

// New returns the admin server of relay. m is the relay's Observer (nil: a
// new Metrics, whose session counters then stay at zero); its token metrics
// start following relay's accounts. Basic auth settings are read from
// relay.Config() now: like the listener address, they change on restart.
func New(relay Relay, m *Metrics, opts Options) *Server {
	if m == nil {
		m = NewMetrics()
	}
	if opts.Logger == nil {
		opts.Logger = relay.Logger()
	}
	m.watch(relay)
	tok := make([]byte, 32)
	rand.Read(tok) // never fails (crypto/rand panics instead)
	s := &Server{
		relay:   relay,
		metrics: m,
		opts:    opts,
		log:     opts.Logger.With("component", "admin"),
		admin:   relay.Config().Listen.Admin,
		csrf:    hex.EncodeToString(tok),
		flows:   flows{m: make(map[string]*pendingFlow)},
		devices: newDeviceFlows(),
		tmpl:    mustParsePage(),

		upstreams: newUpstreamChecker(),
		conns:     newHTTPConns(),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", s.authed(m.Handler()))
	mux.Handle("GET /{$}", s.authed(http.HandlerFunc(s.status)))
	mux.Handle("POST /signin", s.authed(http.HandlerFunc(s.signin)))
	mux.Handle("GET /oauth2/callback", s.authed(http.HandlerFunc(s.callback)))
	s.handler = s.guard(mux)
	s.httpSrv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ConnState:         s.conns.state,
	}
	return s
}

// Handler is the server's HTTP handler, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve answers on ln until Shutdown or Close; it then returns nil. With
// listen.admin.cert_file and key_file it speaks HTTPS on ln (an error if
// the pair cannot be loaded).
func (s *Server) Serve(ln net.Listener) error {
	useTLS := s.admin.CertFile != "" && s.admin.KeyFile != ""
	if host, _, err := net.SplitHostPort(ln.Addr().String()); err == nil && !config.IsLoopbackHost(host) {
		s.log.Warn("admin listener reachable from other hosts", "addr", ln.Addr().String(), "basic_auth", s.authConfigured(), "tls", useTLS)
		if !useTLS {
			s.log.Warn("admin listener without TLS on a non-loopback address: the admin password crosses the network in clear; "+
				"set listen.admin.cert_file and key_file", "addr", ln.Addr().String())
		}
	}
	if useTLS {
		cert, err := tls.LoadX509KeyPair(s.admin.CertFile, s.admin.KeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin: listen.admin.cert_file: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	err := s.conns.serve(func() error { return s.httpSrv.Serve(ln) })
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for requests in progress until ctx
// ends (then it returns ctx's error, and Close ends them). Upstream probes
// in progress are cut short. When it returns nil, Serve and every
// connection's goroutine have returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.upstreams.close()
	s.devices.stop()
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		return err
	}
	s.conns.wait()
	return nil
}

// Close stops at once: the connections are closed (which cancels their
// requests' contexts) and upstream probes cut short. It returns when Serve
// and every connection's goroutine, and so every handler, have.
func (s *Server) Close() error {
	s.upstreams.close()
	s.devices.stop()
	s.conns.close()
	err := s.httpSrv.Close()
	s.conns.wait()
	return err
}

// guard adds the headers every answer gets, and refuses a Host that is not
// an address or localhost when no password protects the pages: a web page
// elsewhere cannot then read them through DNS rebinding.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// No form-action: the Sign in form redirects to the identity
		// provider, which form-action would block.
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
		if !s.authConfigured() && !hostAllowed(r.Host) {
			http.Error(w, "unexpected Host header: use the address of the admin listener (or localhost)", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostAllowed: an IP address or localhost, with or without a port.
func hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

func (s *Server) authConfigured() bool { return s.admin.Username != "" && s.admin.PasswordHash != "" }

// authed requires basic auth when a username and password hash are
// configured. The username is compared in constant time, and bcrypt runs
// for a wrong username too, so the timing does not tell which was wrong.
func (s *Server) authed(next http.Handler) http.Handler {
	if !s.authConfigured() {
		return next
	}
	wantUser := sha256.Sum256([]byte(s.admin.Username))
	hash := []byte(s.admin.PasswordHash)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		gotUser := sha256.Sum256([]byte(user))
		userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:]) == 1
		passOK := bcrypt.CompareHashAndPassword(hash, []byte(pass)) == nil
		if !ok || !userOK || !passOK {
			if ok {
				s.log.Warn("admin login failed", "remote", r.RemoteAddr)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="oauthrelay admin", charset="UTF-8"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz answers 200 when the listeners are up, every account can get a
// token now and every upstream server in use accepts connections;
// otherwise 503 with one line per problem (account names and states,
// provider names and server addresses, never a reason: /readyz needs no
// password).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if s.opts.Ready != nil {
		if err := s.opts.Ready(); err != nil {
			problems = append(problems, "listeners: not up")
			s.log.Debug("not ready", "err", err)
		}
	}
	now := time.Now()
	for _, a := range accounts(s.relay) {
		st := a.Source.State()
		if !tokenUsable(a, st, now) {
			problems = append(problems, fmt.Sprintf("account %s: token %s", a.Name, st.Status))
		}
	}
	for _, u := range s.unreachableUpstreams(r.Context()) {
		problems = append(problems, u.readyLine())
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
		for _, p := range problems {
			fmt.Fprintln(w, p)
		}
		return
	}
	fmt.Fprintln(w, "ready")
}

// tokenUsable: the account can serve a login now. The last request
// succeeded, or a cached token is still valid (a refresh failed but the old
// token serves). A password passthrough account gets its tokens at login
// and has nothing to check.
func tokenUsable(a account, st oauth.State, now time.Time) bool {
	if a.PasswordPassthrough && a.Password == "" {
		return true
	}
	return st.Status == oauth.StatusOK || st.Expiry.After(now)
}

// unreachableUpstreams probes (or recalls) the mail servers of the
// providers in use and returns those that do not accept connections.
func (s *Server) unreachableUpstreams(ctx context.Context) []upstreamState {
	ups := upstreamsInUse(s.relay.Config(), accounts(s.relay))
	return unreachable(s.upstreams.check(ctx, ups))
}
