package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
)

// lockedBuffer is a bytes.Buffer for a handler written from go-redis's
// goroutines too.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// With the store down, the Redis client's own complaints (a "failed to
// dial" per attempt) reach the logger ClientLogs was given, at debug
// level and structured, rather than stderr.
func TestClientLogs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now: the store is down

	var out lockedBuffer
	ClientLogs(slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { ClientLogs(nil) })

	s, err := Open(config.Cluster{Store: "redis://" + addr, Instance: "a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err == nil {
		t.Fatal("a store nobody listens on answered")
	}
	got := out.String()
	if !strings.Contains(got, `"level":"DEBUG"`) || !strings.Contains(got, `"msg":"redis client"`) || !strings.Contains(got, "dial") {
		t.Errorf("the client's lines did not reach the logger at debug level:\n%s", got)
	}
}
