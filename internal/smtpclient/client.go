// Package smtpclient is the relay's upstream SMTP client: the commands a
// submission relay needs (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, RSET,
// QUIT), every reply returned as go-smtp's *smtp.SMTPError so it can be
// passed to the app unchanged, and a DATA writer that dot-stuffs in bulk.
//
// Why not go-smtp's client: its DATA goes through net/textproto's dot
// writer, which handles the message one byte at a time; with the front
// end's reader that made the relay cost twice the CPU of the client and the
// server together. Here lines are found with bytes.IndexByte and copied
// whole. Its MAIL also always adds BODY=8BITMIME; this one forwards what the
// app sent.
//
// Out of scope: BDAT and BINARYMIME, LMTP, VRFY/EXPN, and the extensions
// the relay does not offer its apps (REQUIRETLS, RRVS, DELIVERBY,
// MT-PRIORITY).
package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

const (
	// commandTimeout bounds a command without a deadline in its context
	// (RFC 5321 §4.5.3.2: 5 minutes).
	commandTimeout = 5 * time.Minute
	// dataTimeout bounds sending a message and the wait for the reply to
	// its final dot (RFC 5321 allows 10 minutes for the reply alone; a
	// 150 MB message from a slow app needs more).
	dataTimeout = 30 * time.Minute
	bufSize     = 32 << 10
)

// Client is one connection to an SMTP server. It is not safe for concurrent
// use.
type Client struct {
	conn net.Conn
	text *textproto.Reader
	bw   *bufio.Writer
	ext  map[string]string
	buf  []byte // Data's read buffer, kept for the next message
}

// New starts a client on conn: it reads the greeting and says EHLO as
// localName. The context bounds both.
func New(ctx context.Context, conn net.Conn, localName string) (*Client, error) {
	c := &Client{conn: conn}
	c.setConn(conn)
	defer c.deadline(ctx, commandTimeout)()
	if _, err := c.reply(220); err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := c.ehlo(localName); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) setConn(conn net.Conn) {
	c.conn = conn
	c.text = textproto.NewReader(bufio.NewReaderSize(conn, 4096))
	c.bw = bufio.NewWriterSize(conn, bufSize)
}

// deadline sets the connection deadline for the next exchange: ctx's
// deadline, else d from now. When ctx can be cancelled, cancelling it
// interrupts the exchange; the returned function unhooks that. Each
// exchange sets its own deadline, so none is cleared afterwards.
func (c *Client) deadline(ctx context.Context, d time.Duration) (stop func()) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(d)
	}
	c.conn.SetDeadline(dl)
	if ctx.Done() == nil {
		return func() {}
	}
	done := make(chan struct{})
	unhook := context.AfterFunc(ctx, func() {
		defer close(done)
		c.conn.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		if !unhook() {
			// The cancellation already ran or runs now: wait for it, so
			// its deadline cannot land on a later exchange of a session
			// that was handed on.
			<-done
		}
	}
}

func (c *Client) ehlo(localName string) error {
	msg, err := c.cmd(250, "EHLO %s", localName)
	if err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	c.ext = make(map[string]string)
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

// StartTLS upgrades the connection and says EHLO again (RFC 3207 §4.2).
func (c *Client) StartTLS(ctx context.Context, cfg *tls.Config, localName string) error {
	if _, ok := c.ext["STARTTLS"]; !ok {
		return errors.New("server does not offer STARTTLS")
	}
	done := c.deadline(ctx, commandTimeout)
	defer func() { done() }()
	if _, err := c.cmd(220, "STARTTLS"); err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	tc := tls.Client(c.conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	done()
	c.setConn(tc)
	done = c.deadline(ctx, commandTimeout)
	return c.ehlo(localName)
}

// Extension reports whether the server offers ext, and its parameter.
func (c *Client) Extension(ext string) (bool, string) {
	v, ok := c.ext[strings.ToUpper(ext)]
	return ok, v
}

// MaxMessageSize returns the server's SIZE, if it announces one.
func (c *Client) MaxMessageSize() (int64, bool) {
	v, ok := c.ext["SIZE"]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n > 0
}

// Auth runs a SASL exchange (RFC 4954). A refusal is the server's
// *smtp.SMTPError. A client whose Next fails aborts the exchange with "*".
func (c *Client) Auth(ctx context.Context, a gosasl.Client) error {
	defer c.deadline(ctx, commandTimeout)()
	mech, resp, err := a.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if resp != nil {
		line += " " + encodeSASL(resp)
	}
	for {
		if err := c.writeLine(line); err != nil {
			return err
		}
		code, msg, err := c.readReply()
		if err != nil {
			return err
		}
		switch {
		case code == 235:
			return nil
		case code != 334:
			return replyError(code, msg)
		}
		challenge, derr := decodeSASL(msg)
		if derr != nil {
			c.writeLine("*")
			c.readReply()
			return fmt.Errorf("AUTH: malformed challenge: %w", derr)
		}
		resp, err := a.Next(challenge)
		if err != nil {
			c.writeLine("*")
			c.readReply()
			return err
		}
		line = encodeSASL(resp)
	}
}

func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64Std.EncodeToString(b)
}

func decodeSASL(s string) ([]byte, error) {
	if s == "" || s == "=" {
		return []byte{}, nil
	}
	return base64Std.DecodeString(s)
}

// Mail starts a transaction, forwarding the app's parameters the server
// supports (RFC 1652 BODY, RFC 1870 SIZE, RFC 6531 SMTPUTF8, RFC 3461 RET
// and ENVID, RFC 4954 AUTH).
func (c *Client) Mail(ctx context.Context, from string, opts *smtp.MailOptions) error {
	if err := checkLine(from); err != nil {
		return err
	}
	var sb strings.Builder
	sb.WriteString("MAIL FROM:<" + from + ">")
	if opts != nil {
		if opts.Body != "" {
			if _, ok := c.ext[bodyExtension(opts.Body)]; ok {
				sb.WriteString(" BODY=" + string(opts.Body))
			}
		}
		if _, ok := c.ext["SIZE"]; ok && opts.Size > 0 {
			fmt.Fprintf(&sb, " SIZE=%d", opts.Size)
		}
		if opts.UTF8 {
			if _, ok := c.ext["SMTPUTF8"]; !ok {
				return &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
					Message: "The upstream server does not support SMTPUTF8"}
			}
			sb.WriteString(" SMTPUTF8")
		}
		if _, ok := c.ext["DSN"]; ok {
			if opts.Return != "" {
				sb.WriteString(" RET=" + string(opts.Return))
			}
			if opts.EnvelopeID != "" {
				sb.WriteString(" ENVID=" + encodeXtext(opts.EnvelopeID))
			}
		}
		if _, ok := c.ext["AUTH"]; ok && opts.Auth != nil {
			sb.WriteString(" AUTH=" + encodeXtext(*opts.Auth))
		}
	}
	defer c.deadline(ctx, commandTimeout)()
	_, err := c.cmd(250, "%s", sb.String())
	return err
}

func bodyExtension(b smtp.BodyType) string {
	if b == smtp.BodyBinaryMIME {
		return "BINARYMIME"
	}
	return "8BITMIME"
}

// Rcpt adds a recipient, with its DSN parameters when the server supports
// DSN.
func (c *Client) Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error {
	if err := checkLine(to); err != nil {
		return err
	}
	var sb strings.Builder
	sb.WriteString("RCPT TO:<" + to + ">")
	if _, ok := c.ext["DSN"]; ok && opts != nil {
		if len(opts.Notify) > 0 {
			notify := make([]string, len(opts.Notify))
			for i, n := range opts.Notify {
				notify[i] = string(n)
			}
			sb.WriteString(" NOTIFY=" + strings.Join(notify, ","))
		}
		if opts.OriginalRecipient != "" {
			typ := opts.OriginalRecipientType
			if typ == "" {
				typ = smtp.DSNAddressTypeRFC822
			}
			enc := encodeXtext(opts.OriginalRecipient)
			if typ == smtp.DSNAddressTypeUTF8 {
				enc = encodeUTF8Addr(opts.OriginalRecipient, hasKey(c.ext, "SMTPUTF8"))
			}
			sb.WriteString(" ORCPT=" + string(typ) + ";" + enc)
		}
	}
	defer c.deadline(ctx, commandTimeout)()
	_, err := c.cmd(250, "%s", sb.String())
	if err != nil {
		// 251 (will forward) is a success too.
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == 251 {
			return nil
		}
	}
	return err
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// ReadError wraps a failure to read the message being sent, so callers can
// tell the app's side from the server's. When Data returns it, nothing that
// ends the message was sent: the connection must be closed, so the server
// discards the partial message.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "read message: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// Data sends the message read from r (CRLF or LF line ends, not
// dot-stuffed) with DATA and returns the text of the server's final 250
// reply and the number of bytes read from r. The message is streamed.
func (c *Client) Data(ctx context.Context, r io.Reader) (string, int64, error) {
	done := c.deadline(ctx, commandTimeout)
	if _, err := c.cmd(354, "DATA"); err != nil {
		done()
		return "", 0, err
	}
	done()
	// The body may take long on a slow app; each write has its own
	// deadline through the context only.
	done = c.deadline(ctx, dataTimeout)
	defer func() { done() }()
	if c.buf == nil {
		c.buf = make([]byte, bufSize)
	}
	st := &stuffer{w: c.bw, bol: true}
	n, err := copyMessage(st, r, c.buf)
	if err != nil {
		return "", n, err
	}
	// A cancelled exchange never sends the final dot: the message was not
	// meant to be delivered any more.
	if err := ctx.Err(); err != nil {
		return "", n, err
	}
	if err := st.finish(); err != nil {
		return "", n, err
	}
	if err := c.bw.Flush(); err != nil {
		return "", n, err
	}
	code, msg, err := c.readReply()
	if err != nil {
		return "", n, err
	}
	if code != 250 {
		return "", n, replyError(code, msg)
	}
	return msg, n, nil
}

// copyMessage copies r to st through buf, wrapping read failures in
// *ReadError.
func copyMessage(st *stuffer, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			n += int64(m)
			if err := st.write(buf[:m]); err != nil {
				return n, err
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, &ReadError{rerr}
		}
	}
}

// Reset aborts the transaction (RSET).
func (c *Client) Reset(ctx context.Context) error {
	defer c.deadline(ctx, commandTimeout)()
	_, err := c.cmd(250, "RSET")
	return err
}

// Noop sends NOOP, to check the connection is alive.
func (c *Client) Noop(ctx context.Context) error {
	defer c.deadline(ctx, commandTimeout)()
	_, err := c.cmd(250, "NOOP")
	return err
}

// Quit says QUIT and closes the connection.
func (c *Client) Quit(ctx context.Context) error {
	done := c.deadline(ctx, commandTimeout)
	_, err := c.cmd(221, "QUIT")
	done()
	c.conn.Close()
	return err
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

// cmd sends a command and reads its reply; a reply other than want is an
// *smtp.SMTPError.
func (c *Client) cmd(want int, format string, args ...any) (string, error) {
	if err := c.writeLine(fmt.Sprintf(format, args...)); err != nil {
		return "", err
	}
	return c.reply(want)
}

func (c *Client) writeLine(line string) error {
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	return c.bw.Flush()
}

func (c *Client) reply(want int) (string, error) {
	code, msg, err := c.readReply()
	if err != nil {
		return "", err
	}
	if code != want {
		return "", replyError(code, msg)
	}
	return msg, nil
}

// readReply reads a (multi-line) reply. A network failure is returned as
// is; a malformed reply as a protocol error.
func (c *Client) readReply() (int, string, error) {
	code, msg, err := c.text.ReadResponse(0)
	if err != nil {
		var pe textproto.ProtocolError
		if errors.As(err, &pe) {
			return 0, "", fmt.Errorf("malformed reply from the server: %w", err)
		}
		return 0, "", err
	}
	return code, msg, nil
}

// replyError makes a reply into go-smtp's error type, splitting off the
// RFC 3463 enhanced status code (repeated on each line, RFC 2034).
func replyError(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return se
	}
	if enh, ok := parseEnhanced(first); ok {
		se.EnhancedCode = enh
		se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	}
	return se
}

func parseEnhanced(s string) (smtp.EnhancedCode, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, false
	}
	var e smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return smtp.EnhancedCode{}, false
		}
		e[i] = n
	}
	return e, true
}

func checkLine(s string) error {
	if strings.ContainsAny(s, "\r\n") {
		return errors.New("smtp: a line must not contain CR or LF")
	}
	return nil
}

// encodeXtext encodes per RFC 3461 §4.
func encodeXtext(raw string) string {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		if ch >= '!' && ch <= '~' && ch != '+' && ch != '=' {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "+%02X", ch)
		}
	}
	return b.String()
}

// encodeUTF8Addr encodes per RFC 6533 §3: utf-8-addr-unitext when the
// server speaks SMTPUTF8, utf-8-addr-xtext otherwise.
func encodeUTF8Addr(raw string, unitext bool) string {
	var b strings.Builder
	for _, ch := range raw {
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=':
			b.WriteRune(ch)
		case ch > 0x7f && unitext:
			b.WriteRune(ch)
		default:
			fmt.Fprintf(&b, `\x{%X}`, ch)
		}
	}
	return b.String()
}
