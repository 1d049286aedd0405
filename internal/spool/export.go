package spool

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	// exportPrefix starts the names of the envelope's header fields.
	exportPrefix = "X-Oauthrelay-"
	// maxExportValue bounds a field's value so that no exported line
	// exceeds the 998 characters of RFC 5322 §2.1.1; a longer reply is
	// cut, marked with "...".
	maxExportValue = 900
	// lineEndPeek is how much of the body is looked at for its line end.
	lineEndPeek = 4096
)

// Export writes message id, active or failed, to w as an .eml stream (see
// the package comment): the envelope as header fields, then the body as
// stored, unchanged. The fields use the body's own line end (CRLF unless
// its first line ends in a bare LF).
func (s *Spool) Export(id string, w io.Writer) error {
	e, err := s.Get(id)
	if err != nil {
		return err
	}
	f, err := s.OpenBody(id)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, lineEndPeek)
	eol := "\r\n"
	if head, _ := br.Peek(lineEndPeek); bareLF(head) {
		eol = "\n"
	}
	if _, err := io.WriteString(w, exportHeader(e, eol)); err != nil {
		return fmt.Errorf("spool: export %s: %w", id, err)
	}
	if _, err := br.WriteTo(w); err != nil {
		return fmt.Errorf("spool: export %s: %w", id, err)
	}
	return nil
}

// bareLF reports whether the first line of b ends in LF without CR.
func bareLF(b []byte) bool {
	i := bytes.IndexByte(b, '\n')
	return i == 0 || (i > 0 && b[i-1] != '\r')
}

// exportHeader renders the envelope as header fields, each line ending
// in eol.
func exportHeader(e *Envelope, eol string) string {
	var b strings.Builder
	field := func(name, value string) {
		b.WriteString(name + ": " + exportValue(value) + eol)
	}
	field(exportPrefix+"Queue-ID", e.ID)
	state := "active"
	if !e.Failed.IsZero() {
		state = "failed"
	}
	field(exportPrefix+"State", state)
	field(exportPrefix+"Account", e.Account)
	field(exportPrefix+"Mailbox", e.Mailbox)
	field(exportPrefix+"Created", e.Created.Format(time.RFC1123Z))
	field(exportPrefix+"Size", strconv.FormatInt(e.Size, 10))
	if opts := e.Mail.String(); opts != "" {
		field(exportPrefix+"Mail-Options", opts)
	}
	field(exportPrefix+"Attempts", strconv.Itoa(e.Attempts))
	if state == "active" {
		field(exportPrefix+"Next-Attempt", e.NextAttempt.Format(time.RFC1123Z))
	}
	if e.LastError != "" {
		field(exportPrefix+"Last-Error", e.LastError)
	}
	if state == "failed" {
		field(exportPrefix+"Failed", e.Failed.Format(time.RFC1123Z)+"; "+e.FailReason)
	}
	for _, r := range e.Recipients {
		field(exportPrefix+"Recipient", recipientValue(r))
	}
	// RFC 5321 §4.4: the reverse-path, "<>" for the null sender.
	field("Return-Path", "<"+e.From+">")
	return b.String()
}

// String renders the MAIL FROM parameters as they were given
// ("SIZE=123 BODY=8BITMIME"), "" when there were none.
func (m Mail) String() string {
	var p []string
	if m.Size > 0 {
		p = append(p, "SIZE="+strconv.FormatInt(m.Size, 10))
	}
	if m.Body != "" {
		p = append(p, "BODY="+m.Body)
	}
	if m.SMTPUTF8 {
		p = append(p, "SMTPUTF8")
	}
	if m.Ret != "" {
		p = append(p, "RET="+m.Ret)
	}
	if m.EnvID != "" {
		p = append(p, "ENVID="+m.EnvID)
	}
	return strings.Join(p, " ")
}

// recipientValue renders one recipient: "<addr> state", its DSN
// parameters and its last reply.
func recipientValue(r Recipient) string {
	v := "<" + r.Addr + "> " + string(r.State)
	if len(r.Notify) > 0 {
		v += "; notify=" + strings.Join(r.Notify, ",")
	}
	if r.ORcpt != "" {
		v += "; orcpt=" + r.ORcpt
	}
	if r.Reply != "" {
		v += "; reply=" + strconv.Quote(r.Reply)
	}
	return v
}

// exportValue makes s safe as one header line: control characters (the
// line breaks of a multi-line reply above all) become spaces, and the
// value is cut at maxExportValue bytes on a character boundary.
func exportValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) <= maxExportValue {
		return s
	}
	cut := maxExportValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
