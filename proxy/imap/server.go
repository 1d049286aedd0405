// Package imap is oauthrelay's IMAP front end. Before authentication the
// proxy speaks IMAP itself: the greeting, CAPABILITY, NOOP, LOGOUT, ID,
// STARTTLS, LOGIN (atoms, quoted strings, synchronising and
// non-synchronising literals) and AUTHENTICATE PLAIN (with or without
// SASL-IR, RFC 4959). After the app's local login it connects to the
// provider's IMAP server, logs in there with AUTHENTICATE XOAUTH2, answers
// the app's LOGIN or AUTHENTICATE ("LOGIN completed") with the upstream's
// capabilities, and from then on copies bytes both ways without parsing
// them, so every extension the upstream offers (IDLE, ID, QUOTA, CONDSTORE,
// SORT, THREAD, ...) reaches the app unchanged.
//
// Before login, other IMAP commands get BAD; a command that is not IMAP at
// all (an HTTP request sent to the port) ends the connection with BYE.
//
// The server, the connection's I/O before login, the login path and the
// copy are proxy/preauth's, shared with the POP3 front end; this package
// holds IMAP's commands and replies.
//
// Out of scope: running any other command before login, COMPRESS or other
// transformations of the stream after login (the byte copy passes them
// through untouched), and connection pooling upstream.
package imap

import (
	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/proxy"
	"github.com/oauthrelay/oauthrelay/proxy/preauth"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = preauth.ErrServerClosed

// Server is the IMAP front end of one listener: a preauth.Server (Serve,
// Shutdown, Close) serving IMAP sessions.
type Server = preauth.Server

// New builds the server for listener lc. With lc.TLS "starttls" or
// "implicit" it loads the certificate.
func New(relay *proxy.Relay, lc config.Listener) (*Server, error) {
	return preauth.NewServer(relay, lc, preauth.Protocol{
		Proto: events.IMAP, Busy: busyLine, Serve: func(c *preauth.Conn) { newSession(c).serve() },
	})
}

// busyLine greets a connection that a proxy.Listener refuses because too
// many have not logged in (RFC 9051 §7.1.5: BYE as the greeting when the
// server is unwilling to accept the connection).
const busyLine = "* BYE Too many connections, try again later"
