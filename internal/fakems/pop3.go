package fakems

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// POP3 as outlook.office365.com:995 answers it: implicit TLS, AUTH XOAUTH2
// after an empty "+ " challenge (Microsoft's documented exchange), Basic
// authentication (USER/PASS, AUTH PLAIN) refused, and the RFC 1939
// TRANSACTION commands over the mailbox's INBOX: the messages of the IMAP
// store that came in through AppendIMAP or an IMAP APPEND, so tests seed
// POP3 mail as they seed IMAP mail. DELE takes effect at QUIT (the UPDATE
// state) by expunging the messages from the IMAP INBOX too.

// Exchange Online's POP3 replies.
const (
	pop3Greeting     = "+OK The Microsoft Exchange POP3 service is ready. [" + exchangeHost + "]"
	pop3AuthOK       = "+OK User successfully authenticated."
	pop3AuthFailed   = "-ERR Authentication failure: unknown user name or bad password."
	pop3BasicRefused = "-ERR Authentication failure: basic authentication is disabled."
	pop3Protocol     = "-ERR Protocol error."
	pop3NoSuchMsg    = "-ERR The specified message is out of range."
	pop3Bye          = "+OK Microsoft Exchange Server POP3 server signing off."
	pop3NotAuthed    = "-ERR Command is not valid in this state."
)

const (
	// pop3IdleTimeout is Exchange's: a POP3 client silent this long is
	// disconnected (RFC 1939 §3 asks for at least 10 minutes).
	pop3IdleTimeout = 10 * time.Minute
	// pop3MaxLine bounds a command line; Exchange accepts long AUTH
	// responses (a 3 KB token is about 4 KB of base64).
	pop3MaxLine = 16 << 10
	// pop3WriteBuffer is the buffer RETR streams through.
	pop3WriteBuffer = 64 << 10
)

// serveTLSPOP3 accepts POP3 connections until the listener is closed.
func (s *Server) servePOP3(ln net.Listener) error {
	tl := tls.NewListener(ln, s.pki.serverTLSConfig())
	for {
		c, err := tl.Accept()
		if err != nil {
			return err
		}
		sock := c.(*tls.Conn).NetConn()
		if !s.conns.add(sock, false) {
			continue
		}
		s.pop3Conns.Add(1)
		go func() {
			defer s.pop3Conns.Done()
			defer s.conns.remove(sock, false)
			defer sock.Close()
			ps := &pop3Session{s: s, c: c, br: bufio.NewReader(c), bw: bufio.NewWriterSize(c, pop3WriteBuffer),
				log: s.log.With("server", "pop3", "cid", randString(8), "remote", c.RemoteAddr().String())}
			ps.serve()
		}()
	}
}

// pop3Session is one POP3 connection.
type pop3Session struct {
	s   *Server
	c   net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer
	log *slog.Logger

	mem   *imapmemserver.UserSession // INBOX selected; nil until AUTH succeeds
	msgs  []pop3Message
	moved bool // a message is marked deleted
}

// pop3Message is one message of the maildrop, numbered from 1 in order.
type pop3Message struct {
	uid     imap.UID
	body    []byte
	deleted bool
}

func (ps *pop3Session) serve() {
	defer func() {
		if ps.mem != nil {
			ps.mem.Close()
		}
	}()
	ps.reply(pop3Greeting)
	for {
		ps.c.SetReadDeadline(time.Now().Add(pop3IdleTimeout))
		line, err := readPOP3Line(ps.br)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				ps.log.Debug("pop3: read failed", "err", err)
			}
			return
		}
		name, arg, _ := strings.Cut(line, " ")
		if ps.handle(strings.ToUpper(name), arg) {
			return
		}
	}
}

// handle runs one command; true ends the session.
func (ps *pop3Session) handle(name, arg string) bool {
	switch name {
	case "CAPA":
		ps.reply("+OK", "TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER", ".")
		return false
	case "NOOP":
		ps.reply("+OK")
		return false
	case "QUIT":
		ps.update()
		ps.reply(pop3Bye)
		return true
	}
	if ps.mem == nil {
		return ps.authorization(name, arg)
	}
	switch name {
	case "STAT":
		n, size := 0, 0
		for _, m := range ps.msgs {
			if !m.deleted {
				n++
				size += len(m.body)
			}
		}
		ps.reply(fmt.Sprintf("+OK %d %d", n, size))
	case "LIST", "UIDL":
		ps.list(name, arg)
	case "RETR":
		if m := ps.message(arg); m != nil {
			ps.write(fmt.Sprintf("+OK %d octets\r\n", len(m.body)))
			ps.writeBody(m.body, -1)
		}
	case "TOP":
		n, lines, _ := strings.Cut(arg, " ")
		k, err := strconv.Atoi(lines)
		if err != nil || k < 0 {
			ps.reply(pop3Protocol)
			break
		}
		if m := ps.message(n); m != nil {
			ps.write("+OK\r\n")
			ps.writeBody(m.body, k)
		}
	case "DELE":
		if m := ps.message(arg); m != nil {
			m.deleted, ps.moved = true, true
			ps.reply("+OK")
		}
	case "RSET":
		for i := range ps.msgs {
			ps.msgs[i].deleted = false
		}
		ps.moved = false
		ps.reply("+OK")
	default:
		ps.reply(pop3Protocol)
	}
	return false
}

// authorization runs a command of the AUTHORIZATION state.
func (ps *pop3Session) authorization(name, arg string) bool {
	switch name {
	case "USER":
		ps.reply("+OK")
	case "PASS":
		ps.log.Info("pop3: basic auth refused")
		ps.reply(pop3BasicRefused)
	case "AUTH":
		mech, ir, _ := strings.Cut(arg, " ")
		switch strings.ToUpper(mech) {
		case sasl.XOAuth2:
		case "PLAIN":
			ps.log.Info("pop3: basic auth refused")
			ps.reply(pop3BasicRefused)
			return false
		default:
			ps.reply(pop3Protocol)
			return false
		}
		if ir == "" {
			ps.reply("+ ")
			line, err := readPOP3Line(ps.br)
			if err != nil {
				return true
			}
			ir = line
		}
		ps.loginXOAuth2(ir)
	default:
		ps.reply(pop3NotAuthed)
	}
	return false
}

// loginXOAuth2 is Exchange's decision on a POP3 XOAUTH2 login. An app-only
// token of an app without FullAccess is refused at login (POP3 has no
// "authenticated but not connected" state as IMAP does).
func (ps *pop3Session) loginXOAuth2(b64 string) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		ps.reply(pop3AuthFailed)
		return
	}
	user, token, err := sasl.ParseXOAuth2Response(raw)
	if err != nil {
		ps.reply(pop3AuthFailed)
		return
	}
	m, at, reason := ps.s.checkBearer(user, token, scopePOP, rolePOP)
	if m == nil {
		ps.log.Info("pop3: XOAUTH2 refused", "user", user, "reason", reason)
		ps.reply(pop3AuthFailed)
		return
	}
	msgs, mem, err := ps.s.maildrop(m)
	if err != nil {
		ps.log.Error("pop3: maildrop", "err", err)
		ps.reply("-ERR [SYS/TEMP] The mailbox cannot be opened.")
		return
	}
	ps.msgs, ps.mem = msgs, mem
	ps.log = ps.log.With("user", lower(user))
	ps.log.Info("pop3: XOAUTH2 accepted", "client_id", at.clientID, "app_only", at.appOnly(), "messages", len(msgs))
	ps.reply(pop3AuthOK)
}

// maildrop opens m's INBOX for a POP3 session: the messages whose bytes the
// fake knows, in INBOX order.
func (s *Server) maildrop(m *mailbox) ([]pop3Message, *imapmemserver.UserSession, error) {
	mem := imapmemserver.NewUserSession(m.imap)
	if _, err := mem.Select("INBOX", nil); err != nil {
		return nil, nil, fmt.Errorf("select INBOX: %w", err)
	}
	data, err := mem.Search(imapserver.NumKindUID, &imap.SearchCriteria{}, &imap.SearchOptions{})
	if err != nil {
		mem.Close()
		return nil, nil, fmt.Errorf("search INBOX: %w", err)
	}
	uids, _ := data.All.(imap.UIDSet)
	var msgs []pop3Message
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range uids {
		for uid := r.Start; uid <= r.Stop && uid != 0; uid++ {
			if b, ok := m.inbox[uid]; ok {
				msgs = append(msgs, pop3Message{uid: uid, body: b})
			}
		}
	}
	return msgs, mem, nil
}

// update is the UPDATE state (RFC 1939 §6): the messages marked deleted
// are expunged from INBOX.
func (ps *pop3Session) update() {
	if ps.mem == nil || !ps.moved {
		return
	}
	var set imap.UIDSet
	for _, m := range ps.msgs {
		if m.deleted {
			set.AddNum(m.uid)
		}
	}
	flags := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
	if err := ps.mem.Store(nil, set, flags, nil); err != nil {
		ps.log.Error("pop3: mark deleted", "err", err)
		return
	}
	if err := ps.mem.Expunge(nil, &set); err != nil {
		ps.log.Error("pop3: expunge", "err", err)
	}
}

// list answers LIST and UIDL, for one message or all (RFC 1939 §5, §7).
// The unique id is the SHA-256 of the message's UID and bytes, stable for
// the message as Exchange's are.
func (ps *pop3Session) list(name, arg string) {
	entry := func(i int, m *pop3Message) string {
		if name == "LIST" {
			return fmt.Sprintf("%d %d", i+1, len(m.body))
		}
		h := sha256.New()
		fmt.Fprintf(h, "%d\x00", m.uid)
		h.Write(m.body)
		return fmt.Sprintf("%d %s", i+1, hex.EncodeToString(h.Sum(nil))[:32])
	}
	if arg != "" {
		if m := ps.message(arg); m != nil {
			n, _ := strconv.Atoi(arg)
			ps.reply("+OK " + entry(n-1, m))
		}
		return
	}
	lines := []string{"+OK"}
	for i := range ps.msgs {
		if !ps.msgs[i].deleted {
			lines = append(lines, entry(i, &ps.msgs[i]))
		}
	}
	ps.reply(append(lines, ".")...)
}

// message is the message numbered arg, or nil after a -ERR.
func (ps *pop3Session) message(arg string) *pop3Message {
	n, err := strconv.Atoi(strings.TrimSpace(arg))
	if err != nil || n < 1 || n > len(ps.msgs) || ps.msgs[n-1].deleted {
		ps.reply(pop3NoSuchMsg)
		return nil
	}
	return &ps.msgs[n-1]
}

// writeBody sends a message (its header and the first lines of its body
// when lines >= 0, for TOP) dot-stuffed, and the terminating ".".
func (ps *pop3Session) writeBody(b []byte, lines int) {
	inBody := false
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		line := b
		if i >= 0 {
			line = b[:i+1]
		}
		b = b[len(line):]
		if inBody {
			if lines == 0 {
				break
			}
			if lines > 0 {
				lines--
			}
		} else if len(bytes.TrimRight(line, "\r\n")) == 0 {
			inBody = true
		}
		if line[0] == '.' {
			ps.bw.WriteByte('.')
		}
		ps.bw.Write(line)
		if line[len(line)-1] != '\n' {
			ps.bw.WriteString("\r\n")
		}
	}
	ps.write(".\r\n")
}

// reply sends lines, each with CRLF, and flushes.
func (ps *pop3Session) reply(lines ...string) {
	for _, l := range lines {
		ps.bw.WriteString(l)
		ps.bw.WriteString("\r\n")
	}
	ps.bw.Flush()
}

func (ps *pop3Session) write(s string) {
	ps.bw.WriteString(s)
	ps.bw.Flush()
}

// readPOP3Line reads one command line without its CRLF.
func readPOP3Line(br *bufio.Reader) (string, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > pop3MaxLine {
			return "", errors.New("line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(line), "\r\n"), nil
	}
}
