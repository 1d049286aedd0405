package delivery

// Fixtures of the queue's tests: a spool in t.TempDir() on a test clock,
// a Queue over a Direct delivery over its own Sender (the fake, a
// scripted upstream or an address where nothing listens), an observer that
// tests wait on, credentials held back until a test lets them through, and
// a reader of RFC 3464 reports built from the standard library only.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/spool"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// appSender is the envelope sender of the queue's tests that do not go to
// the fake (which checks SendAs): the address a DSN goes back to.
const appSender = "erp@contoso.com"

// queueWorld is a Queue of testAccount with its spool and clock.
type queueWorld struct {
	dir   string
	spool *spool.Spool
	clock *testClock // the envelopes' and the queue's time
	obs   *queueRecorder
	queue *Queue
}

// queueOptions change newQueueWorld's defaults.
type queueOptions struct {
	// target is the upstream (required); cred its credentials (nil: a
	// static token, enough for scripted upstreams).
	target upstream.Target
	cred   upstream.Credentials
	// dir is an existing spool directory (a restart); "" is a new one.
	dir string
	// clock is shared with another world (a second process's view of
	// the same time); nil is a new one.
	clock *testClock
	// maxAge is QueueOptions.MaxAge (zero: its default).
	maxAge time.Duration
	// limits are the Sender's (zero: config.DefaultLimits()).
	limits config.Limits
	// seed is run on the spool before the Queue starts (messages left by
	// an earlier process).
	seed func(*spool.Spool)
	// obs is shared with another world; nil is a new one.
	obs *queueRecorder
}

func newQueueWorld(t *testing.T, o queueOptions) *queueWorld {
	t.Helper()
	w := &queueWorld{dir: o.dir, clock: o.clock, obs: o.obs}
	if w.obs == nil {
		w.obs = newQueueRecorder()
	}
	if w.dir == "" {
		w.dir = t.TempDir()
	}
	if w.clock == nil {
		w.clock = newTestClock()
	}
	sp, rec, err := spool.Open(w.dir, spool.Options{Now: w.clock.Now})
	if err != nil {
		t.Fatalf("spool.Open: %v", err)
	}
	if len(rec.Quarantined) > 0 {
		t.Logf("spool recovery quarantined %+v", rec.Quarantined)
	}
	// Registered first, so it runs after the Queue's Close.
	t.Cleanup(func() { sp.Close() })
	w.spool = sp
	if o.seed != nil {
		o.seed(sp)
	}
	if o.cred == nil {
		o.cred = &staticCreds{token: "scripted-token"}
	}
	sender := NewSender(o.target, SenderOptions{Limits: o.limits, Logger: testLogger(t)})
	direct := NewDirect(testAccount, sender, w.obs, DirectOptions{MaxWait: testLimit / 2})
	w.queue = NewQueue(QueueOptions{
		Account:      testAccount,
		Spool:        sp,
		Sender:       direct, // not shared: the Queue's Close closes the Sender
		Credentials:  o.cred,
		MaxAge:       o.maxAge,
		MaxSize:      1 << 20,
		ReportingMTA: "relay.test",
		Logger:       testLogger(t),
		Observer:     w.obs,
		Now:          w.clock.Now,
	})
	w.queue.Start()
	t.Cleanup(w.queue.Close)
	return w
}

// fakeUpstream starts the fake with testMailbox and returns the target of
// its SMTP server and credentials with its tokens.
func fakeUpstream(t *testing.T) (*fakems.Server, upstream.Target, *fakeCreds) {
	t.Helper()
	fake := startFake(t, context.Background(), fakems.Options{Logger: testLogger(t)})
	tgt := upstream.Target{
		Account: testAccount,
		Server:  config.Upstream{Addr: fake.SMTPAddr, TLS: config.TLSStartTLS},
		TLS:     &tls.Config{RootCAs: fake.CAPool},
	}
	return fake, tgt, &fakeCreds{fake: fake, mailbox: testMailbox}
}

// unreachable is a target where nothing listens.
func unreachable(t *testing.T) upstream.Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return upstream.Target{Account: testAccount, Server: config.Upstream{Addr: addr, TLS: config.TLSNone}}
}

// submit hands one message to d as the front end does (Begin, Rcpt for
// each recipient, Data) and returns Data's outcome; a refused Begin or
// Rcpt fails the test.
func submit(t *testing.T, d Delivery, from string, rcpts []string, opts *smtp.RcptOptions, msg string) (*Accepted, error) {
	t.Helper()
	tx, err := d.Begin(testCtx(t), nil, from, nil)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	for _, r := range rcpts {
		if err := tx.Rcpt(r, opts); err != nil {
			t.Fatalf("Rcpt %s: %v", r, err)
		}
	}
	return tx.Data(strings.NewReader(msg))
}

// queued submits msg and returns the spool id of its 250 reply.
func queued(t *testing.T, d Delivery, from string, rcpts []string, opts *smtp.RcptOptions, msg string) string {
	t.Helper()
	acc, err := submit(t, d, from, rcpts, opts, msg)
	if err != nil {
		t.Fatalf("Data: %v", err)
	}
	id, ok := strings.CutPrefix(acc.Reply, "2.0.0 OK queued as ")
	if !ok || id == "" {
		t.Fatalf("Data accepted with %q, want 2.0.0 OK queued as <id>", acc.Reply)
	}
	if acc.Bytes != int64(len(msg)) {
		t.Errorf("Data accepted %d bytes, want %d", acc.Bytes, len(msg))
	}
	return id
}

// seedMessage stores a message in sp as the queue writes one, before any
// Queue runs, and returns its id.
func seedMessage(t *testing.T, sp *spool.Spool, env spool.Envelope, msg string) string {
	t.Helper()
	if env.Account == "" {
		env.Account, env.Mailbox = testAccount.Name, testAccount.Mailbox
	}
	e, err := sp.Create(context.Background(), env, strings.NewReader(msg), 0)
	if err != nil {
		t.Fatalf("spool.Create: %v", err)
	}
	return e.ID
}

func envelopeTo(from string, rcpts ...string) spool.Envelope {
	env := spool.Envelope{From: from}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, spool.Recipient{Addr: r})
	}
	return env
}

// numberedMessage is testMessage with its own Message-ID.
func numberedMessage(id string) string {
	return strings.Replace(testMessage, "<inv-2024-03@contoso.com>", "<"+id+"@contoso.com>", 1)
}

// getEnvelope returns message id's envelope, active or failed.
func getEnvelope(t *testing.T, sp *spool.Spool, id string) *spool.Envelope {
	t.Helper()
	e, err := sp.Get(id)
	if err != nil {
		t.Fatalf("spool.Get(%s): %v", id, err)
	}
	return e
}

// wantGone checks that message id is neither active nor failed.
func wantGone(t *testing.T, sp *spool.Spool, id string) {
	t.Helper()
	if e, err := sp.Get(id); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("message %s still in the spool (%v): %+v", id, err, e)
	}
}

// active returns the active envelopes, failing the test on a spool error.
func active(t *testing.T, sp *spool.Spool) []*spool.Envelope {
	t.Helper()
	envs, err := sp.List()
	if err != nil {
		t.Fatalf("spool.List: %v", err)
	}
	return envs
}

func failedEnvelopes(t *testing.T, sp *spool.Spool) []*spool.Envelope {
	t.Helper()
	envs, err := sp.ListFailed()
	if err != nil {
		t.Fatalf("spool.ListFailed: %v", err)
	}
	return envs
}

// body returns the stored body of message id.
func body(t *testing.T, sp *spool.Spool, id string) string {
	t.Helper()
	f, err := sp.OpenBody(id)
	if err != nil {
		t.Fatalf("spool.OpenBody(%s): %v", id, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// queueCounts are what a Queue reported so far.
type queueCounts struct {
	Queued, Delivered, Deferred, Failed, Duplicates int
	// Reasons are the attempts' "result reason" in order ("delivered"
	// alone).
	Reasons []string
}

// queueRecorder is the Queue's and the Direct's observer: it keeps the
// messages the Direct reports (recorder) and counts what the Queue
// reports, for tests to wait on.
type queueRecorder struct {
	recorder
	qmu     sync.Mutex
	counts  queueCounts
	changed chan struct{}
}

func newQueueRecorder() *queueRecorder { return &queueRecorder{changed: make(chan struct{})} }

func (r *queueRecorder) update(f func(*queueCounts)) {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	f(&r.counts)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *queueRecorder) Queued(a events.Account, _ int64) {
	r.update(func(c *queueCounts) { c.Queued++ })
}

func (r *queueRecorder) QueueAttempt(a events.Account, result, reason string) {
	r.update(func(c *queueCounts) {
		c.Reasons = append(c.Reasons, strings.TrimSpace(result+" "+reason))
		switch result {
		case "delivered":
			c.Delivered++
		case "deferred":
			c.Deferred++
		case "failed":
			c.Failed++
		}
	})
}

func (r *queueRecorder) QueueDuplicate(events.Account) {
	r.update(func(c *queueCounts) { c.Duplicates++ })
}

func (r *queueRecorder) get() queueCounts {
	r.qmu.Lock()
	defer r.qmu.Unlock()
	c := r.counts
	c.Reasons = slices.Clone(c.Reasons)
	return c
}

// wait waits until cond holds for the counts, failing the test after
// testLimit.
func (r *queueRecorder) wait(t *testing.T, what string, cond func(queueCounts) bool) queueCounts {
	t.Helper()
	limit := time.NewTimer(testLimit)
	defer limit.Stop()
	for {
		r.qmu.Lock()
		c, changed := r.counts, r.changed
		r.qmu.Unlock()
		if cond(c) {
			return c
		}
		select {
		case <-changed:
		case <-limit.C:
			t.Fatalf("waiting for %s: not within %v; queue reported %+v", what, testLimit, c)
		}
	}
}

// gatedCreds hand out their tokens only once open is closed: a delivery
// that needs a login waits there. asked is closed at the first request.
type gatedCreds struct {
	upstream.Credentials
	open  chan struct{}
	once  sync.Once
	asked chan struct{}
}

func newGatedCreds(c upstream.Credentials) *gatedCreds {
	return &gatedCreds{Credentials: c, open: make(chan struct{}), asked: make(chan struct{})}
}

func (c *gatedCreds) Token(ctx context.Context) (string, error) {
	c.once.Do(func() { close(c.asked) })
	select {
	case <-c.open:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return c.Credentials.Token(ctx)
}

// loginDSN plays a greeting, EHLO with DSN (so NOTIFY= goes upstream) and
// a successful XOAUTH2 login.
func loginDSN(t *testing.T, c net.Conn, br *bufio.Reader) bool {
	t.Helper()
	reply(t, c, "220 scripted ESMTP")
	if !expect(t, br, "EHLO ") {
		return false
	}
	reply(t, c, "250-scripted Hello", "250-SIZE 157286400", "250-DSN", "250 AUTH LOGIN XOAUTH2")
	if !expect(t, br, "AUTH XOAUTH2 ") {
		return false
	}
	reply(t, c, "235 2.7.0 Authentication successful")
	return true
}

// exchange expects a command (its beginning) and answers it with lines.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, prefix string, lines ...string) bool {
	t.Helper()
	if !expect(t, br, prefix) {
		return false
	}
	reply(t, c, lines...)
	return true
}

// readBody reads a DATA body up to its final dot, without the dot
// stuffing, with CRLF line ends.
func readBody(t *testing.T, br *bufio.Reader) ([]byte, bool) {
	t.Helper()
	var b bytes.Buffer
	for {
		l, err := splice.ReadLine(br, maxLine)
		if err != nil {
			t.Errorf("scripted upstream: reading the message: %v", err)
			return nil, false
		}
		if string(l) == "." {
			return b.Bytes(), true
		}
		b.Write(bytes.TrimPrefix(l, []byte(".")))
		b.WriteString("\r\n")
	}
}

// sendData plays DATA: 354, the body, then final (e.g. "250 2.0.0 OK").
func sendData(t *testing.T, c net.Conn, br *bufio.Reader, final string) ([]byte, bool) {
	t.Helper()
	if !exchange(t, c, br, "DATA", "354 Start mail input; end with <CRLF>.<CRLF>") {
		return nil, false
	}
	b, ok := readBody(t, br)
	if ok {
		reply(t, c, final)
	}
	return b, ok
}

// quit answers the QUIT of the Sender's Close.
func quit221(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	if expect(t, br, "QUIT") {
		reply(t, c, "221 2.0.0 Bye")
	}
}

// dsn is a delivery status notification as read back.
type dsn struct {
	header     mail.Header
	text       string
	perMessage textproto.MIMEHeader
	recipients []textproto.MIMEHeader
	headers    string // the text/rfc822-headers part
}

// parseDSN reads an RFC 3464 report with net/mail and mime/multipart: a
// multipart/report; report-type=delivery-status of a text part, a
// message/delivery-status part and the original's header.
func parseDSN(t *testing.T, raw []byte) dsn {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Errorf("the DSN has bare LF line ends:\n%s", raw)
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("DSN: %v\n%s", err, raw)
	}
	d := dsn{header: m.Header}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("DSN Content-Type %q (%v), want multipart/report; report-type=delivery-status", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DSN part: %v\n%s", err, raw)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("DSN part: %v", err)
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types = append(types, ct)
		switch ct {
		case "text/plain":
			d.text = string(b)
		case "message/delivery-status":
			d.perMessage, d.recipients = statusFields(t, b)
		case "text/rfc822-headers":
			d.headers = string(b)
		}
	}
	if want := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}; strings.Join(types, " ") != strings.Join(want, " ") {
		t.Errorf("DSN parts %v, want %v", types, want)
	}
	return d
}

// statusFields splits a message/delivery-status body into its
// per-message fields and one group per recipient (RFC 3464 §2.1).
func statusFields(t *testing.T, b []byte) (textproto.MIMEHeader, []textproto.MIMEHeader) {
	t.Helper()
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
	var groups []textproto.MIMEHeader
	for range 1000 {
		h, err := r.ReadMIMEHeader()
		if len(h) > 0 {
			groups = append(groups, h)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("delivery-status fields: %v\n%s", err, b)
		}
	}
	if len(groups) == 0 {
		t.Fatalf("empty delivery-status part")
	}
	return groups[0], groups[1:]
}
