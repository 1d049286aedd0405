package cluster

import (
	"time"

	"github.com/redis/go-redis/v9"
)

type zm = redis.Z

// zmember is a sorted set member that counts until until.
func zmember(member string, until time.Time) redis.Z {
	return redis.Z{Score: float64(until.UnixMilli()), Member: member}
}
