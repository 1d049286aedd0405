package graph

import (
	"context"
	"net/http"
)

// Probe is what `oauthrelay check` learns of the account's Graph
// permissions on the mailbox, without sending or keeping anything: each
// field is nil when the permission is there.
type Probe struct {
	// Send: Mail.Send (sendMail), and the mailbox within the app's reach.
	Send error
	// ReadWrite: Mail.ReadWrite (drafts and attachments, needed over 3 MB).
	ReadWrite error
	// ReadSent: reading Sent Items (Mail.Read or Mail.ReadWrite), which
	// keeps a lost answer from becoming a duplicate.
	ReadSent error
}

// Probe asks Graph about each permission with a request that cannot take
// effect: sendMail and a draft with an empty MIME body (Graph checks the
// permission first and answers 403, then refuses the empty content with
// 400, which means allowed), and a search of Sent Items for no message.
func (c *Client) Probe(ctx context.Context, tokens TokenSource) Probe {
	allowed := func(op, method, path string) error {
		_, err := c.do(ctx, tokens, request{op: op, method: method, url: c.userURL(path), ctype: "text/plain", auth: true})
		if e, ok := err.(*Error); ok && e.Status == http.StatusBadRequest {
			return nil
		}
		if err == nil {
			return nil
		}
		return err
	}
	var p Probe
	p.Send = allowed("sendMail", http.MethodPost, "/sendMail")
	p.ReadWrite = allowed("create draft", http.MethodPost, "/messages")
	_, p.ReadSent = c.sentIDs(ctx, tokens, "<oauthrelay-check@invalid>")
	return p
}
