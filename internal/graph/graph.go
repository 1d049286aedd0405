// Package graph sends mail through Microsoft Graph for one mailbox: the
// relay's way out of tenants where SMTP AUTH is switched off.
//
// A message goes as MIME, as the app wrote it but for its header, which
// is made to agree with the SMTP envelope (see RewriteHeader): Graph
// delivers to the header's To, Cc and Bcc, so exactly the envelope's
// recipients get it. A message whose base64 fits Graph's 4 MB request goes
// in one sendMail; a larger one becomes a draft made from its MIME without
// the attachments, the attachments are added (a POST each under 3 MB,
// upload sessions in 3.75 MB ranges above, up to 150 MB), and the draft is
// sent. The message is read from an io.ReaderAt (the relay's spool or a
// private temp file) and never held whole in memory.
//
// Graph's limits for a mailbox are kept here: at most 4 requests at once
// (Client is shared by every sender of the mailbox), 429 and 503 retried
// after their Retry-After, and a Pacer (the delivery's sliding window) for
// the 10,000 requests in 10 minutes. A send that timed out or got a 504
// may have been sent: before it is sent again, Sent Items is searched for
// its Internet Message-ID where the account may read it; where it may not,
// the resend is logged (and counted) as a possible duplicate.
//
// Out of scope: Graph's JSON message form (the MIME form keeps the app's
// headers and structure), reading mail, and batching ($batch counts each
// request against the same limits).
package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Graph's documented limits (Outlook service limits, sendMail, upload
// sessions) and the relay's choices within them.
const (
	// RequestLimit is Graph's 4 MB limit on a request body.
	RequestLimit = 4 << 20
	// smallAttachment: attachments below it are POSTed in one request
	// (4,000,000 bytes of base64 and the JSON around it stay under
	// RequestLimit); larger ones go through an upload session, as Graph
	// asks for attachments of 3 MB and more.
	smallAttachment = 3_000_000
	// MaxAttachment is the largest attachment an upload session takes.
	MaxAttachment = 150 << 20
	// chunkSize is one upload range: a multiple of 320 KiB, as Graph
	// asks, under the 4 MB a request may carry.
	chunkSize = 12 * 320 << 10
	// Concurrency is Graph's concurrent requests per app and mailbox.
	Concurrency = 4
	// maxAttempts bounds the tries of one request after 429, 503 or a
	// refused token.
	maxAttempts = 6
	// maxResends bounds how often a send whose outcome is unknown (a
	// timeout, a 504) is sent again.
	maxResends = 2
	// defaultBackoff is the wait after a 429 or 503 without Retry-After.
	defaultBackoff = 2 * time.Second
	// maxRetryAfter caps a Retry-After the relay honours within one
	// message; a longer one fails the message temporarily (451).
	maxRetryAfter = 2 * time.Minute
	// requestTimeout bounds one request (an upload range of 3.75 MB
	// included).
	requestTimeout = 2 * time.Minute
	// sentLookups and sentLookupDelay: Sent Items is searched this many
	// times, this far apart, before a send is taken as not done.
	sentLookups     = 3
	sentLookupDelay = 2 * time.Second
)

// TokenSource gives Graph access tokens (an *oauth.Source made for Graph's
// scopes).
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	Invalidate()
}

// Pacer keeps a mailbox's request rate: Take waits for a request's place
// and returns when it may go (done is called when it has been answered).
type Pacer interface {
	Take(ctx context.Context) (done func(), err error)
}

// Options configure a Client.
type Options struct {
	// URL is Graph's root, e.g. https://graph.microsoft.com (the cloud's
	// host, or the provider's graph.url).
	URL string
	// Mailbox is the {id} of /users/{id}: the mailbox sent as.
	Mailbox string
	// HTTPClient makes the requests; nil: http.DefaultClient's transport
	// with requestTimeout.
	HTTPClient *http.Client
	// Pacer keeps the request rate; nil: none.
	Pacer Pacer
	// Logger hears about rewrites, retries and possible duplicates; nil
	// discards.
	Logger *slog.Logger
	// Sleep waits d or until ctx ends; nil: a timer. Tests shorten it.
	Sleep func(ctx context.Context, d time.Duration) error
	// OnDuplicatePossible is told when a message is sent again without
	// knowing whether the first send went out (metrics); nil: nothing.
	OnDuplicatePossible func()
}

// Client sends mail as one mailbox. Safe for concurrent use; every sender
// of the mailbox should share one, so the concurrency limit holds.
type Client struct {
	o   Options
	sem chan struct{}
	log *slog.Logger
	// sentReadable: 0 unknown, 1 Sent Items can be read, 2 it cannot.
	sentReadable atomic.Int32
}

// New returns the Client of o.Mailbox.
func New(o Options) *Client {
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: requestTimeout}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	o.URL = strings.TrimRight(o.URL, "/")
	return &Client{o: o, sem: make(chan struct{}, Concurrency), log: o.Logger.With("mailbox", o.Mailbox, "upstream", "graph")}
}

// CloseIdle closes the client's idle HTTPS connections (the relay
// stopping); the Client stays usable.
func (c *Client) CloseIdle() { c.o.HTTPClient.CloseIdleConnections() }

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Error is a failed Graph request.
type Error struct {
	// Op names the request ("sendMail", "create draft", "upload", ...).
	Op string
	// Status is the HTTP status; 0 when no answer came (Err says why).
	Status int
	// Code and Message are Graph's error body (e.g. ErrorSendAsDenied).
	Code, Message string
	// RetryAfter is the answer's Retry-After, if any.
	RetryAfter time.Duration
	// Err is a transport error or a token failure.
	Err error
	// Token says Err came from the token source.
	Token bool
}

func (e *Error) Error() string {
	switch {
	case e.Token:
		return fmt.Sprintf("graph %s: token: %v", e.Op, e.Err)
	case e.Status == 0:
		return fmt.Sprintf("graph %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("graph %s: %d %s: %s", e.Op, e.Status, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary: retrying later may succeed (429, 5xx, no answer, a token
// endpoint that is down is decided by the caller from Err).
func (e *Error) Temporary() bool { return e.Status == 0 || e.Status == 429 || e.Status >= 500 }

// ambiguous: the request may have taken effect although no success came.
func (e *Error) ambiguous() bool {
	return !e.Token && (e.Status == 0 || e.Status == 500 || e.Status == 502 || e.Status == 504)
}

// request is one Graph request, rebuilt for each attempt.
type request struct {
	op, method, url, ctype string
	body                   []byte
	// auth: send the token (upload URLs are pre-authenticated: none).
	auth bool
	// header is extra request headers (Content-Range).
	header http.Header
	// noRetry5xx: a send, whose 5xx is resolved by the caller.
	send bool
}

// do runs r: within the mailbox's concurrency and pace, with the token,
// retrying 429 and 503 after Retry-After and a refused token once.
// A 2xx answer's body is returned.
func (c *Client) do(ctx context.Context, tokens TokenSource, r request) ([]byte, error) {
	refreshed := false
	for attempt := 1; ; attempt++ {
		body, err := c.once(ctx, tokens, r)
		if err == nil {
			return body, nil
		}
		var ge *Error
		if !errors.As(err, &ge) || ge.Token {
			return nil, err
		}
		switch {
		case ge.Status == http.StatusUnauthorized && r.auth && !refreshed:
			tokens.Invalidate()
			refreshed = true
			continue
		case (ge.Status == 429 || ge.Status == 503) && attempt < maxAttempts:
			wait := ge.RetryAfter
			if wait <= 0 {
				wait = defaultBackoff << (attempt - 1)
			}
			if wait > maxRetryAfter {
				return nil, err
			}
			c.log.Info("Graph asked the relay to wait", "op", r.op, "status", ge.Status, "code", ge.Code, "retry_after", wait, "attempt", attempt)
			if err := c.o.Sleep(ctx, wait); err != nil {
				return nil, &Error{Op: r.op, Err: err}
			}
			continue
		case ge.Status >= 500 && !r.send && attempt < 3:
			// Not a send: nothing is lost by trying again.
			if err := c.o.Sleep(ctx, defaultBackoff); err != nil {
				return nil, &Error{Op: r.op, Err: err}
			}
			continue
		}
		return nil, err
	}
}

// once makes one attempt of r.
func (c *Client) once(ctx context.Context, tokens TokenSource, r request) ([]byte, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, &Error{Op: r.op, Err: ctx.Err()}
	}
	defer func() { <-c.sem }()
	if c.o.Pacer != nil {
		done, err := c.o.Pacer.Take(ctx)
		if err != nil {
			return nil, &Error{Op: r.op, Err: err}
		}
		defer done()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, bytes.NewReader(r.body))
	if err != nil {
		return nil, &Error{Op: r.op, Err: err}
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	if r.ctype != "" {
		req.Header.Set("Content-Type", r.ctype)
	}
	if r.auth {
		tok, err := tokens.Token(ctx)
		if err != nil {
			return nil, &Error{Op: r.op, Err: err, Token: true}
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.o.HTTPClient.Do(req)
	if err != nil {
		return nil, &Error{Op: r.op, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		if err != nil {
			return nil, &Error{Op: r.op, Err: err}
		}
		return body, nil
	}
	e := &Error{Op: r.op, Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	var ge struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(body, &ge) == nil {
		e.Code, e.Message = ge.Error.Code, ge.Error.Message
	}
	if e.Code == "" {
		e.Code = http.StatusText(resp.StatusCode)
	}
	return nil, e
}

// retryAfter reads a Retry-After of seconds (what Graph sends) or an HTTP
// date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// userURL is the URL of the mailbox's path p (p starts with "/").
func (c *Client) userURL(p string) string {
	return c.o.URL + "/v1.0/users/" + url.PathEscape(c.o.Mailbox) + p
}
