package graph

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Message is one message to send.
type Message struct {
	// Rcpts are the SMTP envelope's recipients: exactly these get it.
	Rcpts []string
	// Body is the message as the app sent it (header and body), Size
	// bytes: a file of the spool or a private temp file, or memory.
	Body io.ReaderAt
	Size int64
	// SaveToSentItems keeps a copy in the mailbox's Sent Items (what
	// SMTP submission does); false removes the copy Graph saves.
	SaveToSentItems bool
	// Host names the relay in a Message-ID it adds.
	Host string
	// Tokens give the Graph tokens of the account.
	Tokens TokenSource
}

// Result is a message Graph accepted.
type Result struct {
	// MessageID is its Internet Message-ID.
	MessageID string
	// Via is "sendMail" or "draft".
	Via string
	// Rewrite is what the envelope changed in the header.
	Rewrite Rewrite
	// Bytes is the size of the message sent (after the header rewrite).
	Bytes int64
	// DuplicatePossible: it was sent again without knowing whether an
	// earlier send had gone out.
	DuplicatePossible bool
	// FoundInSent: a send whose answer was lost was found in Sent Items.
	FoundInSent bool
}

// Send sends m. A failure is an *Error (the last request's).
func (c *Client) Send(ctx context.Context, m Message) (Result, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(m.Body, 0, m.Size), 32<<10)
	head, err := ReadHeader(br)
	if err != nil {
		return Result{}, &Error{Op: "read message", Err: err, Status: http.StatusBadRequest, Code: "InvalidMessage", Message: err.Error()}
	}
	newHead, rw, err := RewriteHeader(head, m.Rcpts, m.Host)
	if err != nil {
		return Result{}, err
	}
	if len(rw.Removed) > 0 || len(rw.Added) > 0 {
		c.log.Info("message header made to agree with the envelope", "message_id", rw.MessageID,
			"removed_header_recipients", rw.Removed, "added_as_bcc", rw.Added)
	}
	bodyLen := m.Size - int64(len(head))
	res := Result{MessageID: rw.MessageID, Rewrite: rw, Bytes: int64(len(newHead)) + bodyLen}
	open := func() io.Reader {
		return io.MultiReader(bytes.NewReader(newHead), io.NewSectionReader(m.Body, int64(len(head)), bodyLen))
	}
	if int64(base64.StdEncoding.EncodedLen(int(res.Bytes))) <= RequestLimit {
		res.Via = "sendMail"
		err = c.sendMail(ctx, m, open(), res.Bytes, &res)
	} else {
		res.Via = "draft"
		err = c.sendDraft(ctx, m, open, &res)
	}
	if err != nil {
		return res, err
	}
	if !m.SaveToSentItems {
		c.dropSentCopy(ctx, m.Tokens, res.MessageID)
	}
	return res, nil
}

// encode returns r's size bytes base64-encoded (a request body).
func encode(r io.Reader, size int64) ([]byte, error) {
	raw := make([]byte, size)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, fmt.Errorf("graph: read the message: %w", err)
	}
	out := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	base64.StdEncoding.Encode(out, raw)
	return out, nil
}

func (c *Client) sendMail(ctx context.Context, m Message, r io.Reader, size int64, res *Result) error {
	body, err := encode(r, size)
	if err != nil {
		return &Error{Op: "sendMail", Err: err}
	}
	return c.sendOnce(ctx, m.Tokens, request{op: "sendMail", method: http.MethodPost, url: c.userURL("/sendMail"),
		ctype: "text/plain", body: body, auth: true, send: true}, res, nil)
}

// sendOnce sends (sendMail or a draft's send) so that the message goes
// out once: a send whose answer was lost (no answer, 500, 502, 504) is
// looked for in Sent Items before it is sent again, and where Sent Items
// cannot be read the resend is logged as a possible duplicate. gone, for
// a draft, reports the draft as already sent (its send answered 404).
func (c *Client) sendOnce(ctx context.Context, tokens TokenSource, r request, res *Result, gone func(error) bool) error {
	for resend := 0; ; resend++ {
		_, err := c.do(ctx, tokens, r)
		var ge *Error
		if err == nil {
			return nil
		}
		if resend > 0 && gone != nil && gone(err) {
			res.FoundInSent = true
			return nil
		}
		if !errors.As(err, &ge) || !ge.ambiguous() || ctx.Err() != nil || resend >= maxResends {
			return err
		}
		found, readable := c.findSent(ctx, tokens, res.MessageID)
		if found {
			c.log.Info("the send's answer was lost, but the message is in Sent Items: not sent again", "message_id", res.MessageID, "status", ge.Status)
			res.FoundInSent = true
			return nil
		}
		if !readable {
			res.DuplicatePossible = true
			c.log.Warn("the send's answer was lost and Sent Items cannot be read: sending again, a duplicate is possible",
				"message_id", res.MessageID, "status", ge.Status, "fix", "grant Mail.Read (or Mail.ReadWrite) so the relay can check Sent Items")
			if c.o.OnDuplicatePossible != nil {
				c.o.OnDuplicatePossible()
			}
		} else {
			c.log.Info("the send's answer was lost and the message is not in Sent Items: sending again", "message_id", res.MessageID, "status", ge.Status)
		}
	}
}

// findSent looks for the Internet Message-ID in Sent Items. readable is
// false when the account may not read it (no Mail.Read), remembered so
// the relay does not ask again.
func (c *Client) findSent(ctx context.Context, tokens TokenSource, mid string) (found, readable bool) {
	if c.sentReadable.Load() == 2 {
		return false, false
	}
	for i := range sentLookups {
		if i > 0 {
			if c.o.Sleep(ctx, sentLookupDelay) != nil {
				return false, true
			}
		}
		ids, err := c.sentIDs(ctx, tokens, mid)
		var ge *Error
		if errors.As(err, &ge) && ge.Status == http.StatusForbidden {
			c.sentReadable.Store(2)
			return false, false
		}
		if err != nil {
			c.log.Warn("cannot search Sent Items", "err", err)
			return false, false
		}
		c.sentReadable.Store(1)
		if len(ids) > 0 {
			return true, true
		}
	}
	return false, true
}

// sentIDs returns the ids of the Sent Items messages with Internet
// Message-ID mid.
func (c *Client) sentIDs(ctx context.Context, tokens TokenSource, mid string) ([]string, error) {
	q := url.Values{"$filter": {"internetMessageId eq '" + strings.ReplaceAll(mid, "'", "''") + "'"}, "$select": {"id"}}
	body, err := c.do(ctx, tokens, request{op: "search Sent Items", method: http.MethodGet,
		url: c.userURL("/mailFolders/sentitems/messages") + "?" + q.Encode(), auth: true})
	if err != nil {
		return nil, err
	}
	var list struct {
		Value []struct{ ID string } `json:"value"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, &Error{Op: "search Sent Items", Err: err}
	}
	ids := make([]string, 0, len(list.Value))
	for _, v := range list.Value {
		ids = append(ids, v.ID)
	}
	return ids, nil
}

// dropSentCopy removes the copy Graph saved in Sent Items (MIME sends
// always save one) for save_to_sent_items: false. It needs Mail.ReadWrite;
// without it the copy stays, which is logged.
func (c *Client) dropSentCopy(ctx context.Context, tokens TokenSource, mid string) {
	ids, err := c.sentIDs(ctx, tokens, mid)
	if err == nil {
		for _, id := range ids {
			_, err = c.do(ctx, tokens, request{op: "delete from Sent Items", method: http.MethodDelete, url: c.userURL("/messages/" + url.PathEscape(id)), auth: true})
		}
	}
	if err != nil {
		c.log.Warn("save_to_sent_items is false, but the copy in Sent Items could not be removed", "message_id", mid, "err", err,
			"fix", "grant Mail.ReadWrite to the app (or set save_to_sent_items: true)")
	}
}

// sendDraft sends a message too large for sendMail: a draft from its MIME
// without the attachments, the attachments added, then send. A draft left
// by a failure is deleted.
func (c *Client) sendDraft(ctx context.Context, m Message, open func() io.Reader, res *Result) (err error) {
	var draft limitedBuffer
	draft.limit = RequestLimit / 4 * 3
	var atts []attachment
	err = splitMessage(open(), &draft, func(a attachment, r io.Reader) error {
		n, err := io.Copy(io.Discard, r)
		a.size = n
		if err == nil && n > MaxAttachment {
			err = fmt.Errorf("attachment %q is %d bytes, over Graph's 150 MB", a.name, n)
		}
		atts = append(atts, a)
		return err
	})
	if err != nil {
		return &Error{Op: "read message", Status: http.StatusRequestEntityTooLarge, Code: "InvalidMessage", Message: err.Error(), Err: err}
	}
	body, err := encode(bytes.NewReader(draft.Bytes()), int64(draft.Len()))
	if err != nil {
		return &Error{Op: "create draft", Err: err}
	}
	resp, err := c.do(ctx, m.Tokens, request{op: "create draft", method: http.MethodPost, url: c.userURL("/messages"),
		ctype: "text/plain", body: body, auth: true})
	if err != nil {
		return err
	}
	var d struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(resp, &d); err != nil || d.ID == "" {
		return &Error{Op: "create draft", Err: fmt.Errorf("no draft id in the answer: %v", err)}
	}
	sent := false
	defer func() {
		if !sent {
			c.deleteDraft(m.Tokens, d.ID)
		}
	}()
	msgURL := c.userURL("/messages/" + url.PathEscape(d.ID))
	i := 0
	chunk := make([]byte, 0)
	err = splitMessage(open(), nil, func(a attachment, r io.Reader) error {
		want := atts[i]
		i++
		if want.size < smallAttachment {
			return c.postAttachment(ctx, m.Tokens, msgURL, want, r)
		}
		if len(chunk) == 0 {
			chunk = make([]byte, chunkSize)
		}
		return c.upload(ctx, m.Tokens, msgURL, want, r, chunk)
	})
	if err != nil {
		return err
	}
	err = c.sendOnce(ctx, m.Tokens, request{op: "send", method: http.MethodPost, url: msgURL + "/send", auth: true, send: true}, res,
		func(err error) bool {
			var ge *Error
			return errors.As(err, &ge) && ge.Status == http.StatusNotFound
		})
	sent = err == nil
	return err
}

func (c *Client) deleteDraft(tokens TokenSource, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if _, err := c.do(ctx, tokens, request{op: "delete draft", method: http.MethodDelete, url: c.userURL("/messages/" + url.PathEscape(id)), auth: true}); err != nil {
		c.log.Warn("cannot delete the draft of a message that was not sent", "err", err)
	}
}

// postAttachment adds an attachment under 3 MB in one request.
func (c *Client) postAttachment(ctx context.Context, tokens TokenSource, msgURL string, a attachment, r io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(r, smallAttachment))
	if err != nil {
		return &Error{Op: "add attachment", Err: err}
	}
	body, _ := json.Marshal(map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": a.name, "contentType": a.contentType,
		"contentBytes": data, "isInline": a.inline, "contentId": a.contentID,
	})
	_, err = c.do(ctx, tokens, request{op: "add attachment", method: http.MethodPost, url: msgURL + "/attachments",
		ctype: "application/json", body: body, auth: true})
	return err
}

// upload adds a large attachment through an upload session: ranges of
// chunkSize in order, to the session's pre-authenticated URL (no token).
func (c *Client) upload(ctx context.Context, tokens TokenSource, msgURL string, a attachment, r io.Reader, chunk []byte) error {
	item, _ := json.Marshal(map[string]any{"AttachmentItem": map[string]any{
		"attachmentType": "file", "name": a.name, "size": a.size, "contentType": a.contentType,
		"isInline": a.inline, "contentId": a.contentID,
	}})
	resp, err := c.do(ctx, tokens, request{op: "create upload session", method: http.MethodPost,
		url: msgURL + "/attachments/createUploadSession", ctype: "application/json", body: item, auth: true})
	if err != nil {
		return err
	}
	var s struct {
		UploadURL string `json:"uploadUrl"`
	}
	if err := json.Unmarshal(resp, &s); err != nil || !strings.HasPrefix(s.UploadURL, "https://") {
		return &Error{Op: "create upload session", Err: fmt.Errorf("no https uploadUrl in the answer (%v)", err)}
	}
	for off := int64(0); off < a.size; {
		n, err := io.ReadFull(r, chunk[:min(int64(len(chunk)), a.size-off)])
		if err != nil {
			return &Error{Op: "upload", Err: fmt.Errorf("read attachment %q: %w", a.name, err)}
		}
		h := http.Header{"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", off, off+int64(n)-1, a.size)}}
		if _, err := c.do(ctx, tokens, request{op: "upload", method: http.MethodPut, url: s.UploadURL,
			ctype: "application/octet-stream", body: chunk[:n], header: h}); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// limitedBuffer is a bytes.Buffer that refuses to grow past limit.
type limitedBuffer struct {
	bytes.Buffer
	limit int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.limit {
		return 0, errDraftTooBig
	}
	return b.Buffer.Write(p)
}
