package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"net/textproto"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// maxHeaderBytes bounds the header block read before a message is sent
// upstream when enforce_header_from is on; the rest streams.
const maxHeaderBytes = 64 << 10

// checkHeaderFrom reads the header block of the message (at most
// maxHeaderBytes) and refuses the message, before anything is sent
// upstream, unless every address of its From header fields matches the
// account's allowed_from. The caller aborts the refused transaction. It
// returns the whole message again (the header read, then the rest).
func (s *session) checkHeaderFrom(a *proxy.Account, r io.Reader) (io.Reader, error) {
	head, complete, err := readHeaderBlock(r, maxHeaderBytes)
	if err != nil {
		return nil, s.readFailed(err)
	}
	reason := ""
	if !complete {
		reason = fmt.Sprintf("Message header larger than %d KiB: the From header cannot be checked", maxHeaderBytes>>10)
	} else {
		reason = headerFromProblem(a.Account, head)
	}
	if reason != "" {
		s.log.Warn("message refused: From header not allowed for this account", "reason", reason)
		return nil, headerFromDenied(reason)
	}
	return io.MultiReader(bytes.NewReader(head), r), nil
}

// readHeaderBlock reads r until the empty line that ends the header block
// (or the end of a message that is all header). complete is false when
// limit bytes held no end. What was read past the header is returned too.
func readHeaderBlock(r io.Reader, limit int) (head []byte, complete bool, err error) {
	buf := make([]byte, 0, 4096)
	for {
		if headerEnd(buf) >= 0 {
			return buf, true, nil
		}
		if len(buf) >= limit {
			return buf, false, nil
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), limit)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, true, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
}

// headerEnd returns the offset of the header block's end in b (after its
// empty line), or -1. A bare LF ends lines as well, as in net/mail.
func headerEnd(b []byte) int {
	if bytes.HasPrefix(b, []byte("\r\n")) {
		return 2
	}
	if bytes.HasPrefix(b, []byte("\n")) {
		return 1
	}
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		next := i + j + 1
		switch {
		case bytes.HasPrefix(b[next:], []byte("\r\n")):
			return next + 2
		case bytes.HasPrefix(b[next:], []byte("\n")):
			return next + 1
		}
		i = next
	}
}

// anyCharset decodes RFC 2047 display names in any charset without
// converting them: only the addresses matter here.
var anyCharset = &mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}

// headerFromProblem returns, in plain words, why the header block head may
// not be sent by a, or "" when every address of every From field (folded,
// with encoded display names or groups) matches a's allowed_from.
func headerFromProblem(a *config.Account, head []byte) string {
	if end := headerEnd(head); end >= 0 {
		head = head[:end]
	} else {
		head = append(bytes.Clone(head), "\r\n\r\n"...)
	}
	hdr, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(head))).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return "Message header could not be parsed: the From header cannot be checked"
	}
	fields := hdr["From"]
	if len(fields) == 0 {
		return "Message has no From header"
	}
	n := 0
	for _, f := range fields {
		addrs, err := anyCharset.ParseList(f)
		if err != nil {
			return "From header could not be parsed"
		}
		for _, ad := range addrs {
			if !a.AllowsSender(ad.Address) {
				return fmt.Sprintf("From header address %s not allowed for this account", ad.Address)
			}
			n++
		}
	}
	if n == 0 {
		return "From header holds no address"
	}
	return ""
}
