//go:build race

package smtp

func init() { raceEnabled = true }
