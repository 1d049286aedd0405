package fakems

import (
	"bytes"
	"crypto/sha256"
	"hash"
	"net/mail"
	"slices"
	"strings"
)

// header is a message's parsed header section (net/mail's reading of it).
type header struct{ h mail.Header }

// parseHeader reads the header section of a MIME message; a malformed one
// reads as empty.
func parseHeader(mime []byte) header {
	m, err := mail.ReadMessage(bytes.NewReader(headerOf(mime)))
	if err != nil {
		return header{h: mail.Header{}}
	}
	return header{h: m.Header}
}

func (h header) get(k string) string { return h.h.Get(k) }

// addresses returns the lower-case addresses of an address-list field.
func addresses(v string) []string {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	list, err := mail.ParseAddressList(v)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		out = append(out, lower(a.Address))
	}
	return out
}

func firstAddress(v string) string {
	if a := addresses(v); len(a) > 0 {
		return a[0]
	}
	return ""
}

// messageIDOf is the Message-ID header, "" when there is none.
func messageIDOf(mime []byte) string { return strings.TrimSpace(parseHeader(mime).get("Message-Id")) }

// splitHeader splits a message at the blank line after its header.
func splitHeader(mime []byte) (head, body []byte) {
	for _, sep := range []string{"\r\n\r\n", "\n\n"} {
		if i := bytes.Index(mime, []byte(sep)); i >= 0 {
			return mime[:i+len(sep)/2], mime[i+len(sep):]
		}
	}
	return mime, nil
}

// headerFields splits a header section into its fields, each with its
// folded continuation lines and its line end.
func headerFields(head []byte) []string {
	var out []string
	for _, line := range strings.SplitAfter(string(head), "\n") {
		if line == "" || line == "\r\n" || line == "\n" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1] += line
			continue
		}
		out = append(out, line)
	}
	return out
}

// hashState is a running SHA-256.
type hashState struct{ h hash.Hash }

func newHashState() hashState { return hashState{h: sha256.New()} }

func (s hashState) Write(p []byte) { s.h.Write(p) }

func (s hashState) sum() (out [32]byte) {
	copy(out[:], s.h.Sum(nil))
	return out
}

// graphRoles are the Graph application roles an app-only token of the app
// carries (SetGraphPermissions).
func (s *Server) graphRoles(clientID string) []string {
	s.graph.mu.Lock()
	defer s.graph.mu.Unlock()
	if p, ok := s.graph.perms[clientID]; ok {
		return slices.Clone(p)
	}
	return slices.Clone(defaultGraphPerms)
}
