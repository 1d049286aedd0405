package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// With the store down, the Redis client's own complaints (a "failed to
// dial" per attempt) reach the logger ClientLogs was given, at debug
// level and structured, rather than stderr.
func TestClientLogs(t *testing.T) {
	log, out := testutil.Logger(t)
	ClientLogs(log)
	t.Cleanup(func() { ClientLogs(nil) })

	s, err := Open(config.Cluster{Store: "redis://" + testutil.ClosedAddr(t), Instance: "a"}, nil)
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
	if !strings.Contains(got, "level=DEBUG") || !strings.Contains(got, `msg="redis client"`) || !strings.Contains(got, "dial") {
		t.Errorf("the client's lines did not reach the logger at debug level:\n%s", got)
	}
}
