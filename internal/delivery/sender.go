package delivery

import (
	"context"
	"sync"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

const (
	// idleTimeout is how long an authenticated upstream session is kept
	// for reuse. Legacy apps connect once per message: a burst reuses one
	// session instead of paying TCP, TLS and XOAUTH2 for each message,
	// while a quiet relay holds no connection to Exchange for long.
	idleTimeout = time.Minute
	// quitTimeout bounds the polite QUIT when a session is closed.
	quitTimeout = 10 * time.Second
)

// Sender hands out authenticated upstream SMTP sessions of one mailbox and
// keeps the idle ones for reuse (most recently used first), closing each
// after idleTimeout. It sets no limit on how many are open at once.
type Sender struct {
	target upstream.Target

	mu     sync.Mutex
	idle   []*idleSession // oldest first
	timer  *time.Timer    // closes expired idle sessions; nil when none wait
	closed bool
	// idleTimeout (the constant) and now (time.Now) as NewSender sets
	// them; tests shorten the one and move the other.
	idleTimeout time.Duration
	now         func() time.Time
	// timers counts an armed timer whose callback has not finished, so
	// Close can wait for it.
	timers sync.WaitGroup
}

type idleSession struct {
	c     *smtpclient.Client
	since time.Time
}

// NewSender returns a Sender for t.
func NewSender(t upstream.Target) *Sender {
	return &Sender{target: t, idleTimeout: idleTimeout, now: time.Now}
}

// get returns an idle session (reused true) or logs in a new one.
func (s *Sender) get(ctx context.Context, cred upstream.Credentials) (c *smtpclient.Client, reused bool, err error) {
	if c := s.takeIdle(); c != nil {
		return c, true, nil
	}
	c, err = upstream.SMTP(ctx, s.target, cred)
	return c, false, err
}

// hasIdle reports whether a logged-in session waits for reuse.
func (s *Sender) hasIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	return len(s.idle) > 0
}

func (s *Sender) takeIdle() *smtpclient.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	n := len(s.idle)
	if n == 0 {
		return nil
	}
	is := s.idle[n-1]
	s.idle = s.idle[:n-1]
	return is.c
}

// put keeps a healthy session (ready for MAIL) for reuse.
func (s *Sender) put(c *smtpclient.Client) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		quit(c)
		return
	}
	s.idle = append(s.idle, &idleSession{c: c, since: s.now()})
	if s.timer == nil {
		s.armLocked(s.idleTimeout)
	}
	s.mu.Unlock()
}

func (s *Sender) armLocked(d time.Duration) {
	s.timers.Add(1)
	s.timer = time.AfterFunc(d, s.expire)
}

// expire closes the sessions idle for idleTimeout and re-arms the timer
// for the next one.
func (s *Sender) expire() {
	defer s.timers.Done()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timer = nil
	s.expireLocked()
	if len(s.idle) > 0 && !s.closed {
		s.armLocked(s.idleTimeout - s.now().Sub(s.idle[0].since))
	}
}

// expireLocked drops the sessions idle for idleTimeout. They are closed
// without QUIT: this runs on paths that must not wait on the network.
func (s *Sender) expireLocked() {
	now := s.now()
	n := 0
	for n < len(s.idle) && now.Sub(s.idle[n].since) >= s.idleTimeout {
		s.idle[n].c.Close()
		n++
	}
	s.idle = s.idle[n:]
}

// Close closes the idle sessions; sessions handed out are closed when they
// come back.
func (s *Sender) Close() {
	s.mu.Lock()
	idle := s.idle
	s.idle, s.closed = nil, true
	if s.timer != nil && s.timer.Stop() {
		s.timers.Done()
	}
	s.timer = nil
	s.mu.Unlock()
	s.timers.Wait()
	var wg sync.WaitGroup
	for _, is := range idle {
		wg.Go(func() { quit(is.c) })
	}
	wg.Wait()
}

// quit ends a healthy session politely.
func quit(c *smtpclient.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), quitTimeout)
	defer cancel()
	c.Quit(ctx)
}
