package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
)

// Reachability of the providers' mail servers, for /readyz and the status
// page. A token that works is no use when Exchange cannot be reached, and a
// load balancer or an administrator should learn which server it is.
const (
	// probeTimeout bounds one TCP connect to an upstream server.
	probeTimeout = 3 * time.Second
	// probeCacheTTL is how long a probe's answer is reused: probes (every
	// few seconds from Kubernetes, a monitor, the status page's refresh)
	// must not become a connection storm towards the provider.
	probeCacheTTL = 30 * time.Second
	// maxConcurrentProbes bounds the connects of one round.
	maxConcurrentProbes = 8
)

// upstream is one mail server of a provider in use.
type upstream struct {
	Provider string // the providers key
	Proto    string // "smtp", "imap" or "pop3"
	Addr     string // host:port as configured
}

// upstreamState is an upstream and the answer of its last probe.
type upstreamState struct {
	upstream
	Err error // nil: it accepted a TCP connection
}

// probeResult is a cached probe of one address.
type probeResult struct {
	err error
	at  time.Time
}

// upstreamChecker probes upstream addresses with a TCP connect, caches each
// answer for ttl, and runs at most one round of probes at a time (a request
// that arrives during a round waits for it and reuses its answers). Probes
// run on the requesting goroutine's behalf and are joined before check
// returns: no goroutine outlives a request, and close cancels a round in
// progress. Safe for concurrent use.
type upstreamChecker struct {
	// dial connects to an address; the zero value's is a net.Dialer's.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ttl and timeout are probeCacheTTL and probeTimeout; tests shorten
	// ttl.
	ttl, timeout time.Duration
	// now is the clock (time.Now).
	now func() time.Time

	round chan struct{} // a token: held while a round of probes runs
	ctx   context.Context
	stop  context.CancelFunc

	mu    sync.Mutex
	cache map[string]probeResult // by address
}

func newUpstreamChecker() *upstreamChecker {
	ctx, stop := context.WithCancel(context.Background())
	var d net.Dialer
	return &upstreamChecker{
		dial:    d.DialContext,
		ttl:     probeCacheTTL,
		timeout: probeTimeout,
		now:     time.Now,
		round:   make(chan struct{}, 1),
		ctx:     ctx,
		stop:    stop,
		cache:   make(map[string]probeResult),
	}
}

// close cancels a round in progress; later checks report every stale
// address as unreachable without dialling.
func (c *upstreamChecker) close() { c.stop() }

// upstreamsInUse lists the SMTP, IMAP and POP3 servers of the providers that
// accounts use, for the protocols whose listener is on (an IMAP server the
// relay never dials does not make it unready), in a stable order.
func upstreamsInUse(cfg *config.Config, accounts []account) []upstream {
	seen := map[upstream]bool{}
	var out []upstream
	add := func(u upstream) {
		if u.Addr != "" && !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	for _, a := range accounts {
		p := a.ProviderRef
		if p == nil {
			continue
		}
		if cfg.Listen.SMTP.Addr != config.AddrOff {
			add(upstream{p.Name, "smtp", p.SMTP.Addr})
		}
		if cfg.Listen.IMAP.Addr != config.AddrOff {
			add(upstream{p.Name, "imap", p.IMAP.Addr})
		}
		if cfg.Listen.POP3.Addr != config.AddrOff {
			add(upstream{p.Name, "pop3", p.POP3.Addr})
		}
	}
	slices.SortFunc(out, func(a, b upstream) int {
		return strings.Compare(a.Provider+" "+a.Proto+" "+a.Addr, b.Provider+" "+b.Proto+" "+b.Addr)
	})
	return out
}

// check returns the state of each upstream, probing the addresses whose
// cached answer is older than ttl. ctx bounds the wait (the request's).
func (c *upstreamChecker) check(ctx context.Context, ups []upstream) []upstreamState {
	if len(ups) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	if c.ctx.Err() != nil {
		cancel() // AfterFunc calls it too, but on a goroutine of its own
	}

	if stale := c.stale(ups); len(stale) > 0 {
		select {
		case c.round <- struct{}{}:
			c.probe(ctx, c.stale(ups)) // another round may have answered meanwhile
			<-c.round
		case <-ctx.Done():
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]upstreamState, len(ups))
	for i, u := range ups {
		out[i] = upstreamState{upstream: u, Err: errNotProbed}
		if r, ok := c.cache[u.Addr]; ok {
			out[i].Err = r.err
		}
	}
	return out
}

// errNotProbed stands for an address whose probe was cut short (the request
// ended or the server closed) before any answer was cached.
var errNotProbed = errors.New("not probed yet")

// stale lists the distinct addresses of ups without a fresh answer.
func (c *upstreamChecker) stale(ups []upstream) []string {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, u := range ups {
		r, ok := c.cache[u.Addr]
		if (!ok || now.Sub(r.at) >= c.ttl) && !slices.Contains(out, u.Addr) {
			out = append(out, u.Addr)
		}
	}
	return out
}

// probe connects to each address, at most maxConcurrentProbes at once, and
// caches the answers; it returns when every connect has ended. A probe cut
// short by ctx caches nothing (the last answer stays).
func (c *upstreamChecker) probe(ctx context.Context, addrs []string) {
	sem := make(chan struct{}, maxConcurrentProbes)
	var wg sync.WaitGroup
	for _, addr := range addrs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			err := c.connect(ctx, addr)
			if ctx.Err() != nil {
				return
			}
			c.mu.Lock()
			c.cache[addr] = probeResult{err: err, at: c.now()}
			c.mu.Unlock()
		})
	}
	wg.Wait()
}

// connect opens and closes a TCP connection to addr; nothing is sent (no
// session is started upstream, so the provider logs nothing).
func (c *upstreamChecker) connect(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// unreachable returns the states with an error.
func unreachable(states []upstreamState) []upstreamState {
	var out []upstreamState
	for _, s := range states {
		if s.Err != nil {
			out = append(out, s)
		}
	}
	return out
}

// readyLine is an unreachable upstream for /readyz, which needs no
// password: the provider's name, the protocol and the configured address
// (public facts), never the error's text.
func (s upstreamState) readyLine() string {
	return fmt.Sprintf("upstream %s %s %s: unreachable", s.Provider, s.Proto, s.Addr)
}

// pageText is an unreachable upstream for the status page, with the kind of
// failure in words.
func (s upstreamState) pageText() string {
	return fmt.Sprintf("%s %s %s (%s)", s.Provider, strings.ToUpper(s.Proto), s.Addr, dialWords(s.Err))
}

// dialWords classes a connect error in a few words, without its text.
func dialWords(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, errNotProbed):
		return "not checked yet"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &dnsErr):
		return "host name not found"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return fmt.Sprintf("no answer within %v", probeTimeout)
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to the host"
	}
	return "cannot connect"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
