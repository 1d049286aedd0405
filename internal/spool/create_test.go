package spool

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/securefile"
)

// A 20 MB body streams in and out unchanged, and the envelope holds what
// the caller gave plus what Create filled in; every file and directory is
// private.
func TestCreateRoundTrip(t *testing.T) {
	const size = 20 << 20
	clock := newClock()
	s, _ := openSpool(t, filepath.Join(t.TempDir(), "queue"), Options{Now: clock.Now})
	in := testEnvelope("alice@example.net", "bob@example.net")
	in.Mail = Mail{Size: size, Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "QQ314159"}
	in.Recipients[0].Notify = []string{"FAILURE", "DELAY"}
	in.Recipients[0].ORcpt = "rfc822;alice@example.net"
	in.Attempts, in.LastError = 7, "stale" // not the caller's to set

	e, err := s.Create(context.Background(), in, message(42, size), size)
	if err != nil {
		t.Fatal(err)
	}
	if !validID(e.ID) || e.Version != formatVersion || e.Size != size || e.MessageID != "<seed-42@spool.test>" {
		t.Errorf("filled in: id %q version %d size %d message id %q", e.ID, e.Version, e.Size, e.MessageID)
	}
	if !e.Created.Equal(clock.t) || !e.NextAttempt.Equal(clock.t) || e.Attempts != 0 || e.LastError != "" {
		t.Errorf("times and counters: created %v next %v attempts %d last error %q", e.Created, e.NextAttempt, e.Attempts, e.LastError)
	}
	if e.Mail != in.Mail || e.Account != in.Account || e.Mailbox != in.Mailbox || e.From != in.From {
		t.Errorf("given fields changed: %+v", e)
	}
	if len(e.Recipients) != 2 || e.Recipients[1].State != Pending || !slices.Equal(e.Recipients[0].Notify, in.Recipients[0].Notify) ||
		e.Recipients[0].ORcpt != in.Recipients[0].ORcpt {
		t.Errorf("recipients: %+v", e.Recipients)
	}
	got, err := s.Get(e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != e.ID || got.Size != e.Size || !got.Created.Equal(e.Created) || got.Recipients[0].ORcpt != e.Recipients[0].ORcpt {
		t.Errorf("Get returned %+v, Create %+v", got, e)
	}
	if bodyDigest(t, s, e.ID) != digest(t, message(42, size)) {
		t.Error("body read back differs from the body written")
	}
	for _, p := range []string{s.Root(), s.bodyPath(e.ID), s.activePath(e.ID), filepath.Join(s.Root(), lockName)} {
		if err := securefile.CheckPrivate(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// What Create refuses to store leaves nothing behind.
func TestCreateRefusesInvalidEnvelope(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	for name, e := range map[string]Envelope{
		"no recipients":      {Account: "a", Mailbox: "m@x", From: "m@x"},
		"no account":         {Mailbox: "m@x", Recipients: []Recipient{{Addr: "r@x"}}},
		"CRLF in recipient":  testEnvelope("r@x\r\nRCPT TO:<evil@x>"),
		"CRLF in sender":     func() Envelope { e := testEnvelope(); e.From = "a@x\r\nDATA"; return e }(),
		"unknown BODY":       func() Envelope { e := testEnvelope(); e.Mail.Body = "9BIT"; return e }(),
		"unknown NOTIFY":     func() Envelope { e := testEnvelope(); e.Recipients[0].Notify = []string{"ALWAYS"}; return e }(),
		"unknown rcpt state": func() Envelope { e := testEnvelope(); e.Recipients[0].State = "lost"; return e }(),
	} {
		if _, err := s.Create(context.Background(), e, strings.NewReader("x"), 0); err == nil {
			t.Errorf("%s: Create succeeded", name)
		}
	}
	assertEmpty(t, s)
}

// A body over the limit is refused before anything is committed; one of
// exactly the limit is stored.
func TestCreateTooBig(t *testing.T) {
	const limit = 300 << 10 // more than one copy buffer
	s, _ := openSpool(t, t.TempDir(), Options{})
	_, err := s.Create(context.Background(), testEnvelope(), message(1, limit+1), limit)
	if !errors.Is(err, ErrTooBig) {
		t.Fatalf("Create of limit+1 bytes: %v, want ErrTooBig", err)
	}
	assertEmpty(t, s)
	e, err := s.Create(context.Background(), testEnvelope(), message(1, limit), limit)
	if err != nil || e.Size != limit {
		t.Fatalf("Create of exactly the limit: %v, %+v", err, e)
	}
}

// cancelReader cancels a context once it has given n bytes, as an app that
// disconnects mid-body makes the front end do.
type cancelReader struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	m, err := c.r.Read(p)
	if c.n -= int64(m); c.n <= 0 {
		c.cancel()
	}
	return m, err
}

func TestCreateContextCancelledMidBody(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := &cancelReader{r: message(1, 4<<20), n: 1 << 20, cancel: cancel}
	_, err := s.Create(ctx, testEnvelope(), body, 0)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Create: %v, want context.Canceled", err)
	}
	assertEmpty(t, s)
}

// failingReader gives n bytes, then fails as a dropped connection does.
type failingReader struct {
	r io.Reader
	n int64
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	m, err := io.LimitReader(f.r, f.n).Read(p)
	f.n -= int64(m)
	return m, err
}

// The app's failure is a *ReadError, not the spool's: the front end ends
// the session (421) rather than answering 452.
func TestCreateReadError(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	_, err := s.Create(context.Background(), testEnvelope(), &failingReader{r: message(1, 1<<20), n: 600 << 10}, 0)
	var re *ReadError
	if !errors.As(err, &re) || !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Create: %v, want a *ReadError wrapping io.ErrUnexpectedEOF", err)
	}
	assertEmpty(t, s)
}

// A spool directory removed or made unusable under a running relay gives
// ErrUnavailable (452 4.3.1 at the front end), never a stored message, and
// nothing is left behind.
func TestCreateUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, root string)
	}{
		{"spool removed", func(t *testing.T, root string) { os.RemoveAll(root) }},
		{"tmp replaced by a file", func(t *testing.T, root string) { replaceWithFile(t, filepath.Join(root, dirTmp)) }},
		{"body replaced by a file", func(t *testing.T, root string) { replaceWithFile(t, filepath.Join(root, dirBody)) }},
		{"active replaced by a file", func(t *testing.T, root string) { replaceWithFile(t, filepath.Join(root, dirActive)) }},
		{"active read-only", func(t *testing.T, root string) {
			if runtime.GOOS == "windows" || os.Geteuid() == 0 {
				t.Skip("permissions do not stop this user")
			}
			os.Chmod(filepath.Join(root, dirActive), 0o500)
			t.Cleanup(func() { os.Chmod(filepath.Join(root, dirActive), 0o700) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "queue")
			s, _ := openSpool(t, root, Options{})
			tc.spoil(t, root)
			_, err := s.Create(context.Background(), testEnvelope(), message(1, 100<<10), 0)
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("Create: %v, want ErrUnavailable", err)
			}
			for _, d := range []string{dirTmp, dirBody, dirActive} {
				if ents, err := os.ReadDir(filepath.Join(root, d)); err == nil && len(ents) != 0 {
					t.Errorf("%s/ holds %d files after the failure", d, len(ents))
				}
			}
		})
	}
}

func replaceWithFile(t *testing.T, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestMessageID(t *testing.T) {
	long := strings.Repeat("h", headerScanSize)
	for _, tc := range []struct{ name, msg, want string }{
		{"simple", "From: a@x\r\nMessage-ID: <1@x>\r\n\r\nbody", "<1@x>"},
		{"any case, bare LF", "message-id:<2@x>\nSubject: s\n\n", "<2@x>"},
		{"folded", "Message-ID:\r\n <3@x>\r\nSubject: s\r\n\r\n", "<3@x>"},
		{"last header line without line end", "Subject: s\r\nMessage-Id: <4@x>", "<4@x>"},
		{"first of two", "Message-ID: <5@x>\r\nMessage-ID: <6@x>\r\n\r\n", "<5@x>"},
		{"in the body only", "Subject: s\r\n\r\nMessage-ID: <7@x>\r\n", ""},
		{"none", "Subject: s\r\n\r\n", ""},
		{"similar name", "Message-IDs: <8@x>\r\n\r\n", ""},
		{"empty value", "Message-ID:  \r\n\r\n", ""},
		{"cut off by the scan", "Subject: " + long[:headerScanSize-len("Subject: \r\nMessage-ID: <9")] + "\r\nMessage-ID: <9", ""},
	} {
		msg := tc.msg
		if len(msg) > headerScanSize {
			msg = msg[:headerScanSize]
		}
		if got := MessageID([]byte(msg)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// Goroutines creating at once each get their message, complete.
func TestConcurrentCreates(t *testing.T) {
	const workers, each = 4, 10
	s, _ := openSpool(t, t.TempDir(), Options{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				seed := uint64(w*each + i)
				if _, err := s.Create(context.Background(), testEnvelope(), message(seed, 64<<10), 0); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	envs, err := s.List()
	if err != nil || len(envs) != workers*each {
		t.Fatalf("List: %d envelopes, %v; want %d", len(envs), err, workers*each)
	}
	for _, e := range envs {
		seed, _ := seedOf(e.MessageID)
		if bodyDigest(t, s, e.ID) != digest(t, message(seed, 64<<10)) {
			t.Errorf("%s: body differs", e.ID)
		}
	}
}

// Ids are valid, distinct, and sort by creation time.
func TestIDs(t *testing.T) {
	base := newClock().t
	seen := map[string]bool{}
	prev := ""
	for i := range 1000 {
		id := newID(base.Add(time.Duration(i) * time.Millisecond))
		if !validID(id) || seen[id] || id[:idTimeLen] < prev {
			t.Fatalf("id %d %q: valid %v, seen %v, after %q", i, id, validID(id), seen[id], prev)
		}
		seen[id], prev = true, id[:idTimeLen]
	}
	for _, bad := range []string{"", "../../etc/passwd", strings.Repeat("A", idLen), strings.Repeat("0", idLen-1) + "/"} {
		if validID(bad) {
			t.Errorf("validID(%q)", bad)
		}
	}
}
