package proxy

import (
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/delivery"
)

// ClockSpeedEnv is the environment variable that runs every mailbox's
// limits (its Sender's clock: the pace window, the day's recipients, the
// waits and max_wait, idle and session ages) this many times faster than
// real time. It is for benchmarks and tests only: `oauthrelay bench` sets
// it for the `serve` it starts, against a fake Exchange that keeps its
// limits on a clock of the same speed, so that a 1,000-message burst at 30
// messages a minute drains in seconds rather than half an hour. It is
// ignored unless set; a relay with it set does not keep Exchange's limits,
// and says so in its log.
const ClockSpeedEnv = "OAUTHRELAY_TEST_CLOCK_SPEED"

// ClockEpochEnv, with ClockSpeedEnv, is when the fast clock started (Unix
// nanoseconds), so that several relay processes sharing their limits in a
// store, and the fake they send to, keep them on one time. Unset, each
// process's clock starts when it does.
const ClockEpochEnv = "OAUTHRELAY_TEST_CLOCK_EPOCH"

// SenderClock returns the clock a mailbox's Sender keeps its limits by
// (delivery.SenderOptions.Clock): nil, the system clock, unless
// ClockSpeedEnv is set (lookup is os.LookupEnv in production) to a speed
// of 1 or more, then a delivery.ScaledClock of that speed, with a warning.
// A value that is not such a speed is logged and ignored.
func SenderClock(lookup func(string) (string, bool), log *slog.Logger) delivery.Clock {
	v, ok := lookup(ClockSpeedEnv)
	if !ok || v == "" {
		return nil
	}
	speed, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(speed) || math.IsInf(speed, 0) || speed < 1 {
		log.Error(ClockSpeedEnv+" is not a speed of 1 or more: ignored, the limits run on the system clock", "value", v)
		return nil
	}
	log.Warn(ClockSpeedEnv+" is set: the mailboxes' limits run faster than real time (benchmarks and tests only; Exchange's limits are not kept)", "speed", speed)
	if e, ok := lookup(ClockEpochEnv); ok && e != "" {
		if ns, err := strconv.ParseInt(e, 10, 64); err == nil {
			return delivery.NewScaledClockAt(speed, time.Unix(0, ns))
		}
		log.Error(ClockEpochEnv+" is not Unix nanoseconds: ignored", "value", e)
	}
	return delivery.NewScaledClock(speed)
}
