package smtp

// End to end against a real submission service: Dovecot 2.3's
// submission (dovecot-submissiond) as the provider's SMTP upstream, with
// STARTTLS and a certificate from a test CA, checking every XOAUTH2 token
// through the fake Microsoft 365's RFC 7662 introspection endpoint and
// relaying each message to an SMTP sink in this process. So the relay's
// upstream pool and its queue meet an SMTP server that is not ours.

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/proxy"
)

const (
	// dcPoolConnections is limits.connections in the pool test: fewer
	// than the apps sending at once.
	dcPoolConnections = 2
	// dcApps is the number of concurrent app connections (one message
	// each) in the pool test.
	dcApps = 10
	// dcQueued is the number of messages queued in each phase of the queue
	// test.
	dcQueued = 5
	// dcDeliveryWait bounds the wait for the sink to have the messages.
	// With a retry made by hand it includes the queue worker's poll
	// interval (30 s in internal/delivery).
	dcDeliveryWait = 90 * time.Second
	// dcDeferWait bounds the wait for the worker's failed first attempt
	// while Dovecot is stopped.
	dcDeferWait = 30 * time.Second
)

// connCounter is a TCP forwarder between the relay and Dovecot that
// counts the connections open through it at once: the number of upstream
// sessions Dovecot serves for the relay, whatever the relay itself says.
type connCounter struct {
	addr string
	ln   net.Listener
	wg   sync.WaitGroup

	mu            sync.Mutex
	open, maxOpen int
	total         int
	conns         map[net.Conn]bool
}

func startConnCounter(t *testing.T, target string) *connCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &connCounter{addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}}
	c.wg.Add(1)
	go c.accept(target)
	t.Cleanup(func() {
		ln.Close()
		c.mu.Lock()
		for conn := range c.conns {
			conn.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
	})
	return c
}

func (c *connCounter) accept(target string) {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			in.Close()
			continue
		}
		c.mu.Lock()
		c.open++
		c.total++
		c.maxOpen = max(c.maxOpen, c.open)
		c.conns[in], c.conns[out] = true, true
		c.mu.Unlock()
		c.wg.Add(1)
		go c.pipe(in, out)
	}
}

// pipe copies both ways until either side closes, then closes both.
func (c *connCounter) pipe(in, out net.Conn) {
	defer c.wg.Done()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
	c.mu.Lock()
	c.open--
	delete(c.conns, in)
	delete(c.conns, out)
	c.mu.Unlock()
}

// cut closes every connection open through the counter, as an outage
// does: Dovecot's master, stopped, waits for the submission processes that
// still serve the relay's pooled sessions (and is killed after
// dovecotStopTimeout), which would keep delivering.
func (c *connCounter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conns {
		conn.Close()
	}
}

func (c *connCounter) counts() (maxOpen, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxOpen, c.total
}

// dcWorldOptions shape newDovecotWorld.
type dcWorldOptions struct {
	queue    bool
	stateDir string
}

// dovecotWorld is the SMTP world of world_test.go with Dovecot's
// submission service as the upstream, reached through a connCounter.
type dovecotWorld struct {
	*world
	dc      *testutil.Dovecot
	counter *connCounter
}

func newDovecotWorld(t *testing.T, o dcWorldOptions) *dovecotWorld {
	t.Helper()
	// Before anything else: skip (or fail in CI) without Dovecot.
	testutil.DovecotPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ms, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Close() })
	ms.AddApp(fakems.App{ClientID: clientID, Secret: secret})
	ms.AddMailbox(mailbox, "mailbox-password")
	ms.GrantApp(clientID, mailbox)

	dc := testutil.StartDovecot(t, testutil.DovecotOptions{
		IntrospectURL: ms.IntrospectURL, Users: []string{mailbox}, Submission: true,
	})
	w := &dovecotWorld{world: &world{t: t, ms: ms, cert: testutil.NewLocalCert(t)}, dc: dc,
		counter: startConnCounter(t, dc.SubmissionAddr)}
	if o.stateDir == "" {
		o.stateDir = t.TempDir()
	}
	yaml := fmt.Sprintf(`
state_dir: %s
limits: {connections: %d}
listen:
  smtp: {addr: "127.0.0.1:0", tls: none, cert_file: %s, key_file: %s}
  imap: {addr: "off"}
  admin: {addr: "off"}
providers:
  contoso:
    type: microsoft
    tenant: %s
    client_id: %s
    client_secret: %q
    token_url: %s
    smtp: {addr: %q, tls: starttls}
    ca_file: %s
accounts:
  - name: invoices
    provider: contoso
    mailbox: %s
    username: %s
    password_hash: %q
`, o.stateDir, dcPoolConnections, w.cert.CertFile, w.cert.KeyFile, ms.Tenant, clientID, secret, ms.TokenURL,
		w.counter.addr, dc.CAFile, mailbox, username, testHash)
	if o.queue {
		yaml += "    delivery: queue\n"
	}
	cfg, err := config.Parse(filepath.Join(o.stateDir, "oauthrelay.yaml"), []byte(yaml),
		func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	logger, buf := testutil.Logger(t)
	w.log = buf
	w.relay, err = proxy.NewRelay(cfg, proxy.Options{Logger: logger, HTTPClient: ms.HTTPClient()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRelay := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); w.relay.Run(runCtx) }()
	t.Cleanup(func() { stopRelay(); <-ran })
	w.srv, err = New(ctx, w.relay, cfg.Listen.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := proxy.Listen(cfg.Listen.SMTP)
	if err != nil {
		t.Fatal(err)
	}
	w.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- w.srv.Serve(ln) }()
	t.Cleanup(func() {
		w.srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return w
}

// waitSink waits for n messages at Dovecot's sink.
func (w *dovecotWorld) waitSink(n int) []testutil.SinkMessage {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dcDeliveryWait)
	defer cancel()
	msgs, err := w.dc.Sink.WaitMessages(ctx, n)
	if err != nil {
		w.t.Fatalf("waiting for Dovecot to relay %d messages: %v", n, err)
	}
	return msgs
}

// checkDelivered checks that the sink got exactly want (by Subject), each
// byte for byte from mailbox to recipient after the trace header Dovecot
// prepends as every SMTP server does (RFC 5321 section 4.4).
func checkDelivered(t *testing.T, got []testutil.SinkMessage, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("the sink got %d messages, want %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for _, m := range got {
		data, ok := withoutTrace(m.Data)
		if !ok {
			t.Errorf("the sink got a message without Dovecot's Received header: %q", m.Data)
		}
		subject := subjectOf(data)
		body, ok := want[subject]
		switch {
		case !ok:
			t.Errorf("the sink got an unexpected message %q", m.Data)
		case seen[subject]:
			t.Errorf("the sink got %q twice", subject)
		case string(data) != body:
			t.Errorf("%s arrived as %q, want %q after the trace header", subject, m.Data, body)
		case m.From != mailbox || len(m.To) != 1 || m.To[0] != recipient:
			t.Errorf("%s arrived from %s to %v", subject, m.From, m.To)
		}
		seen[subject] = true
	}
}

// withoutTrace removes the first header field of data when it is Dovecot's
// Received field ("by dovecot.test"), with its folded lines.
func withoutTrace(data []byte) ([]byte, bool) {
	s := string(data)
	if !strings.HasPrefix(s, "Received: ") {
		return data, false
	}
	rest := s
	for {
		_, after, found := strings.Cut(rest, "\r\n")
		if !found {
			return data, false
		}
		rest = after
		if !strings.HasPrefix(rest, "\t") && !strings.HasPrefix(rest, " ") {
			break
		}
	}
	if !strings.Contains(s[:len(s)-len(rest)], "by dovecot.test") {
		return data, false
	}
	return []byte(rest), true
}

func subjectOf(data []byte) string {
	for line := range strings.SplitSeq(string(data), "\r\n") {
		if s, ok := strings.CutPrefix(line, "Subject: "); ok {
			return s
		}
		if line == "" {
			break
		}
	}
	return ""
}

// Ten apps send at once, each on its own connection, as one mailbox whose
// limits allow 2 upstream connections: Dovecot relays all ten byte for
// byte, and never more than 2 connections from the relay were open at
// Dovecot at once (counted on the wire, between the relay and Dovecot).
func TestDovecotSubmissionPool(t *testing.T) {
	w := newDovecotWorld(t, dcWorldOptions{})
	want := map[string]string{}
	for i := range dcApps {
		subject := fmt.Sprintf("invoice %d", 4700+i)
		want[subject] = message(mailbox, recipient, subject, fmt.Sprintf("Invoice %d.\r\n..a dot-stuffed line", 4700+i))
	}
	errs := make(chan error, dcApps)
	var wg sync.WaitGroup
	for subject, msg := range want {
		c := w.login()
		wg.Go(func() {
			_, err := send(c, mailbox, []string{recipient}, msg)
			if err == nil {
				err = c.Quit()
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", subject, err)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	checkDelivered(t, w.waitSink(dcApps), want)
	maxOpen, total := w.counter.counts()
	sinkMax, sinkSessions := w.dc.Sink.MaxConcurrent()
	t.Logf("relay→Dovecot: %d connections, at most %d at once; Dovecot→sink: %d, at most %d at once; %d Dovecot logins",
		total, maxOpen, sinkSessions, sinkMax, strings.Count(w.dc.Log(), "submission-login: Info: Login:"))
	if maxOpen > dcPoolConnections || maxOpen == 0 {
		t.Errorf("%d relay connections were open at Dovecot at once, want 1 to %d", maxOpen, dcPoolConnections)
	}
}

// delivery: queue through Dovecot: messages get 250 "queued as" and reach
// the sink; then, with Dovecot stopped, more messages still get 250, the
// worker's attempts fail and are deferred, and after Dovecot is back and
// an operator's retry (what `oauthrelay queue retry` does while serve
// runs) the worker delivers every one of them.
func TestDovecotSubmissionQueue(t *testing.T) {
	dir := t.TempDir()
	w := newDovecotWorld(t, dcWorldOptions{queue: true, stateDir: dir})
	want := map[string]string{}
	sendQueued := func(phase string) []string {
		var ids []string
		for i := range dcQueued {
			subject := fmt.Sprintf("%s reminder %d", phase, i)
			msg := message(mailbox, recipient, subject, "Your invoice is due.")
			want[subject] = msg
			c := w.login()
			text, err := send(c, mailbox, []string{recipient}, msg)
			if err != nil {
				t.Fatalf("%s: %v", subject, err)
			}
			id := queuedAs.FindStringSubmatch(text)
			if id == nil {
				t.Fatalf("%s: DATA answered %q, want OK queued as <id>", subject, text)
			}
			ids = append(ids, id[1])
			c.Quit()
		}
		return ids
	}

	sendQueued("up")
	checkDelivered(t, w.waitSink(dcQueued), want)

	// The pooled sessions go first: Dovecot's master waits for its
	// submission processes to end, and with them the relay's connections.
	w.counter.cut()
	w.dc.Stop()
	ids := sendQueued("down")
	sp := openSpool(t, dir)
	waitDeferred(t, sp, ids)
	if n := len(w.dc.Sink.Messages()); n != dcQueued {
		t.Fatalf("the sink has %d messages while Dovecot is stopped, want %d", n, dcQueued)
	}
	w.dc.Start()
	for _, id := range ids {
		if err := sp.Retry(id); err != nil {
			t.Fatalf("retry %s: %v", id, err)
		}
	}
	checkDelivered(t, w.waitSink(2*dcQueued), want)
}

// waitDeferred waits until the worker tried each message and kept it for
// a later attempt with the reason (polled: the spool has no notification).
func waitDeferred(t *testing.T, sp *spool.Spool, ids []string) {
	t.Helper()
	deadline := time.Now().Add(dcDeferWait)
	for _, id := range ids {
		for {
			env, err := sp.Get(id)
			if err != nil {
				t.Fatalf("queued message %s: %v", id, err)
			}
			if env.Attempts > 0 && env.Pending() == 1 && env.LastError != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %s not deferred after %v: %+v", id, dcDeferWait, env)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
