// Package pop3 is oauthrelay's POP3 front end. Before authentication the
// relay speaks POP3 itself (RFC 1939): the greeting, CAPA (RFC 2449, with
// RESP-CODES and AUTH-RESP-CODE), USER and PASS, AUTH PLAIN with or without
// an initial response (RFC 5034, RFC 4616), STLS (RFC 2595), NOOP and QUIT.
// After the app's local login it connects to the provider's POP3 server,
// logs in there with AUTH XOAUTH2 (upstream.POP3), answers the app's PASS or
// AUTH with +OK, and from then on copies bytes both ways without parsing
// them: every TRANSACTION command (STAT, LIST, UIDL, RETR, TOP, DELE, RSET,
// QUIT, and CAPA after login) is the upstream's.
//
// Failed logins are answered with RFC 3206 response codes: a wrong password,
// a refused token or an account that needs an administrator -ERR [AUTH], an
// unavailable token endpoint or upstream -ERR [SYS/TEMP]; the reason is
// logged, never sent.
//
// Before login the TRANSACTION commands and APOP get -ERR and the session
// goes on; a line that is not POP3 at all (an HTTP request sent to the port)
// ends the connection. The server, the connection's I/O, the login path and
// the copy are proxy/preauth's, shared with the IMAP front end; this package
// holds POP3's commands and replies.
//
// Out of scope: APOP (it needs the password in the clear on the relay's
// side of a digest only the app knows), RFC 6856 UTF8 and LANG before login,
// and connection pooling upstream.
package pop3

import (
	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/proxy"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = preauth.ErrServerClosed

// Server is the POP3 front end of one listener: a preauth.Server (Serve,
// Shutdown, Close) serving POP3 sessions.
type Server = preauth.Server

// New builds the server for listener lc. With lc.TLS "starttls" or
// "implicit" it loads the certificate.
func New(relay *proxy.Relay, lc config.Listener) (*Server, error) {
	return preauth.NewServer(relay, lc, preauth.Protocol{
		Proto: events.POP3, Busy: busyLine, Serve: func(c *preauth.Conn) { newSession(c).serve() },
	})
}

// busyLine greets a connection that a proxy.Listener refuses because too
// many have not logged in: a negative greeting, with RFC 3206's code for a
// temporary condition.
const busyLine = "-ERR [SYS/TEMP] Too many connections, try again later"
