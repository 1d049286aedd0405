package fakems

import (
	"io"
	"log/slog"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	gosasl "github.com/emersion/go-sasl"

	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// newIMAPServer configures go-imap like outlook.office365.com:993. Every
// connection is TLS (the listener is a tls.Listener), but behind the
// rewriting wrapper go-imap cannot see that, hence InsecureAuth.
func (s *Server) newIMAPServer() *imapserver.Server {
	return imapserver.New(&imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			ic, _ := c.NetConn().(*imapConn)
			return &imapSession{
				s:    s,
				conn: ic,
				log:  s.log.With("server", "imap", "cid", randString(8), "remote", c.NetConn().RemoteAddr().String()),
			}, nil, nil
		},
		Caps: imap.CapSet{
			imap.CapIMAP4rev1:   {},
			imap.CapUIDPlus:     {},
			imap.CapMove:        {},
			imap.CapNamespace:   {},
			imap.CapChildren:    {},
			imap.CapLiteralPlus: {},
		},
		Logger:       slogPrintf{s.log.With("server", "imap")},
		InsecureAuth: true,
	})
}

// imapSession delegates to imapmemserver once logged in. Each method checks
// for the "authenticated but not connected" state first.
type imapSession struct {
	s            *Server
	conn         *imapConn // its Close is told when the session ends (lifetime.go)
	log          *slog.Logger
	mem          *imapmemserver.UserSession // nil until AUTHENTICATE succeeds
	mbox         *mailbox                   // the mailbox of mem
	notConnected bool
}

var (
	_ imapserver.SessionSASL      = (*imapSession)(nil)
	_ imapserver.SessionNamespace = (*imapSession)(nil)
	_ imapserver.SessionMove      = (*imapSession)(nil)
)

// AuthenticateMechanisms lists what Exchange advertises. PLAIN is there
// only to be refused: basic authentication is off.
func (is *imapSession) AuthenticateMechanisms() []string { return []string{"PLAIN", sasl.XOAuth2} }

func (is *imapSession) Authenticate(mech string) (gosasl.Server, error) {
	switch mech {
	case sasl.XOAuth2:
		return &xoauth2Server{check: is.loginXOAuth2}, nil
	case "PLAIN":
		return gosasl.NewPlainServer(func(_, user, _ string) error {
			is.log.Info("imap: basic auth refused", "user", user)
			return imapAuthFailed
		}), nil
	}
	return nil, imapAuthFailed
}

// loginXOAuth2 is Exchange's decision on an IMAP XOAUTH2 login.
func (is *imapSession) loginXOAuth2(user, token string) error {
	m, at, reason := is.s.checkBearer(user, token, scopeIMAP, roleIMAP)
	if m == nil {
		if reason == reasonNotGranted && is.s.opts.IMAPNotConnected {
			// Exchange lets the login through and fails every command.
			is.log.Info("imap: XOAUTH2 accepted but not connected", "user", user, "reason", reason)
			is.notConnected = true
			return nil
		}
		is.log.Info("imap: XOAUTH2 refused", "user", user, "reason", reason)
		return imapAuthFailed
	}
	is.mem, is.mbox = imapmemserver.NewUserSession(m.imap), m
	is.log = is.log.With("user", lower(user))
	is.log.Info("imap: XOAUTH2 accepted", "client_id", at.clientID, "app_only", at.appOnly())
	return nil
}

func (is *imapSession) Login(username, _ string) error {
	is.log.Info("imap: LOGIN refused", "user", username)
	return imapLoginFailed
}

func (is *imapSession) Close() error {
	is.log.Debug("imap: session ended")
	if is.conn != nil && is.conn.track != nil {
		is.conn.track.sessionEnded()
	}
	if is.mem != nil {
		return is.mem.Close()
	}
	return nil
}

// ready reports whether commands may reach the mailbox.
func (is *imapSession) ready() error {
	if is.notConnected || is.mem == nil {
		return imapNotConnected
	}
	return nil
}

func (is *imapSession) Select(mailbox string, options *imap.SelectOptions) (*imap.SelectData, error) {
	if err := is.ready(); err != nil {
		return nil, err
	}
	return is.mem.Select(mailbox, options)
}

func (is *imapSession) Create(mailbox string, options *imap.CreateOptions) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Create(mailbox, options)
}

func (is *imapSession) Delete(mailbox string) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Delete(mailbox)
}

func (is *imapSession) Rename(mailbox, newName string, options *imap.RenameOptions) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Rename(mailbox, newName, options)
}

func (is *imapSession) Subscribe(mailbox string) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Subscribe(mailbox)
}

func (is *imapSession) Unsubscribe(mailbox string) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Unsubscribe(mailbox)
}

func (is *imapSession) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.List(w, ref, patterns, options)
}

func (is *imapSession) Status(mailbox string, options *imap.StatusOptions) (*imap.StatusData, error) {
	if err := is.ready(); err != nil {
		return nil, err
	}
	return is.mem.Status(mailbox, options)
}

func (is *imapSession) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	if err := is.ready(); err != nil {
		return nil, err
	}
	// Read whole so that an INBOX message is POP3's too (appendTo).
	b, err := io.ReadAll(io.LimitReader(r, r.Size()))
	if err != nil {
		return nil, err
	}
	var data *imap.AppendData
	err = is.s.appendTo(is.mbox.address, is.mbox.imap, mailbox, b, options, &data)
	return data, err
}

// Poll runs after NOOP and most commands; an error here would end the
// connection, so the not-connected state answers nothing instead.
func (is *imapSession) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if is.ready() != nil {
		return nil
	}
	return is.mem.Poll(w, allowExpunge)
}

// idlePoll is how often an IDLE session looks for changes.
const idlePoll = 50 * time.Millisecond

// Idle polls for changes instead of using imapmemserver's notification:
// imapserver sends "+ idling" before the session registers for updates, and
// a change made in between (another connection's APPEND right after the
// client saw the continuation) would not be pushed until the next change.
// Polling pushes it within idlePoll, as Exchange does within a moment.
func (is *imapSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	if err := is.ready(); err != nil {
		return err
	}
	t := time.NewTicker(idlePoll)
	defer t.Stop()
	for {
		if err := is.mem.Poll(w, true); err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		case <-t.C:
		}
	}
}

func (is *imapSession) Unselect() error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Unselect()
}

func (is *imapSession) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Expunge(w, uids)
}

func (is *imapSession) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	if err := is.ready(); err != nil {
		return nil, err
	}
	return is.mem.Search(kind, criteria, options)
}

func (is *imapSession) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Fetch(w, numSet, options)
}

func (is *imapSession) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Store(w, numSet, flags, options)
}

func (is *imapSession) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	if err := is.ready(); err != nil {
		return nil, err
	}
	return is.mem.Copy(numSet, dest)
}

func (is *imapSession) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	if err := is.ready(); err != nil {
		return err
	}
	return is.mem.Move(w, numSet, dest)
}

func (is *imapSession) Namespace() (*imap.NamespaceData, error) {
	if err := is.ready(); err != nil {
		return nil, err
	}
	return is.mem.Namespace()
}
