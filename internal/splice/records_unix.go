//go:build unix

package splice

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawConnOf is c's RawConn when c is a socket the runtime polls.
func rawConnOf(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// fill reads the socket into a buffer taken only once it is readable:
// the callback runs when the runtime's poller says so, and gives the
// buffer back when the read finds nothing after all. Deadlines and Close
// end the wait as they end a Read.
func (c *RecordConn) fill() error {
	if c.err != nil {
		return c.err
	}
	var n int
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		if c.buf == nil {
			if c.streaming {
				c.buf = getBuffer(c.filled)
			} else {
				c.buf = smallReadBuffers.Get().(*[]byte)
			}
		}
		for {
			n, rerr = syscall.Read(int(fd), *c.buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			c.release()
			return false
		}
		return true
	})
	switch {
	case err != nil:
		c.release()
		return err
	case rerr != nil:
		c.release()
		c.err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
		return c.err
	case n <= 0:
		c.release()
		c.err = io.EOF
		return c.err
	}
	c.r, c.w = 0, n
	return nil
}
