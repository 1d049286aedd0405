package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/oauthrelay/oauthrelay/internal/graph"
	"github.com/oauthrelay/oauthrelay/internal/oauth"
	"github.com/oauthrelay/oauthrelay/internal/powershell"
)

// The Graph steps of an account with upstream graph or auto.
const (
	stepGraphToken     = "Graph token"
	stepGraphSend      = "Graph Mail.Send"
	stepGraphReadWrite = "Graph Mail.ReadWrite"
	stepGraphSent      = "Graph Sent Items"
)

var graphSteps = []string{stepGraphToken, stepGraphSend, stepGraphReadWrite, stepGraphSent}

// graph asks Graph what the relay will need of it: a Graph token,
// Mail.Send on the mailbox, Mail.ReadWrite (messages over 3 MB) and Sent
// Items read (no duplicates after a lost answer), each failure with its
// fix. It goes through the relay's own Graph client, so it passes exactly
// when the relay would send.
func (c *accountCheck) graph() {
	ctx, cancel := context.WithTimeout(c.ctx, checkTimeout)
	defer cancel()
	a := c.a
	if _, err := a.GraphSource.Token(ctx); err != nil {
		s := tokenStep(stepGraphToken, err)
		var oe *oauth.Error
		if errors.As(err, &oe) && oe.AADSTS == 65001 {
			s.PowerShell = c.graphGrantScript("Mail.Send", "Mail.ReadWrite")
		}
		c.put(s)
		for _, n := range graphSteps[1:] {
			c.skip(n, "no Graph token")
		}
		return
	}
	c.put(checkStep{Name: stepGraphToken, Status: stepOK, Detail: "got a Microsoft Graph access token"})
	p := c.relay.GraphClient(a).Probe(ctx, a.GraphSource)
	c.put(c.graphProbeStep(stepGraphSend, p.Send, "sendMail is allowed for "+a.Mailbox, "Mail.Send"))
	c.put(c.graphProbeStep(stepGraphReadWrite, p.ReadWrite, "drafts (messages over 3 MB) are allowed", "Mail.ReadWrite"))
	c.put(c.graphProbeStep(stepGraphSent, p.ReadSent, "Sent Items can be read (no duplicates after a timeout)", "Mail.Read"))
}

// graphProbeStep is one permission of the probe: graph.Explain's reason
// and fix, and the PowerShell granting perm where Graph denied access.
func (c *accountCheck) graphProbeStep(name string, err error, ok, perm string) checkStep {
	s := checkStep{Name: name, Status: stepOK, Detail: ok}
	var ge *graph.Error
	switch {
	case err == nil:
	case errors.As(err, &ge) && ge.Token:
		return tokenStep(name, ge.Err)
	case errors.As(err, &ge):
		reason, fix := graph.Explain(ge)
		s.Status, s.Detail, s.Fix = stepFail, fmt.Sprintf("%d %s: %s", ge.Status, ge.Code, reason), fix
		if ge.Code == "ErrorAccessDenied" {
			s.PowerShell = c.graphGrantScript(perm)
		}
	default:
		s.Status, s.Detail = stepFail, err.Error()
	}
	return s
}

// graphGrantScript adds and consents Microsoft Graph permissions (init's
// steps, for the Graph API).
func (c *accountCheck) graphGrantScript(perms ...string) string {
	s := c.graphScript()
	s.Comment("Microsoft Graph, the API that owns Mail.Send and Mail.ReadWrite.")
	s.API(powershell.VarGraph, powershell.GraphAppID)
	s.Grant(powershell.VarGraph, c.a.AppOnly(), perms)
	return s.String()
}
