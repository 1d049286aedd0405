//go:build !unix

package splice

import (
	"errors"
	"net"
	"syscall"
)

// rawConnOf is nil off Unix: RecordConn passes reads through.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

// fill is never reached off Unix: Read passes through without a RawConn.
func (c *RecordConn) fill() error {
	if c.err == nil {
		c.err = errors.New("splice: RecordConn without a RawConn")
	}
	return c.err
}
