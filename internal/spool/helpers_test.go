package spool

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Child processes of the test binary (see child_test.go) are told what to
// do through these variables.
const (
	childRoleEnv = "SPOOL_TEST_CHILD"
	childDirEnv  = "SPOOL_TEST_DIR"
	childArgEnv  = "SPOOL_TEST_ARG"
)

// TestMain runs a child's role when the binary was started as one, and
// otherwise the tests, failing them if a goroutine outlives them.
func TestMain(m *testing.M) {
	if role := os.Getenv(childRoleEnv); role != "" {
		os.Exit(runChild(role, os.Getenv(childDirEnv), os.Getenv(childArgEnv)))
	}
	goleak.VerifyTestMain(m)
}

// testClock is a settable clock for Options.Now.
type testClock struct{ t time.Time }

func (c *testClock) Now() time.Time { return c.t }

func newClock() *testClock {
	return &testClock{t: time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)}
}

// openSpool opens the spool in dir and closes it at the end of the test.
func openSpool(t testing.TB, dir string, opts Options) (*Spool, *Recovery) {
	t.Helper()
	s, rec, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s, rec
}

// testEnvelope is what the queue delivery hands to Create.
func testEnvelope(rcpts ...string) Envelope {
	if len(rcpts) == 0 {
		rcpts = []string{"alice@example.net"}
	}
	e := Envelope{Account: "billing", Mailbox: "billing@contoso.example", From: "billing@contoso.example"}
	for _, r := range rcpts {
		e.Recipients = append(e.Recipients, Recipient{Addr: r})
	}
	return e
}

// message streams a deterministic message of size bytes (at least its
// header) generated from seed, never held in memory: a header with
// Message-ID <seed-N@spool.test>, then pseudo-random bytes.
func message(seed uint64, size int64) io.Reader {
	hdr := fmt.Sprintf("Message-ID: <seed-%d@spool.test>\r\nSubject: test\r\n\r\n", seed)
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	payload := io.LimitReader(rand.NewChaCha8(key), max(size-int64(len(hdr)), 0))
	return io.MultiReader(strings.NewReader(hdr), payload)
}

// seedOf returns the seed of a message made by message, from its
// Message-ID.
func seedOf(messageID string) (uint64, bool) {
	var seed uint64
	_, err := fmt.Sscanf(messageID, "<seed-%d@spool.test>", &seed)
	return seed, err == nil
}

func digest(t testing.TB, r io.Reader) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// bodyDigest is the digest of message id's stored body.
func bodyDigest(t testing.TB, s *Spool, id string) [32]byte {
	t.Helper()
	f, err := s.OpenBody(id)
	if err != nil {
		t.Fatalf("OpenBody(%s): %v", id, err)
	}
	defer f.Close()
	return digest(t, f)
}

// create stores a small message and returns its envelope.
func create(t testing.TB, s *Spool, seed uint64, rcpts ...string) *Envelope {
	t.Helper()
	e, err := s.Create(context.Background(), testEnvelope(rcpts...), message(seed, 2000), 0)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return e
}

// names lists the entries of dir (sorted).
func names(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range ents {
		out = append(out, de.Name())
	}
	return out
}

// assertEmpty fails unless the spool holds no message and no file in tmp/
// or body/: what every refused Create must leave.
func assertEmpty(t *testing.T, s *Spool) {
	t.Helper()
	envs, err := s.List()
	if err != nil || len(envs) != 0 {
		t.Errorf("List: %d envelopes, %v; want none", len(envs), err)
	}
	for _, d := range []string{dirTmp, dirBody, dirActive} {
		if n := names(t, filepath.Join(s.Root(), d)); len(n) != 0 {
			t.Errorf("%s/ holds %q, want nothing", d, n)
		}
	}
}

// age sets a file's times back by d.
func age(t testing.TB, path string, d time.Duration) {
	t.Helper()
	old := time.Now().Add(-d)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

// newRand is a random source whose seed is logged, so a failing run can be
// repeated.
func newRand(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, 0))
}
