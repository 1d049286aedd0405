package delivery

import "time"

// Clock is the time a Sender keeps its limits by: the pace window, the
// daily recipient count, idle and session ages, waits and cool-downs. Tests
// move a clock of their own; a benchmark runs a ScaledClock faster than
// real time, so that a burst against 30 messages a minute drains in
// seconds.
type Clock interface {
	// Now returns the current time on this clock.
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed on this
	// clock, like time.AfterFunc.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not started, and reports whether
	// it did (as time.Timer.Stop).
	Stop() bool
}

// realClock is the system clock: time.Now and time.AfterFunc.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// ScaledClock runs Speed times faster than the system clock from the
// moment it is made: a Speed of 60 turns a minute of pace into a second.
// It is for benchmarks and demonstrations against an upstream that keeps
// its limits on the same scaled time; the relay itself uses the real
// clock.
type ScaledClock struct {
	speed float64
	start time.Time // on the system clock (with its monotonic reading)
}

// NewScaledClock returns a clock that starts now and runs speed times as
// fast as the system clock; a speed below 1 is taken as 1.
func NewScaledClock(speed float64) *ScaledClock {
	return &ScaledClock{speed: max(speed, 1), start: time.Now()}
}

// NewScaledClockAt returns a clock of speed that started at start: clocks
// made at start in several processes (relay instances sharing their
// limits, and the fake they send to) tell the same time.
func NewScaledClockAt(speed float64, start time.Time) *ScaledClock {
	return &ScaledClock{speed: max(speed, 1), start: start}
}

// Now returns the start time plus the real time elapsed since, scaled.
func (c *ScaledClock) Now() time.Time {
	return c.start.Add(time.Duration(float64(time.Since(c.start)) * c.speed))
}

// AfterFunc calls f once d has passed on the scaled clock.
func (c *ScaledClock) AfterFunc(d time.Duration, f func()) Timer {
	return time.AfterFunc(time.Duration(float64(d)/c.speed), f)
}
