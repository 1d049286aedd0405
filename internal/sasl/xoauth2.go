// Package sasl holds the two SASL mechanisms oauthrelay needs and go-sasl
// lacks: the XOAUTH2 client (Google's and Microsoft's bearer-token login,
// which go-sasl's maintainer declines to add) and a LOGIN server (go-sasl
// only has the client side). It follows the shape of go-sasl's
// oauthbearer.go so both plug into go-smtp and go-imap unchanged.
//
// Out of scope: OAUTHBEARER (RFC 7628), which go-sasl already provides, and
// any server side of XOAUTH2 beyond parsing (the fake upstreams validate
// tokens themselves).
package sasl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	gosasl "github.com/emersion/go-sasl"
)

// XOAuth2 is the mechanism name.
const XOAuth2 = "XOAUTH2"

// XOAuth2Error is the JSON a server may send as a 334 challenge when it
// rejects the token (Gmail does; Exchange answers 535 directly).
type XOAuth2Error struct {
	Status  string `json:"status"`
	Schemes string `json:"schemes"`
	Scope   string `json:"scope"`
}

func (e *XOAuth2Error) Error() string {
	return fmt.Sprintf("XOAUTH2 authentication error (status %q)", e.Status)
}

// XOAuth2Response is the client's single message:
// "user=" + user + "\x01auth=Bearer " + token + "\x01\x01" (unencoded).
func XOAuth2Response(user, token string) []byte {
	b := make([]byte, 0, len(user)+len(token)+20)
	b = append(b, "user="...)
	b = append(b, user...)
	b = append(b, "\x01auth=Bearer "...)
	b = append(b, token...)
	b = append(b, "\x01\x01"...)
	return b
}

// ParseXOAuth2Response is the inverse of XOAuth2Response, for servers (the
// fake Microsoft 365). It accepts the auth value with any scheme prefix
// "Bearer " (case-insensitive) and ignores unknown key=value pairs.
func ParseXOAuth2Response(b []byte) (user, token string, err error) {
	if !bytes.HasSuffix(b, []byte("\x01\x01")) {
		return "", "", errors.New("xoauth2: response does not end with two ^A")
	}
	var haveUser, haveAuth bool
	for _, kv := range bytes.Split(b[:len(b)-2], []byte{1}) {
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			return "", "", fmt.Errorf("xoauth2: malformed pair %q", truncate(kv))
		}
		switch string(k) {
		case "user":
			user, haveUser = string(v), true
		case "auth":
			scheme, tok, ok := bytes.Cut(v, []byte(" "))
			if !ok || !bytes.EqualFold(scheme, []byte("Bearer")) {
				return "", "", errors.New("xoauth2: auth is not a Bearer token")
			}
			token, haveAuth = string(tok), true
		}
	}
	if !haveUser || !haveAuth {
		return "", "", errors.New("xoauth2: user or auth missing")
	}
	return user, token, nil
}

func truncate(b []byte) []byte {
	if len(b) > 20 {
		return b[:20]
	}
	return b
}

// XOAuth2Client is a gosasl.Client for XOAUTH2.
//
// It never reports success on a failed login: a challenge after the token was
// sent is the server's error (RFC 7628 §3.2.3 style, base64 JSON for Gmail);
// Next answers it with an empty response, as the protocol requires, and
// remembers the error in Err so the caller can log it. The login's outcome is
// the server's final reply, which go-smtp and imapclient return. (Returning
// nil from Next would make go-smtp's client report success.)
type XOAuth2Client struct {
	User  string
	Token string
	// NoInitialResponse sends the token after the server's empty "334 " /
	// "+ " continuation instead of on the AUTH line: for servers that refuse
	// a 2–3 KB command line (Dovecot submission answers 500 5.5.2).
	NoInitialResponse bool

	// Err is the error the server sent as a challenge, if any.
	Err error

	sent bool
}

// NewXOAuth2Client returns an XOAUTH2 client that sends the token as an
// initial response, which Exchange Online expects.
func NewXOAuth2Client(user, token string) *XOAuth2Client {
	return &XOAuth2Client{User: user, Token: token}
}

var _ gosasl.Client = (*XOAuth2Client)(nil)

// Start implements gosasl.Client.
func (c *XOAuth2Client) Start() (mech string, ir []byte, err error) {
	if c.NoInitialResponse {
		return XOAuth2, nil, nil
	}
	c.sent = true
	return XOAuth2, XOAuth2Response(c.User, c.Token), nil
}

// Next implements gosasl.Client.
func (c *XOAuth2Client) Next(challenge []byte) ([]byte, error) {
	if !c.sent {
		c.sent = true
		return XOAuth2Response(c.User, c.Token), nil
	}
	e := &XOAuth2Error{}
	if err := json.Unmarshal(challenge, e); err != nil {
		c.Err = fmt.Errorf("xoauth2: server challenge after the token: %q", truncate(challenge))
	} else {
		c.Err = e
	}
	return []byte{}, nil
}
