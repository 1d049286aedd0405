package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
)

// The Graph part of the bench (-only graph): messages a second through the
// relay's Graph path at 1 and 16 clients against the fake's limits (4
// concurrent requests per mailbox, answered after graphBenchLatency, the
// round trip of a request to Graph over the internet), and the relay's
// resident memory while it sends one 100 MB message through upload
// sessions.
const (
	graphBenchLatency = 20 * time.Millisecond
	// graphBigAttachment is the attachment of the 100 MB message (its
	// base64 makes the message 100 MB).
	graphBigAttachment = 75_000_000
)

func graphBench(ctx context.Context, quick, pin bool, stdout, stderr io.Writer) error {
	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	fw, err := startFakeWorld(ctx, fakems.Options{DiscardData: true})
	if err != nil {
		return err
	}
	defer fw.ms.Close()
	fw.upstream = "graph"
	fw.ms.SetGraphLatency(graphBenchLatency)
	rp, err := startBenchRelay(ctx, relaySpec{config: func(dir, hash string) string {
		return unlimited + strings.Replace(fw.yaml(dir, "127.0.0.1:0", "127.0.0.1:0", "off", "off", hash), "level: info", "level: warn", 1)
	}}, pin, stderr)
	if err != nil {
		return err
	}
	defer rp.stop()
	p("")
	p("graph: relay (child process %d) sending through the fake Microsoft Graph (HTTPS, %v a request, 4 concurrent per mailbox)", rp.cmd.Process.Pid, graphBenchLatency)
	n1, n16 := 200, 800
	if quick {
		n1, n16 = 40, 160
	}
	for _, c := range []struct{ clients, n int }{{1, n1}, {16, n16}} {
		before := fw.ms.GraphStats()
		rate, err := smtpLoad(ctx, relayDial(rp.smtpAddr, demoUser), c.clients, c.n, 1<<10)
		if err != nil {
			return fmt.Errorf("graph, %d clients: %w", c.clients, err)
		}
		after := fw.ms.GraphStats()
		p("graph: 1 KB messages, %2d clients: %6.1f msg/s (%d Graph requests, %d answered 429 for concurrency; ceiling %d concurrent / %v = %.0f msg/s)",
			c.clients, rate, after.Requests-before.Requests, after.Throttled-before.Throttled, 4, graphBenchLatency, 4/graphBenchLatency.Seconds())
	}

	fw.ms.SetGraphLatency(0)
	pid := rp.cmd.Process.Pid
	base, err := rssNow(pid)
	if err != nil {
		return err
	}
	start := time.Now()
	sum, size, err := sendBigGraph(rp.smtpAddr)
	if err != nil {
		return fmt.Errorf("graph, 100 MB message: %w", err)
	}
	took := time.Since(start)
	peak, err := peakRSS(pid)
	if err != nil {
		return err
	}
	msgs := fw.ms.GraphMessages()
	last := msgs[len(msgs)-1]
	if len(last.Attachments) != 1 || last.Attachments[0].SHA256 != sum || last.Via != "draft" {
		return fmt.Errorf("graph, 100 MB message: the fake got %d attachments via %s, not the one sent", len(last.Attachments), last.Via)
	}
	p("graph: one %.0f MB message (a %.0f MB attachment through upload sessions) in %.1f s, intact; relay RSS peak %.1f MiB (%.1f MiB before it; target under 64 MB)",
		float64(size)/1e6, float64(graphBigAttachment)/1e6, took.Seconds(), mib(peak), mib(base))
	return nil
}

// sendBigGraph sends one message with a graphBigAttachment-byte
// attachment of random bytes, generated as it is sent (the bench holds
// no copy), and returns the attachment's SHA-256 and the message's size.
func sendBigGraph(addr string) ([32]byte, int64, error) {
	c, err := relayDial(addr, demoUser)()
	if err != nil {
		return [32]byte{}, 0, err
	}
	defer c.Close()
	if err := c.Mail(demoMailbox, &smtp.MailOptions{Size: graphBigAttachment * 4 / 3}); err != nil {
		return [32]byte{}, 0, err
	}
	if err := c.Rcpt("someone@example.net", nil); err != nil {
		return [32]byte{}, 0, err
	}
	w, err := c.Data()
	if err != nil {
		return [32]byte{}, 0, err
	}
	cw := &countWriter{w: w}
	fmt.Fprintf(cw, "From: %s\r\nTo: someone@example.net\r\nSubject: 100 MB through Graph\r\nMessage-ID: <bench-100mb@example.net>\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe attachment.\r\n"+
		"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", demoMailbox)
	h := sha256.New()
	enc := base64.NewEncoder(base64.StdEncoding, &lineWrapper{w: cw})
	rnd := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 57*1024)
	for left := graphBigAttachment; left > 0; left -= len(buf) {
		chunk := buf[:min(len(buf), left)]
		rnd.Read(chunk)
		h.Write(chunk)
		if _, err := enc.Write(chunk); err != nil {
			return [32]byte{}, 0, err
		}
	}
	if err := enc.Close(); err != nil {
		return [32]byte{}, 0, err
	}
	io.WriteString(cw, "\r\n--b--\r\n")
	if err := w.Close(); err != nil {
		return [32]byte{}, 0, err
	}
	c.Quit()
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, cw.n, nil
}

// lineWrapper breaks base64 into lines of 76 characters (RFC 2045 §6.8).
type lineWrapper struct {
	w   io.Writer
	col int
}

func (l *lineWrapper) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(76-l.col, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return n, err
		}
		n, l.col, p = n+k, l.col+k, p[k:]
		if l.col == 76 {
			if _, err := io.WriteString(l.w, "\r\n"); err != nil {
				return n, err
			}
			l.col = 0
		}
	}
	return n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
