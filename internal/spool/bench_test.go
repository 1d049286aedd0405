package spool

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkCreate measures durable Creates (every fsync included) of 1 KiB
// and 1 MiB messages, as messages per second.
func BenchmarkCreate(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			s, _ := openSpool(b, b.TempDir(), Options{})
			body := bytes.Repeat([]byte("0123456789abcde\n"), size/16)
			env := testEnvelope()
			b.SetBytes(int64(size))
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				if _, err := s.Create(context.Background(), env, bytes.NewReader(body), 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkCreateMemory shows that a Create's memory does not grow with the
// body: the heap in use after a Create of 1 MiB and of 100 MiB against
// before it, and the bytes allocated during it. Figures, not assertions.
func BenchmarkCreateMemory(b *testing.B) {
	for _, size := range []int64{1 << 20, 100 << 20} {
		b.Run(fmt.Sprintf("%dMiB", size>>20), func(b *testing.B) {
			s, _ := openSpool(b, b.TempDir(), Options{})
			var inuse, alloc uint64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				e, err := s.Create(context.Background(), testEnvelope(), message(1, size), 0)
				if err != nil {
					b.Fatal(err)
				}
				runtime.ReadMemStats(&after)
				inuse = max(inuse, after.HeapInuse-min(before.HeapInuse, after.HeapInuse))
				alloc = max(alloc, after.TotalAlloc-before.TotalAlloc)
				b.StopTimer()
				if err := s.Delete(e.ID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(inuse), "heap-inuse-growth-B")
			b.ReportMetric(float64(alloc), "alloc-B/create")
		})
	}
}
