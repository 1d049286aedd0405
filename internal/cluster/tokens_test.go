package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/testutil"
)

// The token state's primitives: a compare-and-swap that one of two
// writers of the same old value wins (and "" deletes), and a lease per
// account held by one holder, even two of one instance.
func TestTokens(t *testing.T) {
	r := testutil.StartRedis(t)
	a, b := open(t, r, "a").Tokens(), open(t, r, "b").Tokens()
	ctx := context.Background()
	if v, err := a.Get(ctx, "acct"); err != nil || v != "" {
		t.Fatalf("empty: %q %v", v, err)
	}
	if ok, err := a.Swap(ctx, "acct", "", "v1"); !ok || err != nil {
		t.Fatalf("first write: %v %v", ok, err)
	}
	okA, _ := a.Swap(ctx, "acct", "v1", "v2a")
	okB, _ := b.Swap(ctx, "acct", "v1", "v2b")
	if okA == okB {
		t.Fatalf("two swaps of one old value: %v %v", okA, okB)
	}
	if v, _ := b.Get(ctx, "acct"); v != "v2a" {
		t.Fatalf("value %q, want the winner's", v)
	}
	if ok, _ := b.Swap(ctx, "acct", "v2a", ""); !ok {
		t.Fatal("delete")
	}
	if v, _ := a.Get(ctx, "acct"); v != "" {
		t.Fatalf("deleted value is %q", v)
	}

	if ok, err := a.Lease(ctx, "acct", "a/1", time.Second); !ok || err != nil {
		t.Fatalf("lease: %v %v", ok, err)
	}
	if ok, _ := a.Lease(ctx, "acct", "a/2", time.Second); ok {
		t.Fatal("a second holder of the same instance got the lease")
	}
	if ok, _ := b.Lease(ctx, "acct", "b/1", time.Second); ok {
		t.Fatal("another instance got the lease")
	}
	if ok, _ := a.Lease(ctx, "acct", "a/1", time.Second); !ok {
		t.Fatal("the holder could not renew")
	}
	if err := b.Release(ctx, "acct", "b/1"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.Lease(ctx, "acct", "b/1", time.Second); ok {
		t.Fatal("a release by another holder freed the lease")
	}
	if err := a.Release(ctx, "acct", "a/1"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.Lease(ctx, "acct", "b/1", 200*time.Millisecond); !ok {
		t.Fatal("a released lease was not free")
	}
	time.Sleep(300 * time.Millisecond) // b/1 "dies"
	if ok, _ := a.Lease(ctx, "acct", "a/1", time.Second); !ok {
		t.Fatal("an expired lease was not free")
	}
}
