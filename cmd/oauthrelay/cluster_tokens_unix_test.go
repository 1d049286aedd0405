//go:build linux

package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/securefile"
	"github.com/oauthrelay/oauthrelay/internal/testutil"
	"github.com/oauthrelay/oauthrelay/internal/tokenstore"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// clusterTokenLife is the fake's access token lifetime in
// TestClusterSharesDelegatedGrant: each instance's refresher is due at
// half of it, so the three race for a refresh every three seconds; a
// token is used until a quarter of it is left, so a store outage shorter
// than a quarter of it needs no refresh.
const clusterTokenLife = 6 * time.Second

// TestClusterSharesDelegatedGrant runs three `serve` processes with one
// device-code account and one Redis, in front of a fake whose rotated
// refresh tokens die at once. The account is signed in once, with
// `oauthrelay login` on the first instance's configuration; then mail goes
// through all three while the access tokens expire every few seconds, and
// the store is stopped for a moment and started again (empty). The fake
// must never have been asked to redeem a dead refresh token, and no
// message may fail.
func TestClusterSharesDelegatedGrant(t *testing.T) {
	t.Parallel()
	r := testutil.StartRedis(t)
	bin := buildBinary(t)
	ms := startFake(t, fakems.Options{RefreshTokenGrace: -1, TokenLifetime: clusterTokenLife})
	// The instances share the state key (here the key file, copied to
	// each state_dir): the shared record is sealed with it.
	key := make([]byte, tokenstore.KeySize)
	for i := range key {
		key[i] = byte(i*7 + 3)
	}
	dir := t.TempDir()
	var cfgs []string
	for i := range 3 {
		state := filepath.Join(dir, fmt.Sprintf("state%d", i))
		if err := securefile.MkdirAll(state); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(state, tokenstore.KeyFileName), []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(dir, fmt.Sprintf("relay%d.yaml", i))
		writeFile(t, cfg, configYAML(ms, cfgSpec{stateDir: state, smtp: `{addr: "127.0.0.1:0"}`,
			accounts: []acct{{name: "dev", provider: "device", mailbox: salesBox, username: demoUser,
				hash: hashOf(t, demoPassword), allowedFrom: []string{salesBox}}}})+
			// The mailbox's pace is not what this test is about.
			"    limits: {messages_per_minute: 100000, recipients_per_day: 1000000}\n"+
			fmt.Sprintf("cluster:\n  store: %s\n  instance: relay-%d\n", r.URL, i))
		cfgs = append(cfgs, cfg)
	}
	var procs []*relayProc
	var addrs []string
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// The mailbox's limits on the cluster test's fast clock: what a lost
	// store costs the limits (a window of quiet) lasts a fraction of a
	// second rather than a minute.
	env := []string{fmt.Sprintf("%s=%d", proxy.ClockSpeedEnv, clusterSpeed),
		fmt.Sprintf("%s=%d", proxy.ClockEpochEnv, time.Now().UnixNano())}
	for i, cfg := range cfgs {
		procs = append(procs, startRelay(t, bin, cfg, filepath.Join(dir, fmt.Sprintf("addrs.%d", i)), env...))
	}
	for _, p := range procs {
		addrs = append(addrs, p.smtpAddr(t, ctx))
	}
	logs := func() string {
		var b strings.Builder
		for i, p := range procs {
			fmt.Fprintf(&b, "--- relay-%d\n%s", i, p.log.String())
		}
		return b.String()
	}

	// One sign-in, on the first instance's host.
	var out, errb syncBuffer
	done := background(ctx, nil, &out, &errb, "login", "-config", cfgs[0], "dev")
	code := waitMatch(t, &out, userCodeRE, "the user code on stdout", done, &errb)[1]
	if err := ms.ApproveDevice(code, salesBox); err != nil {
		t.Fatal(err)
	}
	if c := exitCode(t, done, "login"); c != 0 {
		t.Fatalf("login: exit %d\n%s\n%s", c, out.String(), errb.String())
	}
	wantAll(t, out.String(), "shared with the other instances")

	var sent atomic.Int64
	sendErr := func(i int) error {
		n := sent.Add(1)
		c, err := relayDial(addrs[i], demoUser)()
		if err == nil {
			err = sendMail(c, salesBox, fmt.Sprintf("grant-%d", n))
			c.Close()
		}
		if err != nil {
			return fmt.Errorf("message %d through relay-%d: %w", n, i, err)
		}
		return nil
	}
	send := func(i int) {
		t.Helper()
		if err := sendErr(i); err != nil {
			t.Fatalf("%v\n%s", err, logs())
		}
	}
	// Every instance, at once: the two that were not signed in take the
	// refresh token from the store at their first login.
	for i := range 3 {
		send(i)
	}
	// Three refreshes' worth, mail through all three.
	until := time.Now().Add(3 * clusterTokenLife / 2)
	for k := 0; time.Now().Before(until); k++ {
		send(k % 3)
		time.Sleep(20 * time.Millisecond)
	}
	// The store goes away for less than a token has left once its
	// refresh is due, and comes back empty; mail goes on throughout.
	r.Stop()
	stopped := time.Now()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if err := sendErr(i); err != nil {
				t.Errorf("with the store stopped: %v", err)
			}
		})
	}
	wg.Wait()
	t.Logf("the store was stopped for %v", time.Since(stopped).Round(time.Millisecond))
	r.Start()
	until = time.Now().Add(clusterTokenLife)
	for k := 0; time.Now().Before(until); k++ {
		send(k % 3)
		time.Sleep(20 * time.Millisecond)
	}

	if n := ms.InvalidGrants(); n != 0 {
		t.Fatalf("the fake answered invalid_grant %d times: a refresh token was redeemed twice\n%s", n, logs())
	}
	for i, p := range procs {
		for l := range strings.Lines(grepLines(p.log.String(), "token request failed")) {
			if !strings.Contains(l, "not signed in yet") { // before the login
				t.Errorf("relay-%d logged a failed token request: %s", i, l)
			}
		}
	}
	for i, p := range procs {
		t.Logf("relay-%d:\n%s", i, grepLines(p.log.String(), "refresh token"))
	}
	t.Logf("%d messages through 3 instances sharing one delegated grant; %d token requests, token errors %v",
		sent.Load(), ms.TokenRequests(), ms.TokenErrors())
}
