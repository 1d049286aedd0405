package sasl

import (
	"errors"

	gosasl "github.com/emersion/go-sasl"
)

// Login is the LOGIN mechanism name (draft-murchison-sasl-login).
const Login = "LOGIN"

// LoginAuthenticator checks a username and password. The error it returns is
// handed unchanged to the protocol server (go-smtp sends an *smtp.SMTPError
// as is), so it decides the reply.
type LoginAuthenticator func(username, password string) error

// ErrLoginState is returned for a response after the exchange finished.
var ErrLoginState = errors.New("sasl: LOGIN: unexpected response")

type loginServer struct {
	auth     LoginAuthenticator
	username []byte
	step     int
}

// NewLoginServer returns a server for the LOGIN mechanism, which Outlook,
// many ERP mailers and most scanners use instead of PLAIN. It sends the
// customary "Username:" and "Password:" challenges; an initial response is
// taken as the username.
func NewLoginServer(auth LoginAuthenticator) gosasl.Server {
	return &loginServer{auth: auth}
}

// Next implements gosasl.Server.
func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		s.username = response
		s.step = 2
		return []byte("Password:"), false, nil
	case 2:
		s.step = 3
		if err := s.auth(string(s.username), string(response)); err != nil {
			return nil, true, err
		}
		return nil, true, nil
	}
	return nil, true, ErrLoginState
}
