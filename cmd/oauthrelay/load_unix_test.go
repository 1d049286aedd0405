//go:build linux

package main

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// The load bench, small and short, as CI's bounded load run: 100 SMTP
// sessions at once sending 3 messages each, after 500 idle IMAP sessions.
// Every login and message must succeed (the bench fails otherwise) and the
// relay must hold no more open files after the sessions ended than before
// them (plus the pooled upstream sessions). The figures it prints are not
// asserted. The soak, which waits for the pool to go idle, is `make soak`.
func TestLoadBenchQuick(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's cost would measure nothing and slow CI")
	}
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "bench", "-only", "load", "-quick", "-pin=false").CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("bench -only load: %v", err)
	}
	files := regexp.MustCompile(`open files: (\d+) before, (\d+) after`).FindAllSubmatch(out, -1)
	if len(files) != 2 {
		t.Fatalf("want the SMTP and IMAP open-file lines, got %d", len(files))
	}
	// The IMAP part runs first, on the fresh relay, and must come back to
	// where it started; the SMTP part ends with the pool's sessions still
	// open (up to limits.connections, 100 in the bench).
	for i, m := range files {
		before, _ := strconv.Atoi(string(m[1]))
		after, _ := strconv.Atoi(string(m[2]))
		if limit := before + map[int]int{1: 100}[i]; after > limit {
			t.Errorf("part %d: the relay holds %d open files after, %d before", i, after, before)
		}
	}
}
