package fakems

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Exchange's reply texts differ from go-smtp's and go-imap's, and go-smtp
// hard-codes some of them (the greeting, 235, the MAIL/RCPT 250s). The
// wrappers here sit between the libraries and the socket and rewrite reply
// lines. Server replies are small and line-oriented (message data only
// flows in), so rewriting whole lines is safe.
//
// For SMTP the wrapper must sit above TLS to see the replies after STARTTLS,
// so it performs STARTTLS itself: go-smtp runs without a TLSConfig (and with
// AllowInsecureAuth), the wrapper intercepts the STARTTLS command, upgrades
// the socket underneath, and edits the EHLO reply so clients see STARTTLS
// before and AUTH only after it, as from Exchange. The session asks the
// wrapper whether TLS is up before it allows AUTH or MAIL.

const tlsHandshakeTimeout = 10 * time.Second

// smtpConn is a server-side SMTP connection with its own STARTTLS.
type smtpConn struct {
	net.Conn // the current transport: the TCP socket, then the *tls.Conn
	raw      net.Conn
	cfg      *tls.Config
	conns    *connSet
	lat      latency
	fault    func(SMTPFault) bool // Server.takeFault

	mu       sync.Mutex // guards isTLS and the write side
	isTLS    bool
	pending  []byte // plaintext input read but not yet handed to go-smtp
	outLine  []byte // partial reply line
	greeted  bool
	midReply bool   // the last line written continues a multi-line reply
	ehloHost string // the host the fake calls itself
}

type smtpListener struct {
	net.Listener
	cfg   *tls.Config
	conns *connSet
	lat   latency
	fault func(SMTPFault) bool
}

// latency is the delays Options.SMTPLoginLatency and SMTPReplyLatency add
// to the replies, and how to wait them out (Server.pause: Close ends the
// wait).
type latency struct {
	greeting, reply time.Duration
	pause           func(time.Duration)
}

func (l smtpListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.fault(FaultBeforeGreeting) {
			_ = reset(c)
			continue
		}
		if !l.conns.add(c, false) {
			return nil, net.ErrClosed
		}
		return &smtpConn{Conn: c, raw: c, cfg: l.cfg, conns: l.conns, lat: l.lat, fault: l.fault, ehloHost: exchangeHost}, nil
	}
}

func (s *Server) wrapSMTPListener(ln net.Listener) net.Listener {
	lat := latency{greeting: s.opts.SMTPLoginLatency, reply: s.opts.SMTPReplyLatency, pause: s.pause}
	return smtpListener{Listener: ln, cfg: s.pki.serverTLSConfig(), conns: s.conns, lat: lat, fault: s.takeFault}
}

// TLS reports whether STARTTLS has completed.
func (c *smtpConn) TLS() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isTLS
}

// Read hands go-smtp the client's bytes. Before TLS it does so one line at a
// time so it can catch STARTTLS: go-smtp asks for more input only after it
// has answered every earlier command, so at that point the upgrade is in
// order.
func (c *smtpConn) Read(p []byte) (int, error) {
	if c.TLS() {
		return c.Conn.Read(p)
	}
	for {
		if i := bytes.IndexByte(c.pending, '\n'); i >= 0 {
			line := c.pending[:i+1]
			if strings.EqualFold(strings.TrimSpace(string(line)), "STARTTLS") {
				rest := c.pending[i+1:]
				c.pending = nil
				if err := c.startTLS(rest); err != nil {
					return 0, err
				}
				return c.Conn.Read(p)
			}
			n := copy(p, line)
			c.pending = c.pending[n:]
			return n, nil
		}
		if len(c.pending) > 64<<10 {
			// Not a command line; pass it on as it is.
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		}
		buf := make([]byte, 4096)
		n, err := c.raw.Read(buf)
		c.pending = append(c.pending, buf[:n]...)
		if err != nil {
			if len(c.pending) > 0 {
				n := copy(p, c.pending)
				c.pending = c.pending[n:]
				return n, nil
			}
			return 0, err
		}
	}
}

func (c *smtpConn) startTLS(early []byte) error {
	c.lat.pause(c.lat.reply)
	if _, err := c.raw.Write([]byte("220 2.0.0 SMTP server ready\r\n")); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	switch {
	case c.fault(FaultDuringSTARTTLS):
		_ = reset(c.raw)
		return errFault
	case c.fault(FaultTLSHandshake):
		_, _ = c.raw.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
		_ = c.raw.Close()
		return errFault
	}
	tc := tls.Server(&prefixConn{Conn: c.raw, prefix: early}, c.cfg)
	_ = c.raw.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("starttls handshake: %w", err)
	}
	_ = c.raw.SetDeadline(time.Time{})
	c.mu.Lock()
	c.Conn, c.isTLS = tc, true
	c.mu.Unlock()
	return nil
}

// Close, and the deadlines, act on the socket, which also ends or times out
// TLS on top of it; this avoids racing with the switch of transport.
func (c *smtpConn) Close() error {
	c.conns.remove(c.raw, false)
	return c.raw.Close()
}
func (c *smtpConn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *smtpConn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *smtpConn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// Write rewrites go-smtp's reply lines into Exchange's.
func (c *smtpConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outLine = append(c.outLine, p...)
	var out []byte
	// The delay is a reply's, not a line's: go-smtp writes each line of
	// a multi-line reply (EHLO's) on its own.
	delay := time.Duration(0)
	switch {
	case !c.greeted:
		delay = c.lat.greeting
	case !c.midReply:
		delay = c.lat.reply
	}
	for {
		i := bytes.Index(c.outLine, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := string(c.outLine[:i])
		c.outLine = c.outLine[i+2:]
		// "250-" continues a reply, "250 " ends it (RFC 5321 §4.2.1).
		c.midReply = len(line) > 3 && line[3] == '-'
		if l, keep := c.rewrite(line); keep {
			out = append(out, l...)
			out = append(out, "\r\n"...)
		}
	}
	if len(out) > 0 {
		// go-smtp writes each reply from the connection's one goroutine,
		// which also reads: holding mu while waiting blocks no one.
		if delay > 0 {
			c.lat.pause(delay)
		}
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// rewrite maps one reply line; keep is false to drop it. Called with mu held.
func (c *smtpConn) rewrite(line string) (string, bool) {
	if !c.greeted && strings.HasPrefix(line, "220 ") {
		c.greeted = true
		return fmt.Sprintf("220 %s Microsoft ESMTP MAIL Service ready at %s", c.ehloHost, time.Now().UTC().Format(time.RFC1123Z)), true
	}
	switch {
	case strings.HasPrefix(line, "250-Hello "), strings.HasPrefix(line, "250 Hello "):
		return line[:4] + c.ehloHost + " Hello [" + hostOf(c.raw.RemoteAddr()) + "]", true
	case strings.HasPrefix(line, "250-AUTH "):
		if !c.isTLS {
			return "250-STARTTLS", true
		}
	case strings.HasPrefix(line, "235 "):
		return "235 2.7.0 Authentication successful", true
	case strings.HasPrefix(line, "250 2.0.0 Roger, accepting mail from"):
		return "250 2.1.0 Sender OK", true
	case strings.HasPrefix(line, "250 2.0.0 I'll make sure"):
		return "250 2.1.5 Recipient OK", true
	case strings.HasPrefix(line, "354 "):
		return "354 Start mail input; end with <CRLF>.<CRLF>", true
	case strings.HasPrefix(line, "221 "):
		return "221 2.0.0 Service closing transmission channel", true
	case strings.HasPrefix(line, "250 2.0.0 Session reset"):
		return "250 2.0.0 Resetting", true
	case strings.HasPrefix(line, "552 5.3.4 Max message size exceeded"):
		return "552 5.3.4 Message size exceeds fixed maximum message size", true
	}
	return line, true
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// prefixConn replays bytes read ahead before the socket's own.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// imapConn rewrites go-imap's greeting and AUTHENTICATE success into
// Exchange's, and answers ID (RFC 2971) before login, which go-imap does not
// know and would answer with BYE. After login it gets out of the way and
// passes everything through untouched (APPEND and FETCH may be large).
type imapConn struct {
	net.Conn
	mu      sync.Mutex
	done    bool   // logged in: no more rewriting
	outLine []byte // partial reply line
	pending []byte // input read but not yet handed to go-imap
	track   *imapTracking
}

// Read hands go-imap the client's input a line at a time until login,
// answering ID commands itself. go-imap reads only when it waits for a
// command, so the answer cannot interleave with its replies.
func (c *imapConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		done := c.done
		c.mu.Unlock()
		if len(c.pending) == 0 && done {
			return c.Conn.Read(p)
		}
		if i := bytes.IndexByte(c.pending, '\n'); i >= 0 || done || len(c.pending) > 64<<10 {
			end := len(c.pending)
			if i >= 0 && !done {
				end = i + 1
			}
			line := c.pending[:end]
			if !done {
				if tag, ok := idCommand(line); ok {
					c.pending = c.pending[end:]
					if err := c.writeRaw("* ID NIL\r\n" + tag + " OK ID completed.\r\n"); err != nil {
						return 0, err
					}
					continue
				}
			}
			n := copy(p, line)
			c.pending = c.pending[n:]
			return n, nil
		}
		buf := make([]byte, 4096)
		n, err := c.Conn.Read(buf)
		c.pending = append(c.pending, buf[:n]...)
		if err != nil && len(c.pending) == 0 {
			return 0, err
		}
		if err != nil {
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		}
	}
}

// idCommand reports whether line is "<tag> ID ...".
func idCommand(line []byte) (string, bool) {
	f := strings.Fields(string(line))
	if len(f) >= 2 && strings.EqualFold(f[1], "ID") {
		return f[0], true
	}
	return "", false
}

func (c *imapConn) writeRaw(s string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.Conn.Write([]byte(s))
	return err
}

// imapListener accepts on the TCP listener and wraps each connection in
// TLS and an imapConn (tls.NewListener would hide the socket, which Close
// must reach).
type imapListener struct {
	net.Listener
	cfg   *tls.Config
	conns *connSet
}

func (l imapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !l.conns.add(c, true) {
		return nil, net.ErrClosed
	}
	return &imapConn{Conn: tls.Server(c, l.cfg), track: &imapTracking{set: l.conns, sock: c}}, nil
}

func (s *Server) wrapIMAPListener(ln net.Listener) net.Listener {
	return imapListener{Listener: ln, cfg: s.pki.serverTLSConfig(), conns: s.conns}
}

func (c *imapConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done && len(c.outLine) == 0 {
		return c.Conn.Write(p)
	}
	c.outLine = append(c.outLine, p...)
	var out []byte
	for !c.done {
		i := bytes.Index(c.outLine, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := string(c.outLine[:i])
		c.outLine = c.outLine[i+2:]
		out = append(out, c.rewrite(line)...)
		out = append(out, "\r\n"...)
	}
	if c.done {
		out = append(out, c.outLine...)
		c.outLine = nil
	}
	if len(out) > 0 {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// imapGreeting is Exchange's, whose bracketed part is the base64 (UTF-16)
// of the back-end server name.
const imapGreeting = "* OK The Microsoft Exchange IMAP4 service is ready. [UwBOADQAUABSADAAMgAwADEAQwBBADAAMAA0ADEALgBuAGEAbQBwAHIAZAAwADIALgBwAHIAbwBkAC4AbwB1AHQAbABvAG8AawAuAGMAbwBtAA==]"

func (c *imapConn) rewrite(line string) string {
	if strings.HasPrefix(line, "* OK ") && strings.HasSuffix(line, "IMAP server ready") {
		return imapGreeting
	}
	tag, rest, _ := strings.Cut(line, " ")
	if strings.HasPrefix(rest, "OK ") && strings.HasSuffix(rest, " authentication successful") {
		c.done = true
		return tag + " OK AUTHENTICATE completed."
	}
	return line
}
