package imap

import (
	"log/slog"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/splice"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// closeGrace is how long the second direction of the copy may go on after
// the first one ended.
const closeGrace = splice.DefaultCloseGrace

// pipe copies bytes between the app and the logged-in upstream until both
// directions end (splice.Pipe).
func (s *session) pipe(acct *proxy.Account, up *upstream.IMAPSession, log *slog.Logger) {
	s.mu.Lock()
	s.proxying = true
	client := s.conn
	s.mu.Unlock()
	fromApp := splice.TakeBuffered(s.br)
	s.br, s.cr.br = nil, nil
	r := splice.Pipe(client, up.Conn, fromApp, up.Pending, splice.Options{CloseGrace: closeGrace, Close: s.close, Logger: log})
	up.Pending = nil
	s.srv.relay.Observer().Transferred(acct.Info(), r.In, r.Out)
	log.Info("session ended", "bytes_in", r.In, "bytes_out", r.Out, "closed_first", string(r.ClosedFirst),
		"duration", r.Duration.Round(time.Millisecond).String())
}
