package smtp

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	gosasl "github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// BenchmarkSMTP sends messages through the relay and directly to the same
// fake upstream, with 1 and 32 concurrent sessions, and reports msg/s. The
// ratio of the two is what matters; `oauthrelay bench` prints it with the
// relay in its own process.
func BenchmarkSMTP(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		for _, clients := range []int{1, 32} {
			for _, path := range []string{"direct", "relay"} {
				b.Run(fmt.Sprintf("%s/%dKB/%dclients", path, size>>10, clients), func(b *testing.B) {
					benchSMTP(b, path, size, clients)
				})
			}
		}
	}
}

func benchSMTP(b *testing.B, path string, size, clients int) {
	w := newWorld(b, worldOptions{ms: fakems.Options{DiscardData: true}, quiet: true, unlimited: true})
	msg := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", size/78+1))
	dial := func() (*smtp.Client, error) {
		c, err := smtp.Dial(w.addr)
		if err != nil {
			return nil, err
		}
		return c, c.Auth(gosasl.NewPlainClient("", username, password))
	}
	if path == "direct" {
		tok := w.ms.IssueAccessToken(clientID, "")
		dial = func() (*smtp.Client, error) {
			c, err := smtp.DialStartTLS(w.ms.SMTPAddr, w.ms.ClientTLSConfig())
			if err != nil {
				return nil, err
			}
			return c, c.Auth(sasl.NewXOAuth2Client(mailbox, tok))
		}
	}
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial()
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			for left.Add(-1) >= 0 {
				if _, err := send(c, mailbox, []string{recipient}, string(msg)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
