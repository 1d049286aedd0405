package fakems

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Microsoft Graph, as far as sending mail goes: sendMail with a MIME body,
// drafts created from MIME, file attachments (a POST under 3 MB, upload
// sessions up to 150 MB), send, and the Sent Items lookup by
// internetMessageId. Its limits are Graph's for the Outlook resource: 4 MB a
// request (413 RequestBodyTooLarge), 4 concurrent requests per mailbox (429
// ApplicationThrottled with Retry-After). It serves HTTPS on its own port
// with the fake's certificate (GraphURL stands for
// https://graph.microsoft.com) and takes only tokens whose audience is
// Graph.

// Graph permissions (application roles or delegated scopes).
const (
	permMailSend      = "Mail.Send"
	permMailReadWrite = "Mail.ReadWrite"
	permMailRead      = "Mail.Read"
)

const (
	// graphRequestLimit is Graph's 4 MB request size limit.
	graphRequestLimit = 4 << 20
	// graphUploadLimit is the largest attachment of an upload session.
	graphUploadLimit = 150 << 20
	// graphConcurrency is the concurrent requests Graph allows an app per
	// mailbox (Outlook service limits).
	graphConcurrency = 4
	// graphThrottleRetryAfter is the Retry-After of a 429 for concurrency.
	graphThrottleRetryAfter = time.Second
)

// defaultGraphPerms are the Graph permissions an app has unless
// SetGraphPermissions says otherwise.
var defaultGraphPerms = []string{permMailSend, permMailReadWrite}

// GraphFailure is an injected failure of a Graph send (sendMail, or send of
// a draft).
type GraphFailure struct {
	// Status is the HTTP status, e.g. 429, 503, 504.
	Status int
	// Code is the error code in the body; "" picks Graph's for the status.
	Code string
	// RetryAfter sets the Retry-After header (whole seconds); 0 sends none.
	RetryAfter time.Duration
	// AfterSend sends the message first, then answers the failure: the
	// 504 that had in fact sent it.
	AfterSend bool
	// Delay holds the answer back this long (a send that times out at the
	// client); with Status 0 the answer is then Graph's 202.
	Delay time.Duration
}

// GraphAttachment is a file attachment of a message sent through Graph.
type GraphAttachment struct {
	Name, ContentType string
	IsInline          bool
	ContentID         string
	Size              int64
	SHA256            [32]byte
	Data              []byte // nil with Options.DiscardData
	// Uploaded says it came through an upload session (not a POST).
	Uploaded bool
}

// GraphMessage is one message Graph would deliver.
type GraphMessage struct {
	// Mailbox is the {id} of /users/{id}; ClientID the app of the token.
	Mailbox, ClientID string
	AppOnly           bool
	// From is the From header's address.
	From string
	// Recipients are the addresses of To, Cc and Bcc, lower case, in that
	// order: who Graph delivers to.
	Recipients []string
	// MIME is the message as Graph would deliver it: for a draft, its MIME
	// with the attachments added (reassembled). Nil with DiscardData.
	MIME   []byte
	Size   int64
	SHA256 [32]byte
	// Attachments are the draft's file attachments.
	Attachments       []GraphAttachment
	InternetMessageID string
	// Via is "sendMail" or "draft".
	Via string
}

// graphState is the fake Graph's own state, under its own lock.
type graphState struct {
	mu       sync.Mutex
	perms    map[string][]string // client ID → Graph permissions
	noREST   map[string]bool     // mailboxes without REST (MailboxNotEnabledForRESTAPI)
	inFlight map[string]int      // requests in progress per mailbox
	drafts   map[string]*graphDraft
	uploads  map[string]*graphUpload
	sentIDs  map[string]map[string]string // mailbox → internetMessageId → id
	messages []GraphMessage
	changed  chan struct{}
	failLeft int
	failure  GraphFailure
	latency  time.Duration
	requests int
	throttle int // 429s for concurrency
	biggest  int64
}

type graphDraft struct {
	id, mailbox string
	mime        []byte
	attachments []GraphAttachment
	sent        bool
}

type graphUpload struct {
	draft    *graphDraft
	att      GraphAttachment
	received int64
	h        hashState
	buf      []byte
}

func newGraphState() *graphState {
	return &graphState{
		perms:    map[string][]string{},
		noREST:   map[string]bool{},
		inFlight: map[string]int{},
		drafts:   map[string]*graphDraft{},
		uploads:  map[string]*graphUpload{},
		sentIDs:  map[string]map[string]string{},
		changed:  make(chan struct{}),
	}
}

// SetGraphPermissions sets the Graph permissions of an app (application
// roles with admin consent, and the delegated scopes its tokens may carry):
// by default Mail.Send and Mail.ReadWrite. Mail.Send is sendMail,
// Mail.ReadWrite drafts and attachments, Mail.Read (or Mail.ReadWrite) the
// Sent Items lookup.
func (s *Server) SetGraphPermissions(clientID string, perms ...string) {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	s.graph.perms[clientID] = slices.Clone(perms)
}

// SetMailboxRESTDisabled makes Graph answer 404 MailboxNotEnabledForRESTAPI
// for the mailbox (inactive, soft-deleted or on-premises).
func (s *Server) SetMailboxRESTDisabled(mailbox string, disabled bool) {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	s.graph.noREST[lower(mailbox)] = disabled
}

// FailGraphSends makes the next n Graph sends fail with f.
func (s *Server) FailGraphSends(n int, f GraphFailure) {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	s.graph.failLeft, s.graph.failure = n, f
}

// SetGraphLatency delays every Graph request by d, so concurrent requests
// overlap as they do over the internet.
func (s *Server) SetGraphLatency(d time.Duration) {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	s.graph.latency = d
}

// GraphStats are counts of the fake Graph's requests.
type GraphStats struct {
	// Requests is every request received; Throttled the 429s for more than
	// 4 concurrent requests to a mailbox.
	Requests, Throttled int
	// LargestRequest is the largest request body seen, in bytes.
	LargestRequest int64
}

// GraphStats returns the counts so far.
func (s *Server) GraphStats() GraphStats {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	return GraphStats{Requests: s.graph.requests, Throttled: s.graph.throttle, LargestRequest: s.graph.biggest}
}

// GraphMessages returns the messages Graph accepted, oldest first (shared
// slices: read only).
func (s *Server) GraphMessages() []GraphMessage {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	return slices.Clone(s.graph.messages)
}

// WaitGraphMessages blocks until at least n messages were sent through
// Graph and returns them, or returns ctx's error.
func (s *Server) WaitGraphMessages(ctx context.Context, n int) ([]GraphMessage, error) {
	for {
		s.graph.mu.Lock()
		have, changed := len(s.graph.messages), s.graph.changed
		s.graph.mu.Unlock()
		if have >= n {
			return s.GraphMessages(), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("fakems: waiting for %d Graph messages (have %d): %w", n, have, ctx.Err())
		case <-s.closed:
			return nil, fmt.Errorf("fakems: waiting for %d Graph messages: server closed", n)
		}
	}
}

// SentItems returns the Internet Message-IDs in the mailbox's Sent Items
// (every message Graph sent, less those deleted).
func (s *Server) SentItems(mailbox string) []string {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	var out []string
	for mid := range s.graph.sentIDs[lower(mailbox)] {
		out = append(out, mid)
	}
	slices.Sort(out)
	return out
}

// graphHandler routes the Graph endpoints.
func (s *Server) graphHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1.0/users/{mailbox}/sendMail", s.graphAPI(s.graphSendMail))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages", s.graphAPI(s.graphCreateDraft))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages/{id}/attachments", s.graphAPI(s.graphAddAttachment))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages/{id}/attachments/createUploadSession", s.graphAPI(s.graphCreateUpload))
	mux.HandleFunc("POST /v1.0/users/{mailbox}/messages/{id}/send", s.graphAPI(s.graphSendDraft))
	mux.HandleFunc("DELETE /v1.0/users/{mailbox}/messages/{id}", s.graphAPI(s.graphDelete))
	mux.HandleFunc("GET /v1.0/users/{mailbox}/mailFolders/{folder}/messages", s.graphAPI(s.graphListSent))
	mux.HandleFunc("PUT /upload/{token}", s.graphUploadChunk)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeGraphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+r.URL.Path+"'.", 0)
	})
	return mux
}

// graphCaller is who a Graph request comes from.
type graphCaller struct {
	clientID string
	appOnly  bool
	mailbox  string // the {mailbox} of the path, lower case
	perms    []string
}

func (c *graphCaller) has(perms ...string) bool {
	for _, p := range perms {
		if slices.Contains(c.perms, p) {
			return true
		}
	}
	return false
}

// graphAPI authenticates a request, applies the mailbox's concurrency
// limit and the 4 MB request limit, and hands the body to h.
func (s *Server) graphAPI(h func(w http.ResponseWriter, r *http.Request, c *graphCaller, body []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g := s.graph
		g.mu.Lock()
		g.requests++
		latency := g.latency
		g.mu.Unlock()
		c, status, code, msg := s.graphAuth(r)
		if c == nil {
			writeGraphError(w, status, code, msg, 0)
			return
		}
		if !s.graphEnter(c.mailbox) {
			s.log.Info("graph: throttled (concurrency)", "mailbox", c.mailbox)
			writeGraphError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", graphThrottleRetryAfter)
			return
		}
		defer s.graphLeave(c.mailbox)
		s.pause(latency)
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, graphRequestLimit))
		s.noteSize(int64(len(body)))
		if err != nil {
			var mb *http.MaxBytesError
			if errors.As(err, &mb) {
				writeGraphError(w, http.StatusRequestEntityTooLarge, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", 0)
				return
			}
			writeGraphError(w, http.StatusBadRequest, "BadRequest", "cannot read the request", 0)
			return
		}
		h(w, r, c, body)
	}
}

func (s *Server) noteSize(n int64) {
	s.graph.mu.Lock()
	s.graph.biggest = max(s.graph.biggest, n)
	s.graph.mu.Unlock()
}

// graphAuth checks the bearer token (issued by the fake, unexpired, for
// Graph) and the caller's access to the mailbox of the path.
func (s *Server) graphAuth(r *http.Request) (*graphCaller, int, string, string) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return nil, 401, "InvalidAuthenticationToken", "Access token is empty."
	}
	mbox := lower(r.PathValue("mailbox"))
	s.mu.Lock()
	at, ok := s.access[tok]
	_, exists := s.mailboxes[mbox]
	granted := s.grants[at.clientIDOr()][mbox]
	s.mu.Unlock()
	switch {
	case !ok:
		return nil, 401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed."
	case time.Now().After(at.expires):
		return nil, 401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
	case at.aud != resGraph:
		return nil, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience."
	}
	s.graph.mu.Lock()
	perms, set := s.graph.perms[at.clientID]
	noREST := s.graph.noREST[mbox]
	s.graph.mu.Unlock()
	if !set {
		perms = defaultGraphPerms
	}
	c := &graphCaller{clientID: at.clientID, appOnly: at.appOnly(), mailbox: mbox}
	if c.appOnly {
		c.perms = slices.DeleteFunc(slices.Clone(at.roles), func(p string) bool { return !slices.Contains(perms, p) })
	} else {
		c.perms = slices.DeleteFunc(slices.Clone(at.scopes), func(p string) bool { return !slices.Contains(perms, p) })
	}
	switch {
	case !exists:
		return nil, 404, "ErrorInvalidUser", "The requested user '" + r.PathValue("mailbox") + "' is invalid."
	case noREST:
		return nil, 404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
	case c.appOnly && !granted:
		return nil, 403, "ErrorAccessDenied", "Access to OData is disabled: the application is not allowed to access this mailbox (RBAC for Applications scope)."
	case !c.appOnly && at.mailbox != mbox:
		return nil, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
	}
	return c, 0, "", ""
}

// clientIDOr is the token's app, "" for a token the fake never issued.
func (t *accessToken) clientIDOr() string {
	if t == nil {
		return ""
	}
	return t.clientID
}

func (s *Server) graphEnter(mbox string) bool {
	g := s.graph
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inFlight[mbox] >= graphConcurrency {
		g.throttle++
		return false
	}
	g.inFlight[mbox]++
	return true
}

func (s *Server) graphLeave(mbox string) {
	g := s.graph
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inFlight[mbox]--
}

// writeGraphError sends Graph's error body.
func writeGraphError(w http.ResponseWriter, status int, code, msg string, retryAfter time.Duration) {
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code": code, "message": msg,
		"innerError": map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "request-id": newGUID(), "client-request-id": newGUID()},
	}})
}

// accessDenied is Graph's answer to a missing permission.
func accessDenied(w http.ResponseWriter) {
	writeGraphError(w, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", 0)
}

// decodeMIME reads a text/plain base64 MIME body.
func decodeMIME(w http.ResponseWriter, r *http.Request, body []byte) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "text/plain") {
		writeGraphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "this fake takes MIME (Content-Type: text/plain) only, not "+ct, 0)
		return nil, false
	}
	mime, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(body)))
	if err != nil || len(mime) == 0 {
		writeGraphError(w, http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.", 0)
		return nil, false
	}
	return mime, true
}

// checkFrom answers ErrorSendAsDenied unless the From header is the
// mailbox or an address it has SendAs on.
func (s *Server) checkFrom(w http.ResponseWriter, mbox string, mime []byte) (string, bool) {
	h := parseHeader(mime)
	from := firstAddress(h.get("From"))
	s.mu.Lock()
	m := s.mailboxes[mbox]
	ok := from == "" || from == mbox || m != nil && m.sendAs[from]
	s.mu.Unlock()
	if !ok {
		writeGraphError(w, http.StatusForbidden, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.", 0)
		return "", false
	}
	return from, true
}

// takeFailure returns the injected failure for this send, if any.
func (s *Server) takeFailure() (GraphFailure, bool) {
	g := s.graph
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failLeft <= 0 {
		return GraphFailure{}, false
	}
	g.failLeft--
	return g.failure, true
}

func writeFailure(w http.ResponseWriter, f GraphFailure) {
	code := f.Code
	if code == "" {
		code = map[int]string{429: "ApplicationThrottled", 503: "ServiceUnavailable", 504: "GatewayTimeout"}[f.Status]
	}
	writeGraphError(w, f.Status, code, "injected failure", f.RetryAfter)
}

// mimeRequest checks perm and reads the request's MIME body.
func mimeRequest(w http.ResponseWriter, r *http.Request, c *graphCaller, perm string, body []byte) ([]byte, bool) {
	if !c.has(perm) {
		accessDenied(w)
		return nil, false
	}
	return decodeMIME(w, r, body)
}

func (s *Server) graphSendMail(w http.ResponseWriter, r *http.Request, c *graphCaller, body []byte) {
	mime, ok := mimeRequest(w, r, c, permMailSend, body)
	if !ok {
		return
	}
	// The MIME form has no saveToSentItems: Graph always saves a copy.
	s.deliver(w, c, mime, nil, "sendMail", nil)
}

// deliver sends a message as Graph would: From checked, then an injected
// failure answered before the send (it did not happen) or after it (the
// 504 that had sent it); commit runs just before the message is recorded.
func (s *Server) deliver(w http.ResponseWriter, c *graphCaller, mime []byte, atts func() []GraphAttachment, via string, commit func()) {
	from, ok := s.checkFrom(w, c.mailbox, mime)
	if !ok {
		return
	}
	f, failing := s.takeFailure()
	if failing && !f.AfterSend {
		s.pause(f.Delay)
		writeFailure(w, f)
		return
	}
	var a []GraphAttachment
	if commit != nil {
		commit()
	}
	if atts != nil {
		a = atts()
	}
	s.recordGraph(c, from, mime, a, via)
	if failing {
		s.pause(f.Delay)
	}
	if failing && f.Status != 0 {
		writeFailure(w, f)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) graphCreateDraft(w http.ResponseWriter, r *http.Request, c *graphCaller, body []byte) {
	mime, ok := mimeRequest(w, r, c, permMailReadWrite, body)
	if !ok {
		return
	}
	d := &graphDraft{id: "AAMk" + randString(40), mailbox: c.mailbox, mime: mime}
	s.graph.mu.Lock()
	s.graph.drafts[d.id] = d
	s.graph.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"id": d.id, "isDraft": true, "internetMessageId": messageIDOf(mime)})
}

// draft finds the mailbox's unsent draft of the path.
func (s *Server) draft(w http.ResponseWriter, r *http.Request, c *graphCaller) *graphDraft {
	s.graph.mu.Lock()
	d := s.graph.drafts[r.PathValue("id")]
	s.graph.mu.Unlock()
	if d == nil || d.mailbox != c.mailbox || d.sent {
		writeGraphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.", 0)
		return nil
	}
	return d
}

// graphDelete deletes a draft or a message in Sent Items.
func (s *Server) graphDelete(w http.ResponseWriter, r *http.Request, c *graphCaller, _ []byte) {
	if !c.has(permMailReadWrite) {
		accessDenied(w)
		return
	}
	s.graph.mu.Lock()
	for mid, id := range s.graph.sentIDs[c.mailbox] {
		if id == r.PathValue("id") {
			delete(s.graph.sentIDs[c.mailbox], mid)
			s.graph.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	s.graph.mu.Unlock()
	if d := s.draft(w, r, c); d != nil {
		s.graph.mu.Lock()
		delete(s.graph.drafts, d.id)
		s.graph.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}
}

// attachmentItem is a fileAttachment (POST) or an AttachmentItem
// (createUploadSession).
type attachmentItem struct {
	Type         string `json:"@odata.type"`
	Name         string `json:"name"`
	ContentType  string `json:"contentType"`
	ContentBytes []byte `json:"contentBytes"`
	IsInline     bool   `json:"isInline"`
	ContentID    string `json:"contentId"`
	// createUploadSession's
	AttachmentType string `json:"attachmentType"`
	Size           int64  `json:"size"`
}

func (s *Server) graphAddAttachment(w http.ResponseWriter, r *http.Request, c *graphCaller, body []byte) {
	if !c.has(permMailReadWrite) {
		accessDenied(w)
		return
	}
	d := s.draft(w, r, c)
	if d == nil {
		return
	}
	var a attachmentItem
	if err := json.Unmarshal(body, &a); err != nil || a.Name == "" {
		writeGraphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "invalid fileAttachment", 0)
		return
	}
	att := s.newAttachment(a, a.ContentBytes)
	s.graph.mu.Lock()
	d.attachments = append(d.attachments, att)
	s.graph.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"id": "AAMkAtt" + randString(20), "name": a.Name, "size": len(a.ContentBytes)})
}

func (s *Server) newAttachment(a attachmentItem, data []byte) GraphAttachment {
	att := GraphAttachment{Name: a.Name, ContentType: a.ContentType, IsInline: a.IsInline, ContentID: a.ContentID,
		Size: int64(len(data)), SHA256: sha256.Sum256(data)}
	if !s.opts.DiscardData {
		att.Data = data
	}
	return att
}

func (s *Server) graphCreateUpload(w http.ResponseWriter, r *http.Request, c *graphCaller, body []byte) {
	if !c.has(permMailReadWrite) {
		accessDenied(w)
		return
	}
	d := s.draft(w, r, c)
	if d == nil {
		return
	}
	var req struct {
		Item attachmentItem `json:"AttachmentItem"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Item.Name == "" || req.Item.AttachmentType != "file" {
		writeGraphError(w, http.StatusBadRequest, "ErrorInvalidRequest", "invalid AttachmentItem", 0)
		return
	}
	if req.Item.Size <= 0 || req.Item.Size > graphUploadLimit {
		writeGraphError(w, http.StatusBadRequest, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "attachment size must be 1 byte to 150 MB", 0)
		return
	}
	token := randString(48)
	u := &graphUpload{draft: d, att: GraphAttachment{Name: req.Item.Name, ContentType: req.Item.ContentType,
		IsInline: req.Item.IsInline, ContentID: req.Item.ContentID, Size: req.Item.Size, Uploaded: true}, h: newHashState()}
	s.graph.mu.Lock()
	s.graph.uploads[token] = u
	s.graph.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{
		"uploadUrl":          s.GraphURL + "/upload/" + token,
		"expirationDateTime": time.Now().Add(15 * time.Minute).UTC().Format(time.RFC3339),
		"nextExpectedRanges": []string{"0-"},
	})
}

var contentRange = regexp.MustCompile(`^bytes (\d+)-(\d+)/(\d+)$`)

// graphUploadChunk is a PUT of a byte range to an upload URL. The URL is
// pre-authenticated: a request with an Authorization header is refused, as
// Outlook's upload endpoint does. Ranges must come in order; each at most
// 4 MB.
func (s *Server) graphUploadChunk(w http.ResponseWriter, r *http.Request) {
	s.graph.mu.Lock()
	s.graph.requests++
	u := s.graph.uploads[r.PathValue("token")]
	latency := s.graph.latency
	s.graph.mu.Unlock()
	if u == nil {
		writeGraphError(w, http.StatusNotFound, "ErrorItemNotFound", "The upload session was not found.", 0)
		return
	}
	if r.Header.Get("Authorization") != "" {
		writeGraphError(w, http.StatusUnauthorized, "InvalidAudienceForResource", "The audience claim value is invalid for current resource. Audience claim is 'https://graph.microsoft.com', request url is 'https://outlook.office.com/api/beta/...'.", 0)
		return
	}
	mbox := u.draft.mailbox
	if !s.graphEnter(mbox) {
		writeGraphError(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", graphThrottleRetryAfter)
		return
	}
	defer s.graphLeave(mbox)
	s.pause(latency)
	m := contentRange.FindStringSubmatch(r.Header.Get("Content-Range"))
	if m == nil {
		writeGraphError(w, http.StatusBadRequest, "InvalidContentRange", "Content-Range is missing or malformed.", 0)
		return
	}
	from, _ := strconv.ParseInt(m[1], 10, 64)
	to, _ := strconv.ParseInt(m[2], 10, 64)
	total, _ := strconv.ParseInt(m[3], 10, 64)
	n := to - from + 1
	switch {
	case total != u.att.Size || to < from || to >= total:
		writeGraphError(w, http.StatusBadRequest, "InvalidContentRange", "Content-Range does not match the session.", 0)
		return
	case n > graphRequestLimit:
		writeGraphError(w, http.StatusRequestEntityTooLarge, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", 0)
		return
	case r.ContentLength >= 0 && r.ContentLength != n:
		writeGraphError(w, http.StatusBadRequest, "InvalidContentRange", "Content-Length does not match Content-Range.", 0)
		return
	}
	chunk, err := io.ReadAll(io.LimitReader(r.Body, n+1))
	s.noteSize(int64(len(chunk)))
	if err != nil || int64(len(chunk)) != n {
		writeGraphError(w, http.StatusBadRequest, "InvalidContentRange", "body does not match Content-Range.", 0)
		return
	}
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	if from != u.received {
		writeJSONLocked(w, http.StatusRequestedRangeNotSatisfiable, map[string]any{"error": map[string]any{"code": "InvalidRange", "message": fmt.Sprintf("expected range %d-", u.received)}})
		return
	}
	u.received += n
	u.h.Write(chunk)
	if !s.opts.DiscardData {
		u.buf = append(u.buf, chunk...)
	}
	if u.received < total {
		writeJSONLocked(w, http.StatusOK, map[string]any{"nextExpectedRanges": []string{strconv.FormatInt(u.received, 10) + "-"}})
		return
	}
	att := u.att
	att.SHA256 = u.h.sum()
	att.Data = u.buf
	u.draft.attachments = append(u.draft.attachments, att)
	delete(s.graph.uploads, r.PathValue("token"))
	w.Header().Set("Location", s.GraphURL+"/v1.0/users/"+mbox+"/messages/"+u.draft.id+"/attachments/AAMkAtt"+randString(20))
	w.WriteHeader(http.StatusCreated)
}

// writeJSONLocked is writeJSON under graph.mu (the write does not block on
// the lock's other users: net/http buffers it).
func writeJSONLocked(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

func (s *Server) graphSendDraft(w http.ResponseWriter, r *http.Request, c *graphCaller, _ []byte) {
	if !c.has(permMailSend) || !c.has(permMailReadWrite) {
		accessDenied(w)
		return
	}
	d := s.draft(w, r, c)
	if d == nil {
		return
	}
	var atts []GraphAttachment
	s.deliver(w, c, d.mime, func() []GraphAttachment { return atts }, "draft", func() {
		s.graph.mu.Lock()
		defer s.graph.mu.Unlock()
		d.sent = true
		delete(s.graph.drafts, d.id)
		atts = d.attachments
	})
}

// graphListSent answers the Sent Items lookup the relay makes after a
// timeout: $filter=internetMessageId eq '<id>'.
func (s *Server) graphListSent(w http.ResponseWriter, r *http.Request, c *graphCaller, _ []byte) {
	if !c.has(permMailRead, permMailReadWrite) {
		accessDenied(w)
		return
	}
	if !strings.EqualFold(r.PathValue("folder"), "sentitems") {
		writeJSON(w, http.StatusOK, map[string]any{"value": []any{}})
		return
	}
	var want string
	if f := r.URL.Query().Get("$filter"); f != "" {
		v, ok := strings.CutPrefix(f, "internetMessageId eq '")
		if !ok || !strings.HasSuffix(v, "'") {
			writeGraphError(w, http.StatusBadRequest, "BadRequest", "Invalid filter clause", 0)
			return
		}
		want = strings.ReplaceAll(strings.TrimSuffix(v, "'"), "''", "'")
	}
	s.graph.mu.Lock()
	var out []map[string]any
	for mid, id := range s.graph.sentIDs[c.mailbox] {
		if want == "" || mid == want {
			out = append(out, map[string]any{"id": id, "internetMessageId": mid})
		}
	}
	s.graph.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"value": out})
}

// recordGraph keeps a sent message: its recipients from the MIME headers
// (To, Cc, Bcc, as Graph delivers), the MIME reassembled with the draft's
// attachments, and its Sent Items entry.
func (s *Server) recordGraph(c *graphCaller, from string, mime []byte, atts []GraphAttachment, via string) {
	h := parseHeader(mime)
	var rcpts []string
	for _, k := range []string{"To", "Cc", "Bcc"} {
		rcpts = append(rcpts, addresses(h.get(k))...)
	}
	full := mime
	if len(atts) > 0 {
		full = reassemble(mime, atts)
	}
	mid := messageIDOf(mime)
	if mid == "" {
		mid = "<" + randString(20) + "@" + exchangeHost + ">"
	}
	m := GraphMessage{
		Mailbox: c.mailbox, ClientID: c.clientID, AppOnly: c.appOnly, From: from, Recipients: rcpts,
		Size: int64(len(full)), SHA256: sha256.Sum256(full), Attachments: atts, InternetMessageID: mid,
		Via: via,
	}
	if !s.opts.DiscardData {
		m.MIME = full
	}
	for i := range m.Attachments {
		m.Size += m.Attachments[i].Size
	}
	g := s.graph
	g.mu.Lock()
	defer g.mu.Unlock()
	g.messages = append(g.messages, m)
	if g.sentIDs[c.mailbox] == nil {
		g.sentIDs[c.mailbox] = map[string]string{}
	}
	g.sentIDs[c.mailbox][mid] = "AAMkSent" + randString(20)
	close(g.changed)
	g.changed = make(chan struct{})
	s.log.Info("graph: message sent", "mailbox", c.mailbox, "via", via, "recipients", len(rcpts), "attachments", len(atts))
}

// reassemble is the message as Graph sends a draft with attachments added:
// multipart/mixed of the draft's own content and each attachment, base64.
func reassemble(mime []byte, atts []GraphAttachment) []byte {
	head, body := splitHeader(mime)
	var top, content bytes.Buffer
	for _, f := range headerFields(head) {
		if strings.HasPrefix(strings.ToLower(f), "content-") || strings.HasPrefix(strings.ToLower(f), "mime-version") {
			content.WriteString(f)
			continue
		}
		top.WriteString(f)
	}
	boundary := "fakems-" + randString(24)
	var out bytes.Buffer
	out.Write(top.Bytes())
	out.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + "\"\r\n\r\n")
	out.WriteString("--" + boundary + "\r\n")
	out.Write(content.Bytes())
	out.WriteString("\r\n")
	out.Write(body)
	for _, a := range atts {
		out.WriteString("\r\n--" + boundary + "\r\n")
		disp := "attachment"
		if a.IsInline {
			disp = "inline"
		}
		fmt.Fprintf(&out, "Content-Type: %s; name=\"%s\"\r\nContent-Disposition: %s; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n", a.ContentType, a.Name, disp, a.Name)
		if a.ContentID != "" {
			fmt.Fprintf(&out, "Content-ID: <%s>\r\n", a.ContentID)
		}
		out.WriteString("\r\n")
		enc := base64.StdEncoding.EncodeToString(a.Data)
		for len(enc) > 76 {
			out.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		out.WriteString(enc + "\r\n")
	}
	out.WriteString("\r\n--" + boundary + "--\r\n")
	return out.Bytes()
}
