package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/oauthrelay/oauthrelay/config"
	"github.com/oauthrelay/oauthrelay/internal/graph"
	"github.com/oauthrelay/oauthrelay/proxy"
)

// namedStep is one Graph check of an account (upstream graph or auto).
type namedStep struct {
	what string
	step
}

// checkGraph asks Graph what the relay will need of it: a Graph token,
// Mail.Send on the mailbox, Mail.ReadWrite (messages over 3 MB) and Sent
// Items read (no duplicates after a lost answer), each failure with its
// fix. It goes through the relay's own Graph client, so it passes exactly
// when the relay would send.
func checkGraph(ctx context.Context, relay *proxy.Relay, a *proxy.Account) []namedStep {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if _, err := a.GraphSource.Token(ctx); err != nil {
		return []namedStep{{"Graph token", tokenStep(err)}}
	}
	p := relay.GraphClient(a).Probe(ctx, a.GraphSource)
	return []namedStep{
		{"Graph Mail.Send", graphProbeStep(p.Send)},
		{"Graph Mail.ReadWrite (messages over 3 MB)", graphProbeStep(p.ReadWrite)},
		{"Graph Sent Items (no duplicates after a timeout)", graphProbeStep(p.ReadSent)},
	}
}

func graphProbeStep(err error) step {
	s := step{ran: true}
	var ge *graph.Error
	switch {
	case err == nil:
	case errors.As(err, &ge) && ge.Token:
		return tokenStep(ge.Err)
	case errors.As(err, &ge):
		reason, fix := graph.Explain(ge)
		s.err, s.explain = fmt.Errorf("%d %s: %s", ge.Status, ge.Code, reason), fix
	default:
		s.err = err
	}
	return s
}

// graphShort is the GRAPH column: ok, FAILED, or "-" for an SMTP account.
func graphShort(steps []namedStep) string {
	if len(steps) == 0 {
		return "-"
	}
	for _, s := range steps {
		if s.err != nil {
			return "FAILED"
		}
	}
	return "ok"
}

// autoSMTP: for upstream auto, SMTP AUTH disabled (535 5.7.139) is not a
// failure: the relay sends through Graph then (checked in GRAPH).
func autoSMTP(a *proxy.Account, s *step) {
	// upstreamStep has made the reply the step's error, FormatReply's way.
	if a.Upstream == config.UpstreamAuto && s.err != nil && strings.HasPrefix(s.err.Error(), "535 5.7.139 ") {
		*s = step{skipped: "SMTP AUTH disabled: auto sends through Graph"}
	}
}
