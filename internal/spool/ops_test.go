package spool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/mail"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// An Update of a message deleted (or failed) meanwhile returns ErrNotFound
// and does not bring it back.
func TestUpdateAfterDeleteOrFail(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	for _, remove := range []func(id string) error{s.Delete, func(id string) error { return s.Fail(id, "550 no") }} {
		e := create(t, s, 1)
		must(t, remove(e.ID))
		e.Attempts = 3
		if err := s.Update(e); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Update: %v, want ErrNotFound", err)
		}
		if _, err := os.Lstat(s.activePath(e.ID)); !os.IsNotExist(err) {
			t.Errorf("envelope back in active/: %v", err)
		}
		if envs, _ := s.List(); len(envs) != 0 {
			t.Errorf("List: %v", envs)
		}
	}
	if _, err := s.Get(newID(time.Now())); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unknown id: %v", err)
	}
}

func TestUpdate(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	e := create(t, s, 1, "a@x", "b@x")
	e.Recipients[0].State, e.Recipients[0].Reply = Delivered, "250 2.1.5 ok"
	e.LastError = "451 4.7.0 try later"
	must(t, s.Update(e))
	got, err := s.Get(e.ID)
	must(t, err)
	if got.Recipients[0].State != Delivered || got.Recipients[0].Reply != "250 2.1.5 ok" || got.Pending() != 1 || got.LastError != e.LastError {
		t.Errorf("after Update: %+v", got)
	}
	bad := got.clone()
	bad.Recipients[1].Addr = "c@x\r\nDATA"
	if err := s.Update(bad); err == nil {
		t.Error("Update accepted an address with CRLF")
	}
}

// List is ordered by next attempt, then creation, then id.
func TestListOrder(t *testing.T) {
	clock := newClock()
	s, _ := openSpool(t, t.TempDir(), Options{Now: clock.Now})
	var ids []string
	for i := range 4 {
		ids = append(ids, create(t, s, uint64(i)).ID)
		clock.t = clock.t.Add(time.Second)
	}
	// Due times: ids[2] first, then ids[0] and ids[3] at the same time
	// (creation decides), then ids[1].
	due := map[string]time.Duration{ids[0]: 10 * time.Minute, ids[1]: time.Hour, ids[2]: time.Minute, ids[3]: 10 * time.Minute}
	for id, d := range due {
		e, err := s.Get(id)
		must(t, err)
		e.NextAttempt = newClock().t.Add(d)
		must(t, s.Update(e))
	}
	envs, err := s.List()
	must(t, err)
	var got []string
	for _, e := range envs {
		got = append(got, e.ID)
	}
	if want := []string{ids[2], ids[0], ids[3], ids[1]}; !slices.Equal(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
}

func TestRetry(t *testing.T) {
	clock := newClock()
	s, _ := openSpool(t, t.TempDir(), Options{Now: clock.Now})
	e := create(t, s, 1)
	e.NextAttempt = clock.t.Add(time.Hour)
	must(t, s.Update(e))
	clock.t = clock.t.Add(time.Minute)
	must(t, s.Retry(e.ID))
	got, err := s.Get(e.ID)
	must(t, err)
	if !got.NextAttempt.Equal(clock.t) {
		t.Errorf("next attempt %v, want %v", got.NextAttempt, clock.t)
	}
	must(t, s.Fail(e.ID, "550 no"))
	if err := s.Retry(e.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Retry of a failed message: %v", err)
	}
}

// Fail keeps the message in the failed area (Get, ListFailed, OpenBody,
// Export work; List, Claim do not see it), and ExpireFailed removes it with
// its body once keep_failed has passed, and only then.
func TestFailAndExpire(t *testing.T) {
	const keep = 7 * 24 * time.Hour
	clock := newClock()
	s, _ := openSpool(t, t.TempDir(), Options{Now: clock.Now})
	old, young, active := create(t, s, 1), create(t, s, 2), create(t, s, 3)
	must(t, s.Fail(old.ID, "550 5.1.1 unknown user"))
	clock.t = clock.t.Add(24 * time.Hour)
	must(t, s.Fail(young.ID, "age limit"))

	got, err := s.Get(old.ID)
	if err != nil || got.FailReason != "550 5.1.1 unknown user" || !got.Failed.Equal(newClock().t) {
		t.Errorf("failed envelope: %+v, %v", got, err)
	}
	if envs, _ := s.List(); len(envs) != 1 || envs[0].ID != active.ID {
		t.Errorf("List: %v", envs)
	}
	if failed, _ := s.ListFailed(); len(failed) != 2 || failed[0].ID != old.ID {
		t.Errorf("ListFailed: %v", failed)
	}
	if _, err := s.Claim(old.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Claim of a failed message: %v", err)
	}
	if bodyDigest(t, s, old.ID) != digest(t, message(1, 2000)) {
		t.Error("failed message's body")
	}

	removed, err := s.ExpireFailed(keep, newClock().t.Add(keep-time.Second))
	if err != nil || len(removed) != 0 {
		t.Fatalf("ExpireFailed before keep_failed: %v, %v", removed, err)
	}
	removed, err = s.ExpireFailed(keep, newClock().t.Add(keep))
	if err != nil || !slices.Equal(removed, []string{old.ID}) {
		t.Fatalf("ExpireFailed: %v, %v; want %s", removed, err, old.ID)
	}
	if _, err := s.Get(old.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired message: %v", err)
	}
	if _, err := os.Lstat(s.bodyPath(old.ID)); !os.IsNotExist(err) {
		t.Errorf("expired message's body: %v", err)
	}
	if _, err := s.Get(young.ID); err != nil {
		t.Errorf("young failed message: %v", err)
	}
}

func TestDelete(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	e, f := create(t, s, 1), create(t, s, 2)
	must(t, s.Fail(f.ID, "550"))
	for _, id := range []string{e.ID, f.ID} {
		must(t, s.Delete(id))
		if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete: %v", err)
		}
		if err := s.Delete(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Delete: %v", err)
		}
	}
	assertEmpty(t, s)
}

// Claims exclude each other within one process too; release is
// idempotent; a claimed message can still be deleted, and the claimant
// learns it at its Update, while its open body still reads.
func TestClaim(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	e := create(t, s, 1)
	release, err := s.Claim(e.ID)
	must(t, err)
	if _, err := s.Claim(e.ID); !errors.Is(err, ErrClaimed) {
		t.Fatalf("second Claim: %v, want ErrClaimed", err)
	}
	release()
	release()
	release, err = s.Claim(e.ID)
	must(t, err)
	defer release()

	body, err := s.OpenBody(e.ID)
	must(t, err)
	defer body.Close()
	must(t, s.Delete(e.ID))
	if err := s.Update(e); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update of a message deleted under the claim: %v", err)
	}
	if digest(t, body) != digest(t, message(1, 2000)) {
		t.Error("open body no longer reads after Delete")
	}
	if _, err := s.Claim(e.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Claim of a deleted message: %v", err)
	}
}

// BeginAttempt tells whether an earlier attempt ended without recording
// its outcome: the possible duplicate the relay counts.
func TestBeginAttempt(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	e := create(t, s, 1)
	env, interrupted, err := s.BeginAttempt(e.ID)
	if err != nil || interrupted || env.InFlight.IsZero() || env.Attempts != 1 {
		t.Fatalf("first attempt: %+v, %v, %v", env, interrupted, err)
	}
	// The process dies here: InFlight stays on disk.
	env, interrupted, err = s.BeginAttempt(e.ID)
	if err != nil || !interrupted || env.Attempts != 2 {
		t.Fatalf("after an interrupted attempt: %+v, %v, %v", env, interrupted, err)
	}
	env.InFlight = time.Time{}
	must(t, s.Update(env))
	if _, interrupted, _ := s.BeginAttempt(e.ID); interrupted {
		t.Error("an attempt whose outcome was recorded counted as interrupted")
	}
	if st, _ := s.Stats(); st.InFlight != 1 {
		t.Errorf("Stats.InFlight %d", st.InFlight)
	}
}

func TestStats(t *testing.T) {
	clock := newClock()
	s, _ := openSpool(t, t.TempDir(), Options{Now: clock.Now})
	first := create(t, s, 1)
	clock.t = clock.t.Add(time.Minute)
	other := testEnvelope()
	other.Account = "alerts"
	_, err := s.Create(context.Background(), other, message(2, 100), 0)
	must(t, err)
	failed := create(t, s, 3)
	must(t, s.Fail(failed.ID, "550"))

	st, err := s.Stats()
	must(t, err)
	if st.Depth != 2 || st.Failed != 1 || !st.Oldest.Equal(first.Created) || !st.NextAttempt.Equal(first.NextAttempt) {
		t.Errorf("stats %+v", st)
	}
	b, a := st.Accounts["billing"], st.Accounts["alerts"]
	if b == nil || a == nil || b.Depth != 1 || b.Failed != 1 || a.Depth != 1 || !a.Oldest.Equal(clock.t) {
		t.Errorf("per account: billing %+v alerts %+v", b, a)
	}
	empty, _ := openSpool(t, t.TempDir(), Options{})
	if st, err := empty.Stats(); err != nil || st.Depth != 0 || !st.Oldest.IsZero() {
		t.Errorf("empty: %+v, %v", st, err)
	}
}

// An envelope corrupted while the relay runs is reported by List, and the
// others are still listed.
func TestListReportsCorruptEnvelope(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	good, bad := create(t, s, 1), create(t, s, 2)
	must(t, os.WriteFile(s.activePath(bad.ID), []byte("{"), 0o600))
	envs, err := s.List()
	if err == nil || !strings.Contains(err.Error(), bad.ID) || len(envs) != 1 || envs[0].ID != good.ID {
		t.Errorf("List: %v, %v", envs, err)
	}
}

// Export is an .eml: the envelope as header fields, then the stored body
// byte for byte.
func TestExport(t *testing.T) {
	s, _ := openSpool(t, t.TempDir(), Options{})
	in := testEnvelope("alice@example.net", "bob@example.net")
	in.Mail = Mail{Body: "8BITMIME", EnvID: "E1"}
	in.Recipients[0].Notify = []string{"NEVER"}
	body := "Message-ID: <x@y>\r\nSubject: Invoice 4711\r\n\r\nHello\r\nFrom the start\r\n"
	e, err := s.Create(context.Background(), in, strings.NewReader(body), 0)
	must(t, err)
	e.Recipients[1].State, e.Recipients[1].Reply = Delivered, "250 2.1.5 Recipient OK\r\n250 queued as ABC"
	must(t, s.Update(e))

	var out bytes.Buffer
	must(t, s.Export(e.ID, &out))
	header, rest, ok := strings.Cut(out.String(), "Return-Path: <billing@contoso.example>\r\n")
	if !ok || rest != body {
		t.Fatalf("export does not end with Return-Path and the body:\n%s", out.String())
	}
	msg, err := mail.ReadMessage(strings.NewReader(out.String()))
	must(t, err)
	h := msg.Header
	if h.Get("X-Oauthrelay-Queue-Id") != e.ID || h.Get("X-Oauthrelay-State") != "active" || h.Get("Subject") != "Invoice 4711" ||
		h.Get("X-Oauthrelay-Mail-Options") != "BODY=8BITMIME ENVID=E1" {
		t.Errorf("header fields:\n%s", header)
	}
	rcpts := h["X-Oauthrelay-Recipient"]
	if len(rcpts) != 2 || rcpts[0] != "<alice@example.net> pending; notify=NEVER" ||
		rcpts[1] != `<bob@example.net> delivered; reply="250 2.1.5 Recipient OK\r\n250 queued as ABC"` {
		t.Errorf("recipients %q", rcpts)
	}
	if text, _ := io.ReadAll(msg.Body); string(text) != "Hello\r\nFrom the start\r\n" {
		t.Errorf("body %q", text)
	}

	lf, err := s.Create(context.Background(), testEnvelope(), strings.NewReader("Subject: s\n\nbody\n"), 0)
	must(t, err)
	out.Reset()
	must(t, s.Export(lf.ID, &out))
	if strings.Contains(out.String(), "\r") {
		t.Errorf("a bare-LF body got CRLF header fields: %q", out.String())
	}
	if err := s.Export(newID(time.Now()), &out); !errors.Is(err, ErrNotFound) {
		t.Errorf("Export of an unknown id: %v", err)
	}
}

func TestExportValue(t *testing.T) {
	long := strings.Repeat("é", maxExportValue) // 2 bytes each
	got := exportValue("a\r\nb\tc" + long)
	if !strings.HasPrefix(got, "a  b c") || len(got) > maxExportValue+3 || !strings.HasSuffix(got, "...") || !strings.HasSuffix(got, "é...") {
		t.Errorf("exportValue: %q (%d bytes)", got[:20], len(got))
	}
}
