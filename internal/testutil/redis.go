package testutil

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Redis is a redis-server a test started on a loopback port, with its
// data in a temporary directory.
type Redis struct {
	// Addr is host:port; URL is redis://Addr.
	Addr, URL string
	t         testing.TB
	bin, dir  string
	port      int
	cmd       *exec.Cmd
	done      chan error
}

// redisReady bounds the wait for a started redis-server to answer PING.
const redisReady = 10 * time.Second

// RedisPath returns the redis-server binary. When it is not installed the
// test is skipped, unless the CI environment variable is set: .ci/run
// installs redis-server, so it must be there.
func RedisPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not installed (CI installs it in .ci/run): %v", err)
		}
		t.Skip("redis-server not installed (Debian: redis-server)")
	}
	return p
}

// StartRedis runs a redis-server with no persistence on a free loopback
// port until the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{t: t, bin: RedisPath(t), dir: t.TempDir(), port: freePort(t)}
	r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
	r.URL = "redis://" + r.Addr
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server again after Stop, on the same port.
func (r *Redis) Start() {
	r.t.Helper()
	if r.cmd != nil {
		return
	}
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--dir", r.dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "yes", "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(r.cmd, r.done)
	deadline := time.Now().Add(redisReady)
	for {
		if r.ping() == nil {
			return
		}
		select {
		case err := <-r.done:
			r.cmd = nil
			b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server exited: %v\n%s", err, b)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server did not answer on %s within %v", r.Addr, redisReady)
		}
	}
}

// Stop kills the server (the store goes away as if the host died) and
// waits for it to exit.
func (r *Redis) Stop() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

func (r *Redis) ping() error {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING: %q", line)
	}
	return nil
}
