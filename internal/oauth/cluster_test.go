package oauth

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/cluster"
	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// Several relay instances sharing one delegated grant through a real
// redis-server, in front of the fake Entra with no refresh token grace: a
// refresh token redeemed after its rotation is invalid_grant at once, so
// a single double redemption shows.

// relayInstance is what one relay process has for token state: its own
// token files and its connection to the shared store.
type relayInstance struct {
	name  string
	cl    *cluster.Store
	local *tokenstore.Store
	store *ClusterStore
}

func newRelayInstance(t *testing.T, r *testutil.Redis, name string, key byte) *relayInstance {
	t.Helper()
	cl, err := cluster.Open(config.Cluster{Store: r.URL, Instance: name}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cl.Join()
	t.Cleanup(func() { cl.Close() })
	local := openStore(t, t.TempDir(), key)
	return &relayInstance{name: name, cl: cl, local: local, store: NewClusterStore(local, cl.Tokens(), testLogger(t))}
}

// source is a Source of the instance, running its refresher until the
// test ends; graph picks Microsoft Graph's scopes (a second Source of the
// same account redeeming the same refresh token).
func (in *relayInstance) source(t *testing.T, w *msWorld, acct *config.Account, graph bool) *Source {
	t.Helper()
	o := w.opts(t, in.store)
	o.Logger = testLogger(t).With("relay", in.name)
	if graph {
		o.Scopes, o.Resource = graphDelegated, "graph"
	}
	s := mustSource(t, acct, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// hammer calls Token on every source from 3 goroutines each until stop,
// with invalidate now and then dropping the token (an upstream that
// refused it, which forces a refresh at once), and counts calls and
// failures.
func hammer(t *testing.T, srcs []*Source, invalidate bool, stop <-chan struct{}) (calls, failures *atomic.Int64, wait func()) {
	calls, failures = new(atomic.Int64), new(atomic.Int64)
	var wg sync.WaitGroup
	for i, s := range srcs {
		for g := range 3 {
			wg.Go(func() {
				for n := 0; n < 100_000; n++ {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					_, err := s.Token(ctx)
					cancel()
					calls.Add(1)
					if err != nil {
						failures.Add(1)
						t.Errorf("source %d: Token: %v", i, err)
						return
					}
					if invalidate && g == 0 && n%40 == 39 {
						s.Invalidate()
					}
					time.Sleep(5 * time.Millisecond)
				}
			})
		}
	}
	return calls, failures, wg.Wait
}

// TestClusterConcurrentRefreshes: three instances, each with an Exchange
// and a Graph source of one delegated account, refresh a 1-second access
// token for several seconds while logins call Token and some invalidate
// it: the fake never sees a refresh token redeemed twice, and every
// Token call succeeds.
func TestClusterConcurrentRefreshes(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1, TokenLifetime: time.Second})
	acct := w.account(appSecret, grantAuthCode)
	var srcs []*Source
	for i, name := range []string{"relay-a", "relay-b", "relay-c"} {
		in := newRelayInstance(t, r, name, 9)
		if i == 0 {
			// Signed in on one instance only: the others get it
			// through the store.
			if err := in.store.Save(acct.Name, tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appSecret, msMailbox), SignedIn: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		srcs = append(srcs, in.source(t, w, acct, false), in.source(t, w, acct, true))
	}
	stop := make(chan struct{})
	calls, failures, wait := hammer(t, srcs, true, stop)
	time.Sleep(5 * time.Second)
	close(stop)
	wait()
	reqs := w.ms.TokenRequests()
	t.Logf("%d Token calls on 6 sources of 3 instances, %d token requests, token errors %v", calls.Load(), reqs, w.ms.TokenErrors())
	if n := w.ms.InvalidGrants(); n != 0 {
		t.Fatalf("the fake answered invalid_grant %d times: a refresh token was redeemed twice", n)
	}
	if failures.Load() != 0 {
		t.Fatalf("%d Token calls failed", failures.Load())
	}
	// 5 s of 1 s tokens for two resources: about 20 refreshes in the
	// cluster (plus the invalidations), not one per instance.
	if reqs < 10 {
		t.Fatalf("only %d token requests: the refreshes did not happen", reqs)
	}
}

// TestClusterStoreOutage: the store is stopped during refreshes for less
// than what remains of the access tokens after they are due: the
// instances keep their tokens (no refresh token is redeemed in the
// dark), and when the store is back — empty, it restarted — they publish
// their copies, the newest wins, and refreshing goes on: no invalid_grant,
// no failed Token call.
func TestClusterStoreOutage(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1, TokenLifetime: 6 * time.Second})
	acct := w.account(appSecret, grantAuthCode)
	var srcs []*Source
	var ins []*relayInstance
	for i, name := range []string{"relay-a", "relay-b", "relay-c"} {
		in := newRelayInstance(t, r, name, 9)
		ins = append(ins, in)
		if i == 0 {
			if err := in.store.Save(acct.Name, tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appSecret, msMailbox), SignedIn: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		srcs = append(srcs, in.source(t, w, acct, false))
	}
	stop := make(chan struct{})
	// No invalidation: a token the upstream refused while the store is
	// away must be replaced alone, which is a race by nature.
	calls, failures, wait := hammer(t, srcs, false, stop)
	time.Sleep(2 * time.Second)
	r.Stop()
	time.Sleep(time.Second)
	r.Start()
	// Through at least two more lifetimes of the access token.
	time.Sleep(9 * time.Second)
	close(stop)
	wait()
	t.Logf("%d Token calls, %d token requests, token errors %v", calls.Load(), w.ms.TokenRequests(), w.ms.TokenErrors())
	if n := w.ms.InvalidGrants(); n != 0 {
		t.Fatalf("the fake answered invalid_grant %d times", n)
	}
	if failures.Load() != 0 {
		t.Fatalf("%d Token calls failed", failures.Load())
	}
	for _, in := range ins {
		if !in.cl.Healthy() {
			t.Fatalf("%s: the store is not back", in.name)
		}
	}
}

// TestClusterAloneThenReconcile: with the store down an instance keeps
// working alone (it redeems its own copy as a single relay does), and
// when the store comes back its newer rotation wins: an instance with an
// older local copy takes the store's instead of publishing its own, and
// redeems the right one.
func TestClusterAloneThenReconcile(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1, TokenLifetime: 2 * time.Second})
	acct := w.account(appSecret, grantAuthCode)
	a, b := newRelayInstance(t, r, "relay-a", 5), newRelayInstance(t, r, "relay-b", 5)
	if err := a.store.Save(acct.Name, tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appSecret, msMailbox), SignedIn: time.Now()}); err != nil {
		t.Fatal(err)
	}
	sa := a.source(t, w, acct, false)
	sb := mustSource(t, acct, w.opts(t, b.store)) // no refresher: b is idle
	if _, err := sb.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	// a has its token too (b's, or its own) before the store goes: were a
	// still waiting for b's refresh, it would rightly not redeem alone.
	if _, err := sa.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	before, _ := b.local.Load(acct.Name) // b's local copy: the generation both know

	r.Stop()
	// a goes on alone through several lifetimes of its tokens.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := sa.Token(context.Background()); err != nil {
			t.Fatalf("a alone: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	alone, err := a.local.Load(acct.Name)
	if err != nil || alone.Generation <= before.Generation {
		t.Fatalf("a's local copy after the outage: generation %d (before %d), %v", alone.Generation, before.Generation, err)
	}

	r.Start() // empty: the store lost everything
	deadline = time.Now().Add(10 * time.Second)
	for {
		raw, err := a.cl.Tokens().Get(context.Background(), acct.Name)
		if err == nil && raw != "" {
			rec, err := a.local.Unseal(acct.Name, []byte(raw))
			if err != nil {
				t.Fatal(err)
			}
			if rec.Generation >= alone.Generation {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("a did not publish its rotation when the store came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// b, whose copy is older, must take a's: its token is long expired,
	// so it refreshes with the store's refresh token, not its own.
	sb.Invalidate()
	if _, err := sb.Token(context.Background()); err != nil {
		t.Fatalf("b after the store came back: %v", err)
	}
	if n := w.ms.InvalidGrants(); n != 0 {
		t.Fatalf("invalid_grant %d times: b redeemed its older copy", n)
	}
	if got, _ := b.local.Load(acct.Name); got.Generation < alone.Generation {
		t.Fatalf("b's local copy is generation %d, the store's at least %d", got.Generation, alone.Generation)
	}
}

// TestClusterSignInReachesOthers: an account no instance is signed in to
// needs a sign-in on every instance; a sign-in on one of them reaches the
// refresher of another through the store within a few seconds.
func TestClusterSignInReachesOthers(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1})
	acct := w.account(appPublic, grantDeviceCode)
	a, b := newRelayInstance(t, r, "relay-a", 3), newRelayInstance(t, r, "relay-b", 3)
	sb := b.source(t, w, acct, false)
	if _, err := sb.Token(context.Background()); asError(t, err).Class != NeedsSignIn {
		t.Fatalf("before any sign-in: %v", err)
	}
	// The end of a sign-in on a: what LoginDevice saves.
	signer := mustSource(t, acct, w.opts(t, a.store))
	if err := signer.saveSignIn(&oauth2.Token{RefreshToken: w.ms.IssueRefreshToken(appPublic, msMailbox)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2*signInPoll + 3*time.Second)
	for sb.State().Status != StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("b did not pick up the sign-in made on a: %+v", sb.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := sb.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := w.ms.InvalidGrants(); n != 0 {
		t.Fatalf("invalid_grant %d times", n)
	}
}

// TestClusterKeyMismatch: an instance whose key differs from the others'
// says so, refreshes nothing, and leaves the shared record as it was.
func TestClusterKeyMismatch(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	w := newMSWorld(t, fakems.Options{RefreshTokenGrace: -1})
	acct := w.account(appSecret, grantAuthCode)
	a, odd := newRelayInstance(t, r, "relay-a", 1), newRelayInstance(t, r, "relay-odd", 2)
	if err := a.store.Save(acct.Name, tokenstore.Record{RefreshToken: w.ms.IssueRefreshToken(appSecret, msMailbox), SignedIn: time.Now()}); err != nil {
		t.Fatal(err)
	}
	raw, err := a.cl.Tokens().Get(context.Background(), acct.Name)
	if err != nil || raw == "" {
		t.Fatalf("nothing shared: %v", err)
	}
	requests := w.ms.TokenRequests()
	so := mustSource(t, acct, w.opts(t, odd.store))
	_, err = so.Token(context.Background())
	e := asError(t, err)
	if e.Class != NeedsSignIn || !strings.Contains(e.Reason, "same state key") || !strings.Contains(e.Err.Error(), "another key") {
		t.Fatalf("key mismatch: %v", err)
	}
	if err := odd.store.Save(acct.Name, tokenstore.Record{RefreshToken: "other", SignedIn: time.Now()}); err == nil || !strings.Contains(err.Error(), "not in the shared store") {
		t.Fatalf("a sign-in with another key: %v", err)
	}
	if now, _ := a.cl.Tokens().Get(context.Background(), acct.Name); now != raw {
		t.Fatal("the shared record was overwritten by an instance with another key")
	}
	if w.ms.TokenRequests() != requests {
		t.Fatal("the instance with another key made a token request")
	}
	sa := mustSource(t, acct, w.opts(t, a.store))
	if _, err := sa.Token(context.Background()); err != nil {
		t.Fatalf("an instance with the right key: %v", err)
	}
}
