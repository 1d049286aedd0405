package oauth

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
)

// answerHold is how long the fake holds the token request that is in
// progress when Run is stopped: long enough that a Run which does not wait
// for it returns first.
const answerHold = 200 * time.Millisecond

// TestRunWaitsForItsRefresh: a background refresh in progress when Run's
// context ends completes before Run returns, rotated refresh token saved and
// access token cached; nothing of the refresher outlives Run.
func TestRunWaitsForItsRefresh(t *testing.T) {
	f := newFakeIdP(t)
	store := newMemStore()
	rt := f.issueRT()
	store.recs["invoices"] = tokenstore.Record{RefreshToken: rt}
	arrived := make(chan struct{}, 1)
	f.set(func(f *fakeIdP) {
		f.respond = func(url.Values) (int, any, http.Header) {
			select {
			case arrived <- struct{}{}:
			default:
			}
			time.Sleep(answerHold)
			return 0, nil, nil // the default answer: a new token, the refresh token rotated
		}
	})
	s := mustSource(t, testAccount(f, "authorization_code"), Options{Store: store})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	<-arrived
	cancel()
	<-done

	if got := store.rt("invoices"); got == rt || got == "" {
		t.Errorf("after Run returned the store holds %q, want the rotated refresh token (old %q)", got, rt)
	}
	if st := s.State(); st.Expiry.IsZero() || st.Status != StatusOK {
		t.Errorf("after Run returned: State %+v, want the refreshed token cached", st)
	}
}
