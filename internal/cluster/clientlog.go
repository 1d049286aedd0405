package cluster

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// ClientLogs sends the Redis client's own lines to log at debug level.
// Left alone, go-redis prints them unstructured on stderr, one "failed to
// dial" per attempt for as long as the store is down, in the middle of a
// daemon's JSON log or a command's output; the Store already says what
// matters once (the store is unreachable, is back, restarted), and /readyz
// and the status page show it. go-redis keeps one logger per process: a
// command sets it before it opens a store (cmd's openSharedStore); nil
// discards the lines.
func ClientLogs(log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	redis.SetLogger(clientLogger{log})
}

// clientLogger is go-redis's Logging interface on a slog.Logger.
type clientLogger struct{ log *slog.Logger }

func (l clientLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis client", "component", "shared store", "detail", fmt.Sprintf(format, v...))
}
