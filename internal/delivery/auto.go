package delivery

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/oauthrelay/oauthrelay/internal/events"
	"github.com/oauthrelay/oauthrelay/internal/upstream"
)

// autoProbeInterval is how often an account that moved to Graph tries
// SMTP AUTH again: a tenant may switch it back on, and SMTP keeps the
// upstream's own replies for the app.
const autoProbeInterval = time.Hour

// Auto is upstream: auto: SMTP (its Delivery, normally a Direct), until
// Exchange answers a login 535 5.7.139 (SMTP AUTH is disabled for the
// tenant or the mailbox); then Graph, telling the log once in plain words,
// and trying SMTP again every autoProbeInterval.
type Auto struct {
	smtp, graph Delivery
	account     events.Account
	log         *slog.Logger
	now         func() time.Time

	mu       sync.Mutex
	onGraph  bool
	since    time.Time // when it moved to Graph
	probeAt  time.Time // when SMTP is tried again
	switches int
}

// NewAuto returns the auto delivery of account a over smtp and graph;
// Close closes both.
func NewAuto(a events.Account, smtpD, graphD Delivery, log *slog.Logger) *Auto {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Auto{smtp: smtpD, graph: graphD, account: a, log: log.With("account", a.Name, "upstream", "auto"), now: time.Now}
}

// AutoState is what Auto shows on the status page.
type AutoState struct {
	// Graph says mail goes through Graph now; Since when it moved there,
	// NextProbe when SMTP is tried again.
	Graph            bool
	Since, NextProbe time.Time
	// Reason is the move in plain words ("" while on SMTP).
	Reason string
}

// State reports where mail goes now.
func (d *Auto) State() AutoState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.onGraph {
		return AutoState{}
	}
	return AutoState{Graph: true, Since: d.since, NextProbe: d.probeAt,
		Reason: "Exchange says SMTP AUTH is disabled (535 5.7.139): mail goes through Microsoft Graph"}
}

// useSMTP reports whether the next transaction tries SMTP: always while
// on SMTP, once an hour while on Graph (the probe).
func (d *Auto) useSMTP() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.onGraph {
		return true
	}
	if now := d.now(); !now.Before(d.probeAt) {
		d.probeAt = now.Add(autoProbeInterval)
		return true
	}
	return false
}

// smtpWorked notes SMTP working; after a move to Graph it moves back.
func (d *Auto) smtpWorked() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.onGraph {
		d.onGraph = false
		d.log.Warn("SMTP AUTH works again for this mailbox: mail goes over SMTP again", "on_graph_since", d.since)
	}
}

// moveToGraph notes Exchange's 5.7.139 and tells the log once per move.
func (d *Auto) moveToGraph(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	d.probeAt = now.Add(autoProbeInterval)
	if d.onGraph {
		return
	}
	d.onGraph, d.since = true, now
	d.switches++
	d.log.Warn("Exchange says SMTP AUTH is disabled for this tenant or mailbox (535 5.7.139): "+
		"mail now goes through Microsoft Graph; SMTP is tried again every hour",
		"next_probe", d.probeAt, "err", err,
		"fix", "nothing to do for the relay; to send over SMTP again: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false "+
			"(tenant-wide: Set-TransportConfig -SmtpClientAuthenticationDisabled $false)")
}

// smtpAuthDisabled: err is Exchange's 535 5.7.139.
func smtpAuthDisabled(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Reply != nil {
		return ue.Reply.EnhancedCode == smtp.EnhancedCode{5, 7, 139}
	}
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.EnhancedCode == smtp.EnhancedCode{5, 7, 139}
}

// Ready implements Delivery.
func (d *Auto) Ready(ctx context.Context, cred upstream.Credentials) error {
	if !d.useSMTP() {
		return d.graph.Ready(ctx, cred)
	}
	err := d.smtp.Ready(ctx, cred)
	switch {
	case err == nil:
		d.smtpWorked()
		return nil
	case smtpAuthDisabled(err):
		d.moveToGraph(err)
		return d.graph.Ready(ctx, cred)
	}
	return err
}

// Begin implements Delivery.
func (d *Auto) Begin(ctx context.Context, cred upstream.Credentials, from string, opts *smtp.MailOptions) (Tx, error) {
	if !d.useSMTP() {
		return d.graph.Begin(ctx, cred, from, opts)
	}
	tx, err := d.smtp.Begin(ctx, cred, from, opts)
	switch {
	case err == nil:
		d.smtpWorked()
		return tx, nil
	case smtpAuthDisabled(err):
		d.moveToGraph(err)
		return d.graph.Begin(ctx, cred, from, opts)
	}
	return nil, err
}

// Close implements Delivery.
func (d *Auto) Close() {
	d.smtp.Close()
	d.graph.Close()
}
