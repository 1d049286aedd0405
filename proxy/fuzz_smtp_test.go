package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
	"github.com/oauthrelay/oauthrelay/proxy"
	smtpfront "github.com/oauthrelay/oauthrelay/proxy/smtp"
)

// The fuzz target of the SMTP front end lives here, beside the relay, so
// that it can speed up the login throttle (export_test.go): go-smtp behind
// the relay's wire, in front of an in-memory delivery.

const (
	fuzzUser     = "erp"
	fuzzPassword = "erp-local-password"
	fuzzMailbox  = "invoices@contoso.com"
	fuzzRcpt     = "customer@example.net"
	// fuzzSessionTimeout bounds one input's session: the relay must
	// answer and close once the client has sent everything and
	// half-closed.
	fuzzSessionTimeout = 10 * time.Second
)

// memDelivery takes every message into memory: the target exercises the
// front end, not an upstream.
type memDelivery struct {
	mu       sync.Mutex
	messages int
}

func (d *memDelivery) Ready(context.Context, upstream.Credentials) error { return nil }

func (d *memDelivery) Begin(context.Context, upstream.Credentials, string, *smtp.MailOptions) (delivery.Tx, error) {
	return &memTx{d: d}, nil
}

func (d *memDelivery) Close() {}

func (d *memDelivery) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.messages
}

type memTx struct{ d *memDelivery }

func (t *memTx) Rcpt(string, *smtp.RcptOptions) error { return nil }

func (t *memTx) Data(r io.Reader) (*delivery.Accepted, error) {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return nil, err
	}
	t.d.mu.Lock()
	t.d.messages++
	t.d.mu.Unlock()
	return &delivery.Accepted{Reply: "2.0.0 OK", Bytes: n}, nil
}

func (t *memTx) Abort() {}

// replyLine is an SMTP reply line (RFC 5321 §4.2): a code, then a space
// or a hyphen and text, or the code alone.
var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9]([ -].*)?$`)

// FuzzSMTPSession sends any bytes to the relay's SMTP listener as an app
// would, half-closes, and reads every reply. The relay must not panic, must
// answer only in well-formed reply lines, must end the session once the
// input is over, and must accept a message only after a login: the seeds
// log in correctly, so mutations reach every state.
func FuzzSMTPSession(f *testing.F) {
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+fuzzUser+"\x00"+fuzzPassword)) + "\r\n"
	msg := "MAIL FROM:<" + fuzzMailbox + ">\r\nRCPT TO:<" + fuzzRcpt + ">\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
	first := "EHLO app\r\n" + auth + msg + "QUIT\r\n"
	for _, seed := range []string{
		first,
		"HELO app\r\nAUTH LOGIN\r\n" + base64.StdEncoding.EncodeToString([]byte(fuzzUser)) + "\r\n" +
			base64.StdEncoding.EncodeToString([]byte(fuzzPassword)) + "\r\n" + msg,
		"EHLO app\r\n" + auth + "MAIL FROM:<" + fuzzMailbox + "> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<" + fuzzRcpt +
			"> NOTIFY=NEVER\r\nBDAT 6 LAST\r\nhello\n",
		"EHLO app\r\n" + auth + "MAIL FROM:<" + fuzzMailbox + ">\r\nRCPT TO:<" + fuzzRcpt + ">\r\nBDAT 100 LAST\r\nshort",
		"EHLO app\r\nMAIL FROM:<" + fuzzMailbox + ">\r\nRSET\r\nNOOP\r\nVRFY x\r\nSTARTTLS\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"EHLO " + strings.Repeat("a", 3000) + "\r\n",
		"\x00\xff\r\n.\r\n",
	} {
		f.Add([]byte(seed))
	}
	addr, mem := fuzzSMTPWorld(f)
	// The harness reaches the delivery: the first seed's message arrives.
	if _, err := converse(addr, []byte(first)); err != nil || mem.count() != 1 {
		f.Fatalf("the first seed: %v, %d messages delivered, want 1", err, mem.count())
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		before := mem.count()
		replies, err := converse(addr, input)
		if err != nil {
			t.Fatalf("session: %v", err)
		}
		for _, line := range replies {
			if !replyLine.MatchString(line) {
				t.Fatalf("not an SMTP reply line: %q", line)
			}
		}
		if mem.count() > before && !bytes.Contains(bytes.ToUpper(input), []byte("AUTH ")) {
			t.Fatalf("a message was accepted without AUTH")
		}
	})
}

// fuzzRelay is the relay of the front ends' fuzz targets: one account
// whose token endpoint does not answer, the login throttle sped up, SMTP and
// POP3 listeners on 127.0.0.1 ports of their own.
func fuzzRelay(f *testing.F) (*proxy.Relay, *config.Config) {
	hash, err := bcrypt.GenerateFromPassword([]byte(fuzzPassword), bcrypt.MinCost)
	if err != nil {
		f.Fatal(err)
	}
	yaml := fmt.Sprintf(`
state_dir: %s
listen:
  smtp: {addr: "127.0.0.1:0"}
  imap: {addr: "off"}
  pop3: {addr: "127.0.0.1:0"}
  admin: {addr: "off"}
providers:
  contoso: {type: microsoft, tenant: contoso.com, client_id: id, client_secret: s, token_url: "http://127.0.0.1:1/token"}
accounts:
  - {name: invoices, provider: contoso, mailbox: %s, username: %s, password_hash: %q}
`, f.TempDir(), fuzzMailbox, fuzzUser, hash)
	cfg, err := config.Parse("fuzz.yaml", []byte(yaml), func(string) (string, bool) { return "", false })
	if err != nil {
		f.Fatal(err)
	}
	relay, err := proxy.NewRelay(cfg, proxy.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	relay.SpeedUpLoginDelays(1000)
	return relay, cfg
}

// fuzzServe serves lc with srv until the fuzz target ends and returns the
// listener's address.
func fuzzServe(f *testing.F, lc config.Listener, srv interface {
	Serve(net.Listener) error
	Close() error
}) string {
	ln, err := proxy.Listen(lc)
	if err != nil {
		f.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	f.Cleanup(func() {
		srv.Close()
		<-served
	})
	return ln.Addr().String()
}

// fuzzSMTPWorld starts the relay's SMTP front end with the account's
// delivery in memory, and returns its address.
func fuzzSMTPWorld(f *testing.F) (string, *memDelivery) {
	relay, cfg := fuzzRelay(f)
	mem := &memDelivery{}
	for _, a := range relay.Accounts() {
		a.Delivery = mem
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	srv, err := smtpfront.New(ctx, relay, cfg.Listen.SMTP)
	if err != nil {
		f.Fatal(err)
	}
	return fuzzServe(f, cfg.Listen.SMTP, srv), mem
}

// converse sends input, half-closes, and returns the reply lines read
// until the relay closes the connection.
func converse(addr string, input []byte) ([]string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(fuzzSessionTimeout)); err != nil {
		return nil, err
	}
	written := make(chan struct{})
	go func() {
		defer close(written)
		// The relay may close before reading it all: a write error is fine.
		if _, err := c.Write(input); err == nil {
			_ = c.(*net.TCPConn).CloseWrite()
		}
	}()
	var lines []string
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		lines = append(lines, strings.TrimSuffix(sc.Text(), "\r"))
	}
	c.Close() // unblocks the writer if the relay stopped reading
	<-written
	if err := sc.Err(); err != nil && !strings.Contains(err.Error(), "connection reset") {
		return lines, err
	}
	return lines, nil
}
