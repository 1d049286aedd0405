package proxy

import (
	"context"
	"fmt"
	"github.com/oauthrelay/oauthrelay/internal/delivery"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/events"
)

const wideAccounts = `
  - name: wide
    provider: p
    mailbox: "*@contoso.com"
    password_hash: "%s"
    delivery: %s
`

// A login by mailbox address gets the account's view for that mailbox,
// whatever case or trailing dot it was written with; the view shares the
// token source, names the mailbox in events and logs in as it.
func TestLoginByMailbox(t *testing.T) {
	for _, mode := range []string{"direct", "queue"} {
		t.Run(mode, func(t *testing.T) {
			r := testRelay(t, fmt.Sprintf(wideAccounts, hash(t, "pw"), mode))
			ctx := context.Background()
			addr := netip.MustParseAddr("127.0.0.1")
			a, err := r.Login(ctx, addr, "Invoices@Contoso.COM.", "pw")
			if err != nil {
				t.Fatal(err)
			}
			if a.Mailbox != "invoices@contoso.com" || a.Base().Name != "wide" || a.Source != a.Base().Source {
				t.Fatalf("view %q of %q", a.Mailbox, a.Base().Name)
			}
			if got := a.Target(events.IMAP); got.Account.Mailbox != "invoices@contoso.com" || !got.CheckMailbox {
				t.Errorf("IMAP target %+v", got)
			}
			b, _ := r.Login(ctx, addr, "invoices@contoso.com", "pw")
			if b != a {
				t.Error("a second login to the mailbox got another view")
			}
			for _, trick := range []string{"invoices@contoso.com@evil.com", "invoices%evil.com@contoso.com", "x@fabrikam.com"} {
				_, err := r.Login(ctx, addr, trick, "pw")
				wantFailure(t, err, BadCredentials)
			}
		})
	}
}

// Failed logins count per mailbox address: three spellings of one
// address share one schedule, so the fourth failure is held.
func TestThrottlePerMailbox(t *testing.T) {
	r := testRelay(t, fmt.Sprintf(wideAccounts, hash(t, "pw"), "direct"))
	p := newProbe(r)
	ctx := context.Background()
	for _, name := range []string{"Invoices@contoso.com", "invoices@CONTOSO.com.", "INVOICES@contoso.com"} {
		err, d := p.attempt(r, ctx, "127.0.0.1", name, "wrong")
		wantFailure(t, err, BadCredentials)
		if d != 0 {
			t.Fatalf("%s held %v within the free failures", name, d)
		}
	}
	err, d := p.attempt(r, ctx, "127.0.0.1", "invoices@contoso.com", "wrong")
	wantFailure(t, err, BadCredentials)
	if d != time.Second {
		t.Errorf("the fourth failure for the address was held %v, want 1s", d)
	}
	if err, d := p.attempt(r, ctx, "127.0.0.1", "sales@contoso.com", "wrong"); d != 0 {
		t.Errorf("another mailbox held %v (%v): its count is its own", d, err)
	}
}

// Each mailbox of a domain-wide account has its own Sender, with the
// account's limits.
func TestSenderPerMailbox(t *testing.T) {
	r := testRelay(t, fmt.Sprintf(wideAccounts+"    limits: {messages_per_minute: 7}\n", hash(t, "pw"), "direct"))
	a := r.Accounts()[0]
	cfg := r.Config()
	s1, s2 := r.sender(cfg, a, "a@contoso.com"), r.sender(cfg, a, "b@contoso.com")
	if s1 == s2 || r.sender(cfg, a, "A@contoso.com") != s1 {
		t.Fatal("senders not one per mailbox")
	}
	var seen []string
	r.EachSender(func(mailbox, _ string, st delivery.Stats) {
		seen = append(seen, mailbox)
		if st.Limits.MessagesPerMinute != 7 {
			t.Errorf("%s: %d messages a minute, want the account's 7", mailbox, st.Limits.MessagesPerMinute)
		}
	})
	if len(seen) != 2 {
		t.Errorf("senders %v", seen)
	}
	// A reload keeps them: the mailboxes are still the account's.
	ctx, cancel := context.WithCancel(context.Background())
	err := r.Reload(ctx, cfg)
	cancel()
	r.refreshers.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if r.sender(cfg, r.Accounts()[0], "a@contoso.com") != s1 {
		t.Error("a reload replaced the sender of a mailbox still in use")
	}
}

// Concurrent logins to a domain-wide account's mailboxes share one view
// and one delivery per mailbox (run with -race).
func TestViewsConcurrent(t *testing.T) {
	r := testRelay(t, fmt.Sprintf(wideAccounts, hash(t, "pw"), "direct"))
	ctx := context.Background()
	addr := netip.MustParseAddr("127.0.0.1")
	const workers, each, mailboxes = 8, 40, 5
	views := make([][]*Account, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				v, err := r.Login(ctx, addr, fmt.Sprintf("m%d@contoso.com", i%mailboxes), "pw")
				if err != nil {
					t.Error(err)
					return
				}
				v.Delivery.(*mailboxRouter).d.directFor(v.Mailbox)
				views[w] = append(views[w], v)
			}
		})
	}
	wg.Wait()
	for w := range workers {
		for i, v := range views[w] {
			if v != views[0][i] {
				t.Fatalf("two views of %s", v.Mailbox)
			}
		}
	}
	n := 0
	r.EachSender(func(string, string, delivery.Stats) { n++ })
	if n != mailboxes {
		t.Errorf("%d senders, want %d", n, mailboxes)
	}
}
