package smtp

import "github.com/emersion/go-smtp"

// The relay's own replies, in one place so the codes can be reviewed
// together. Everything else a client sees is the upstream's reply, passed on
// unchanged. RFC 4954 §6 for the AUTH codes, RFC 3463 for enhanced codes.
var (
	// errBadCredentials: wrong local username or password.
	errBadCredentials = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid"}
	// errTempAuth: the token endpoint or the upstream failed for now; the
	// app retries (RFC 4954: 454 4.7.0 Temporary authentication failure).
	errTempAuth = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Temporary authentication failure, try again later"}
	// errNeedsAttention: retrying will not help until an administrator
	// signs the account in again or fixes the app registration.
	errNeedsAttention = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Authentication failed: the relay account needs attention from an administrator (see the oauthrelay log)"}
	// errEncryptionRequired: a password in the clear from a remote client.
	errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism"}
	// errAuthRequired: MAIL without AUTH from a client no relay_from covers.
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required"}
	// errSenderDenied: MAIL FROM outside the account's allowed_from. The
	// relay is never open.
	errSenderDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Sender address not allowed for this account"}
	// errUpstreamUnavailable: the upstream cannot be reached for a new
	// transaction.
	errUpstreamUnavailable = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Upstream server unavailable, try again later"}
	// errTxNeedsAttention: a relay_from transaction whose account cannot get
	// a token until an administrator acts. Temporary on purpose: the app
	// keeps the message queued instead of bouncing it.
	errTxNeedsAttention = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "The relay account needs attention from an administrator (see the oauthrelay log); try again later"}
	// errLostDuringData: the upstream went away before it accepted the
	// message; it was not delivered (never 250).
	errLostDuringData = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Connection to the upstream server lost, message not delivered; try again"}
	// errNoTransaction: RCPT or DATA without an upstream transaction.
	errNoTransaction = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message: "Bad sequence of commands"}
	// errShuttingDown is sent at Shutdown to sessions waiting for a command
	// outside a transaction (and to a connection accepted just before);
	// the connection is then closed. New connections are refused by the
	// closed listener and cannot be told.
	errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "Service shutting down, try again later"}

	// The wire's replies when it ends a connection (RFC 5321 §3.8: 421, the
	// server closes the channel). In the middle of a message they say it
	// was not delivered: nothing reached the upstream's final dot.

	// errIdleTimeout: no command within CommandTimeout.
	errIdleTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Timeout waiting for a command, closing connection"}
	// errLineTimeout: a command line not complete within LineTimeout of its
	// first byte; the partial line is not executed.
	errLineTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Command line not completed in time, closing connection"}
	// errLineTooLong: a command line longer than maxCommandLine.
	errLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Line too long, closing connection"}
	// errClientTimeout: the app paused longer than DataTimeout inside a
	// message.
	errClientTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Timeout waiting for message data from the client, message not delivered; closing connection"}
	// errClientEnded: the app's connection ended (or failed) inside a
	// message, e.g. a BDAT chunk shorter than announced.
	errClientEnded = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Client connection ended in the middle of the message, message not delivered; closing connection"}
)

// headerFromDenied is the refusal of a message whose From header the
// account may not use (RFC 3463 5.7.1: delivery not authorized). reason
// is in plain words for the app's log.
func headerFromDenied(reason string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: reason}
}

// busyLine is written to a client the listener refuses because too many
// connections wait before login (proxy.Listener.Busy).
const busyLine = "421 4.7.0 Too many connections, try again later"
