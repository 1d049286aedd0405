package proxy

import "time"

// SpeedUpLoginDelays divides the login throttle's delays and window by n,
// for the front ends' fuzz targets (package proxy_test): a mutated
// password must not hold its session for the throttle's 30 s.
func (r *Relay) SpeedUpLoginDelays(n time.Duration) { r.throttle.speedup = n }
