package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/graph"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/securefile"
	"github.com/oauthrelay/oauthrelay/internal/smtpclient"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

const (
	// graphMemLimit: a message up to this size is held in memory while
	// it is sent through Graph; a larger one in a private temp file.
	graphMemLimit = 1 << 20
	// GraphMaxSize is the largest message sent through Graph: 150 MB of
	// attachments (the upload sessions' limit) and its header, as
	// Exchange's SIZE 157286400.
	GraphMaxSize = 157286400
	// graphRequestsPerWindow in graphWindow: Graph's 10,000 requests per
	// 10 minutes per app and mailbox.
	graphRequestsPerWindow = 10_000
	graphWindow            = 10 * time.Minute
)

// GraphObserver is told about a message Graph may deliver twice (a send
// whose answer was lost, sent again where Sent Items could not be read),
// when the delivery's Observer also implements it (the metrics do).
type GraphObserver interface {
	GraphDuplicatePossible(a events.Account)
}

// GraphOptions configure a Graph delivery.
type GraphOptions struct {
	// Account is the account it sends for.
	Account events.Account
	// Client is the mailbox's Graph client, shared by every account that
	// sends as the mailbox (its concurrency limit and pace are the
	// mailbox's).
	Client *graph.Client
	// Tokens give the account's Graph tokens (its second oauth.Source).
	Tokens graph.TokenSource
	// URL names Graph in errors (the provider's graph.url).
	URL string
	// SaveToSentItems is the account's save_to_sent_items.
	SaveToSentItems bool
	// TempDir holds messages over 1 MB while they are sent (the relay's
	// state_dir); "" is os.TempDir.
	TempDir string
	// Host names the relay in a Message-ID it adds; "" is the host name.
	Host string
	// RecipientsPerMessage caps RCPT per message (452 4.5.3 past it); 0
	// none.
	RecipientsPerMessage int
	// Logger hears about what Graph refused, with the fix; nil discards.
	Logger *slog.Logger
	// Observer hears about messages; nil: events.Nop.
	Observer events.Observer
}

// Graph sends an account's mail through Microsoft Graph: the envelope is
// collected, the body held (in memory, or a private temp file over 1 MB;
// a queued message is read from the spool as it is), and the message sent
// when the app's final dot arrives, so the app's 250 is Graph's 202. A
// Queue takes it as its Sender like any Delivery.
type Graph struct {
	o   GraphOptions
	log *slog.Logger
}

// NewGraph returns the Graph delivery of o.Account.
func NewGraph(o GraphOptions) *Graph {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = events.Nop{}
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	return &Graph{o: o, log: o.Logger.With("account", o.Account.Name, "upstream", "graph")}
}

// Ready implements Delivery: the account's Graph token must come. The
// app's credentials are not Graph's and are not used.
func (g *Graph) Ready(ctx context.Context, _ upstream.Credentials) error {
	if _, err := g.o.Tokens.Token(ctx); err != nil {
		return g.tokenError(err)
	}
	return nil
}

// tokenError classifies a Graph token failure as upstream.TokenError does.
func (g *Graph) tokenError(err error) *upstream.Error {
	e := &upstream.Error{Kind: upstream.Unavailable, Proto: events.SMTP, Addr: g.o.URL, Reason: "Graph token request failed", Err: err}
	var oe *oauth.Error
	if errors.As(err, &oe) {
		e.Reason = "Graph token: " + oe.Reason
		if oe.Class == oauth.NeedsSignIn {
			e.Kind = upstream.NeedsSignIn
		}
	}
	return e
}

// Begin implements Delivery. A SIZE= over GraphMaxSize is refused at once.
func (g *Graph) Begin(ctx context.Context, _ upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	if opts != nil && opts.Size > GraphMaxSize {
		return nil, errQueueTooBig
	}
	t := &graphTx{g: g, ctx: ctx, from: from}
	t.logged = !isQueueAttempt(ctx)
	return t, nil
}

// Close implements Delivery: the Client is the mailbox's, closed by nobody
// (it holds no connection of its own beyond the HTTP transport's).
func (g *Graph) Close() {}

// graphTx is one message's envelope until its body comes.
type graphTx struct {
	g      *Graph
	ctx    context.Context
	from   string
	rcpts  []string
	logged bool // the message log is this Tx's (not a Queue's)
}

func (t *graphTx) Rcpt(to string, _ *smtp.RcptOptions) error {
	if n := t.g.o.RecipientsPerMessage; n > 0 && len(t.rcpts) >= n {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: fmt.Sprintf("Too many recipients (at most %d per message)", n)}
	}
	t.rcpts = append(t.rcpts, to)
	return nil
}

func (t *graphTx) Abort() {}

// Data holds the message and sends it through Graph.
func (t *graphTx) Data(r io.Reader) (*Accepted, error) {
	body, size, done, err := t.g.hold(r)
	if err != nil {
		t.record(nil, 0, "", err)
		return nil, err
	}
	defer done()
	res, err := t.g.o.Client.Send(t.ctx, graph.Message{Rcpts: t.rcpts, Body: body, Size: size,
		SaveToSentItems: t.g.o.SaveToSentItems, Host: t.g.o.Host, Tokens: t.g.o.Tokens})
	if res.DuplicatePossible {
		if o, ok := t.g.o.Observer.(GraphObserver); ok {
			o.GraphDuplicatePossible(t.g.o.Account)
		}
	}
	if err != nil {
		err = t.g.reply(err, res.MessageID)
		t.record(nil, size, res.MessageID, err)
		return nil, err
	}
	acc := &Accepted{Reply: "2.0.0 OK " + res.MessageID + " queued by Microsoft Graph", Bytes: res.Bytes}
	t.g.observe(acc)
	t.record(acc, res.Bytes, res.MessageID, nil)
	t.g.log.Info("message sent through Graph", "message_id", res.MessageID, "via", res.Via, "bytes", res.Bytes,
		"recipients", len(t.rcpts), "found_in_sent_items", res.FoundInSent)
	return acc, nil
}

func (g *Graph) observe(acc *Accepted) { g.o.Observer.Message(g.o.Account, acc.Bytes) }

// record puts the message in the message log (not for a Queue's attempt,
// which logs its own).
func (t *graphTx) record(acc *Accepted, size int64, mid string, err error) {
	if !t.logged {
		return
	}
	r := MessageRecord{Time: time.Now(), From: t.from, Recipients: t.rcpts, MessageID: mid, Bytes: size}
	var se *smtp.SMTPError
	switch {
	case err == nil:
		r.Outcome, r.Reply = OutcomeDelivered, "250 "+acc.Reply
	case !isReadError(err) && errors.As(err, &se):
		r.Outcome, r.Reply = OutcomeRefused, upstream.FormatReply(se)
	default:
		r.Outcome, r.Reply = OutcomeFailed, directFailure(err)
	}
	logMessage(t.g.o.Observer, t.g.o.Account, r)
}

// bodyFile is a file of the spool as the Queue hands it over: read where
// it lies, not copied.
type bodyFile interface {
	io.ReaderAt
	Stat() (os.FileInfo, error)
	Seek(int64, int) (int64, error)
}

// hold makes the message readable at any offset (Graph's large path reads
// it twice, and a resend reads it again): a spool file as it is, else
// memory up to graphMemLimit and a private temp file beyond. done frees it.
func (g *Graph) hold(r io.Reader) (io.ReaderAt, int64, func(), error) {
	if f, ok := r.(bodyFile); ok {
		if pos, err := f.Seek(0, io.SeekCurrent); err == nil && pos == 0 {
			if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
				return f, st.Size(), func() {}, nil
			}
		}
	}
	var mem bytes.Buffer
	n, err := io.Copy(&mem, io.LimitReader(r, graphMemLimit+1))
	if err != nil {
		return nil, 0, nil, &smtpclient.ReadError{Err: err}
	}
	if n <= graphMemLimit {
		return bytes.NewReader(mem.Bytes()), n, func() {}, nil
	}
	f, err := securefile.CreateTemp(g.o.TempDir, "graph-*.eml")
	if err != nil {
		g.log.Error("cannot hold a message for Graph", "err", err)
		return nil, 0, nil, errSpoolFull
	}
	done := func() {
		f.Close()
		os.Remove(f.Name())
	}
	if _, err := f.Write(mem.Bytes()); err != nil {
		done()
		g.log.Error("cannot hold a message for Graph", "err", err)
		return nil, 0, nil, errSpoolFull
	}
	rr := &readErr{r: r}
	m, err := io.Copy(f, io.LimitReader(rr, GraphMaxSize+1-n))
	switch {
	case rr.err != nil:
		done()
		return nil, 0, nil, &smtpclient.ReadError{Err: rr.err}
	case err != nil:
		done()
		g.log.Error("cannot hold a message for Graph", "err", err)
		return nil, 0, nil, errSpoolFull
	case n+m > GraphMaxSize:
		done()
		return nil, 0, nil, errQueueTooBig
	}
	return f, n + m, done, nil
}

// readErr keeps the app's read error apart from the temp file's.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// reply maps a Graph failure to what the app (or the Queue) is told:
// 451 4.x for what may pass (throttling, outages: the app keeps the
// message, a Queue retries), 550 5.7.x for refusals an administrator must
// fix — logged with the fix in plain words.
func (g *Graph) reply(err error, mid string) error {
	var ge *graph.Error
	if !errors.As(err, &ge) {
		return err
	}
	if ge.Token {
		return g.tokenError(ge.Err)
	}
	reason, fix := graph.Explain(ge)
	log := g.log.With("message_id", mid, "op", ge.Op, "status", ge.Status, "code", ge.Code, "reason", reason)
	if fix != "" {
		log = log.With("fix", fix)
	}
	var se *smtp.SMTPError
	switch {
	case ge.Status == 0 && errors.Is(ge.Err, context.Canceled):
		return err
	case ge.Status == 429:
		se = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Microsoft Graph is throttling this mailbox; try again later"}
	case ge.Temporary():
		se = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "Microsoft Graph is not available for now; try again later"}
	case ge.Status == 413 || ge.Code == "InvalidMessage":
		se = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too large for Microsoft Graph (attachments up to 150 MB, the rest up to 3 MB)"}
	case ge.Status == 401:
		return &upstream.Error{Kind: upstream.NeedsSignIn, Proto: events.SMTP, Addr: g.o.URL, Reason: reason + ": " + fix, Err: err}
	case ge.Code == "ErrorSendAsDenied":
		se = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: reason + "; " + fix}
	default:
		msg := reason
		if fix != "" {
			msg += "; an administrator must " + fix
		}
		se = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: msg}
	}
	if se.Code >= 500 {
		log.Error("Microsoft Graph refused the message")
	} else {
		log.Warn("Microsoft Graph did not take the message for now")
	}
	return se
}

// graphPace is one mailbox's pace of Graph requests: the same sliding
// window as the SMTP pace (window), over Graph's ten minutes.
type graphPace struct {
	clock   Clock
	limit   int
	mu      sync.Mutex
	w       window
	changed chan struct{}
}

// NewGraphPace returns the pace of one mailbox's Graph requests (share it
// through the mailbox's graph.Client) on clock (nil: the system clock).
func NewGraphPace(clock Clock) graph.Pacer {
	if clock == nil {
		clock = realClock{}
	}
	return &graphPace{clock: clock, limit: graphRequestsPerWindow, w: window{span: graphWindow}, changed: make(chan struct{})}
}

// Take implements graph.Pacer: it waits until a request's place is free
// in the window.
func (p *graphPace) Take(ctx context.Context) (func(), error) {
	for {
		p.mu.Lock()
		now := p.clock.Now()
		ok, at := p.w.free(now, p.limit)
		if ok {
			p.w.take()
			p.mu.Unlock()
			return func() {
				p.mu.Lock()
				p.w.done(p.clock.Now())
				close(p.changed)
				p.changed = make(chan struct{})
				p.mu.Unlock()
			}, nil
		}
		changed := p.changed
		p.mu.Unlock()
		// A place frees when a request in flight is answered (changed)
		// or, on the pace's clock, when the oldest counted one ages out.
		var aged chan struct{}
		var t Timer
		if !at.IsZero() {
			ch := make(chan struct{})
			aged, t = ch, p.clock.AfterFunc(at.Sub(now), func() { close(ch) })
		}
		select {
		case <-aged:
		case <-changed:
		case <-ctx.Done():
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the mailbox's Graph pace: %w", ctx.Err())
		}
	}
}
