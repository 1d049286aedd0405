package fakems

import (
	"errors"
	"net"
)

// SMTPFault is a point of an SMTP connection where the fake cuts it with a
// TCP reset: the failures a relay meets on the internet, one per step of
// the dialogue, for a fault matrix.
type SMTPFault string

const (
	// FaultBeforeGreeting: the connection is accepted and reset before the
	// 220 greeting.
	FaultBeforeGreeting SMTPFault = "before-greeting"
	// FaultDuringSTARTTLS: STARTTLS gets its 220, then the connection is
	// reset instead of the handshake.
	FaultDuringSTARTTLS SMTPFault = "during-starttls"
	// FaultTLSHandshake: STARTTLS gets its 220, then bytes that are not TLS
	// (a middlebox answering), and the connection is closed.
	FaultTLSHandshake SMTPFault = "tls-handshake"
	// FaultAfterAuth: AUTH succeeds (235), then the connection is reset
	// when the next transaction starts (MAIL).
	FaultAfterAuth SMTPFault = "after-auth"
	// FaultAfterMail: MAIL is read, the connection reset without a reply.
	FaultAfterMail SMTPFault = "after-mail"
	// FaultAfterRcpt: RCPT is read, the connection reset without a reply.
	FaultAfterRcpt SMTPFault = "after-rcpt"
	// FaultMidData: the connection is reset after the first bytes of the
	// message.
	FaultMidData SMTPFault = "mid-data"
	// FaultAfterDot: the whole message is read, then the connection is
	// reset before the reply; the fake does not keep the message.
	FaultAfterDot SMTPFault = "after-dot"
	// FaultAfterDotKept: the whole message is read and kept (it counts as
	// delivered), then the connection is reset before the reply: the
	// upstream has it and the client cannot know.
	FaultAfterDotKept SMTPFault = "after-dot-kept"
)

// SMTPFaults lists every fault, in the order of the dialogue.
var SMTPFaults = []SMTPFault{FaultBeforeGreeting, FaultDuringSTARTTLS, FaultTLSHandshake, FaultAfterAuth,
	FaultAfterMail, FaultAfterRcpt, FaultMidData, FaultAfterDot, FaultAfterDotKept}

// midDataBytes is how much of a message FaultMidData reads first.
const midDataBytes = 10

// errFault is what a session handler returns after it cut the connection:
// go-smtp's reply to it goes nowhere.
var errFault = errors.New("fakems: connection cut by an injected fault")

// FailSMTP arms fault f for its next n occurrences (n < 0: every one until
// FailSMTP(f, 0)). Faults at different points are armed independently.
func (s *Server) FailSMTP(f SMTPFault, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults == nil {
		s.faults = make(map[SMTPFault]int)
	}
	s.faults[f] = n
}

// takeFault reports whether fault f is armed, and uses up one occurrence.
func (s *Server) takeFault(f SMTPFault) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeFaultLocked(f)
}

func (s *Server) takeFaultLocked(f SMTPFault) bool {
	n := s.faults[f]
	if n > 0 {
		s.faults[f] = n - 1
	}
	if n != 0 {
		s.log.Info("smtp: injecting a fault", "fault", string(f))
	}
	return n != 0
}

// reset closes c with a TCP reset (SO_LINGER 0) rather than a FIN: the
// peer's next read or write fails with "connection reset by peer", as when
// a load balancer or firewall between drops the connection.
func reset(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}
