package graph

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// attachment is a file attachment found in a message.
type attachment struct {
	name, contentType, contentID string
	inline                       bool
	size                         int64 // decoded
}

// errDraftTooBig is a message whose content without its attachments is
// over Graph's request limit: it cannot be sent through Graph.
var errDraftTooBig = errors.New("graph: the message without its attachments is over Graph's 4 MB request limit")

// splitMessage walks the message read from r. With draft set, it writes
// the message without its file attachments there (the draft Graph is given
// as MIME; parts other than attachments keep their bytes and their
// encoding); every attachment is handed to each with its decoded content,
// in the message's order. go-message's textproto reads the parts raw, so
// nothing is decoded that is not an attachment, and nothing is held in
// memory beyond a line.
func splitMessage(r io.Reader, draft io.Writer, each func(a attachment, content io.Reader) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return fmt.Errorf("graph: read the message header: %w", err)
	}
	w := &mimeWalker{w: draft, each: each}
	if isAttachment(h) {
		// A message that is one attachment: the draft gets an empty text
		// body.
		if draft != nil {
			top := h.Copy()
			for _, k := range []string{"Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-Id"} {
				top.Del(k)
			}
			top.Set("Content-Type", "text/plain; charset=utf-8")
			if err := textproto.WriteHeader(draft, top); err != nil {
				return err
			}
		}
		return w.attach(h, br)
	}
	return w.entity(h, br, 0)
}

// maxDepth bounds nested multiparts (a hostile message could nest them
// without end).
const maxDepth = 20

type mimeWalker struct {
	w    io.Writer // nil: only the attachments are wanted
	each func(attachment, io.Reader) error
}

func (m *mimeWalker) write(s string) error {
	if m.w == nil {
		return nil
	}
	_, err := io.WriteString(m.w, s)
	return err
}

func (m *mimeWalker) entity(h textproto.Header, body io.Reader, depth int) error {
	if m.w != nil {
		if err := textproto.WriteHeader(m.w, h); err != nil {
			return err
		}
	}
	mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" || depth >= maxDepth {
		if m.w == nil {
			return nil
		}
		_, err := io.Copy(m.w, body)
		return err
	}
	b := params["boundary"]
	mr := textproto.NewMultipartReader(body, b)
	kept := 0
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("graph: read a MIME part: %w", err)
		}
		if isAttachment(p.Header) {
			if err := m.attach(p.Header, p); err != nil {
				return err
			}
			continue
		}
		kept++
		if err := m.write("--" + b + "\r\n"); err != nil {
			return err
		}
		if err := m.entity(p.Header, p, depth+1); err != nil {
			return err
		}
		if err := m.write("\r\n"); err != nil {
			return err
		}
	}
	if kept == 0 {
		// Graph wants a body: an empty text part stands for it.
		if err := m.write("--" + b + "\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\r\n"); err != nil {
			return err
		}
	}
	return m.write("--" + b + "--\r\n")
}

// attach hands one attachment's decoded content to each.
func (m *mimeWalker) attach(h textproto.Header, body io.Reader) error {
	a := attachmentOf(h)
	content := decodeBody(h, body)
	if err := m.each(a, content); err != nil {
		return err
	}
	// Whatever each left unread is skipped.
	if _, err := io.Copy(io.Discard, content); err != nil {
		return fmt.Errorf("graph: decode attachment %q: %w", a.name, err)
	}
	return nil
}

// isAttachment: a part the draft leaves out and Graph gets as a file
// attachment: Content-Disposition attachment, a part with a file name
// (inline images too), or any leaf that is not text or a message.
func isAttachment(h textproto.Header) bool {
	mt, ctParams, _ := mime.ParseMediaType(h.Get("Content-Type"))
	disp, dParams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		return false
	case disp == "attachment", dParams["filename"] != "", ctParams["name"] != "":
		return true
	case mt == "", strings.HasPrefix(mt, "text/"):
		return false
	}
	return true
}

func attachmentOf(h textproto.Header) attachment {
	mt, ctParams, _ := mime.ParseMediaType(h.Get("Content-Type"))
	disp, dParams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	name := dParams["filename"]
	if name == "" {
		name = ctParams["name"]
	}
	if d, err := new(mime.WordDecoder).DecodeHeader(name); err == nil {
		name = d
	}
	if name == "" {
		name = "attachment"
		if exts, _ := mime.ExtensionsByType(mt); len(exts) > 0 {
			name += exts[0]
		}
	}
	if mt == "" {
		mt = "application/octet-stream"
	}
	cid := strings.Trim(strings.TrimSpace(h.Get("Content-Id")), "<>")
	return attachment{name: name, contentType: mt, contentID: cid, inline: disp == "inline" || disp == "" && cid != ""}
}

// decodeBody undoes the part's Content-Transfer-Encoding.
func decodeBody(h textproto.Header, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Filter{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// base64Filter drops what base64's decoder does not skip itself (spaces,
// tabs; it skips CR and LF), which some mailers leave at line ends.
type base64Filter struct{ r io.Reader }

func (f *base64Filter) Read(p []byte) (int, error) {
	for {
		n, err := f.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != ' ' && c != '\t' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}
