package fakems

import (
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-smtp"
)

// The replies of Exchange Online the fake sends, in one place so they can be
// checked against Microsoft's documentation together. Replies that differ
// only in go-smtp's or go-imap's wording are rewritten in wire.go instead.

// Exchange Online's SMTP replies. The bracketed host is how Exchange signs
// its errors; clients and relays show it to users.
var (
	replyAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3},
		Message: "Authentication unsuccessful [" + exchangeHost + "]"}
	replyBasicDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, basic authentication is disabled. [" + exchangeHost + "]"}
	replySMTPAuthDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. [" + exchangeHost + "]"}
	replySMTPAuthDisabledTenant = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. [" + exchangeHost + "]"}
	replyUnknownMech = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4},
		Message: "Unrecognized authentication type [" + exchangeHost + "]"}
	replyLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Line too long"}
	replyConcurrent = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information. [Hostname=" + exchangeHost + "]"}
	replyRateLimited = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=" + exchangeHost + "]"}
	// replyQuotaExceeded is the daily recipient quota (10,000 in 24 hours).
	replyQuotaExceeded = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
		Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message. [Hostname=" + exchangeHost + "]"}
	replyStartTLSFirst = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{5, 7, 3},
		Message: "STARTTLS is required to send mail [" + exchangeHost + "]"}
	replyNotAuthenticated = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57},
		Message: "Client not authenticated to send mail. [" + exchangeHost + "]"}
	replySendAsDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60},
		Message: "SMTP; Client does not have permissions to send as this sender [" + exchangeHost + "]"}
	replyTooManyRcpts = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "Too many recipients [" + exchangeHost + "]"}
)

// Exchange Online's IMAP replies.
var (
	imapAuthFailed  = &imap.Error{Type: imap.StatusResponseTypeNo, Text: "AUTHENTICATE failed."}
	imapLoginFailed = &imap.Error{Type: imap.StatusResponseTypeNo, Text: "LOGIN failed."}
	// imapNotConnected is what Exchange answers every command with after an
	// XOAUTH2 login whose token is valid but gives no access to the mailbox
	// (an app-only token without FullAccess): the login itself succeeds.
	imapNotConnected = &imap.Error{Type: imap.StatusResponseTypeBad, Text: "User is authenticated but not connected."}
)
