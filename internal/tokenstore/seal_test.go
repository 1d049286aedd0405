package tokenstore

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The shared copy is sealed as a file is: it opens with the same key and
// account only, says which key sealed it, and keeps the access tokens a
// file never holds.
func TestSealUnseal(t *testing.T) {
	a, err := Open(t.TempDir(), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(t.TempDir(), testKey(2))
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Round(0)
	r := Record{RefreshToken: "rt", Generation: 3, SignedIn: time.Now().Round(0), By: "relay-a",
		Access: map[string]AccessToken{"scope": {Token: "at", Expiry: exp, Lifetime: time.Hour}}}
	sealed, err := a.Seal("invoices", r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Unseal("invoices", sealed)
	if err != nil || got.RefreshToken != "rt" || got.Generation != 3 || got.Access["scope"].Token != "at" || !got.Access["scope"].Expiry.Equal(exp) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := b.Unseal("invoices", sealed); !errors.Is(err, ErrDecrypt) || !errors.Is(err, ErrOtherKey) ||
		!strings.Contains(err.Error(), a.KeyFingerprint()) || !strings.Contains(err.Error(), b.KeyFingerprint()) {
		t.Fatalf("another key: %v", err)
	}
	if _, err := a.Unseal("sales", sealed); !errors.Is(err, ErrDecrypt) || errors.Is(err, ErrOtherKey) {
		t.Fatalf("another account: %v", err)
	}
	if _, err := a.Unseal("invoices", []byte("garbage")); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("garbage: %v", err)
	}
	// A file never holds access tokens.
	if err := a.Save("invoices", r); err != nil {
		t.Fatal(err)
	}
	if f, err := a.Load("invoices"); err != nil || f.Access != nil || f.Generation != 3 {
		t.Fatalf("file: %+v, %v", f, err)
	}
}

func TestRecordNewer(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		name string
		a, b Record
		want bool
	}{
		{"later rotation", Record{SignedIn: t0, Generation: 2}, Record{SignedIn: t0, Generation: 1}, true},
		{"earlier rotation", Record{SignedIn: t0, Generation: 1}, Record{SignedIn: t0, Generation: 2}, false},
		{"same", Record{SignedIn: t0, Generation: 1}, Record{SignedIn: t0, Generation: 1}, false},
		{"later sign-in beats more rotations", Record{SignedIn: t0.Add(time.Minute)}, Record{SignedIn: t0, Generation: 90}, true},
		{"a record from before generations", Record{}, Record{SignedIn: t0}, false},
		{"against a record from before generations", Record{Generation: 1}, Record{}, true},
	} {
		if got := c.a.Newer(c.b); got != c.want {
			t.Errorf("%s: Newer = %v", c.name, got)
		}
	}
}
