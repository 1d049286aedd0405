package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/oauthrelay/oauthrelay/internal/oauth"
)

//go:embed page.html
var pageHTML string

type pageTemplate struct{ t *template.Template }

func mustParsePage() pageTemplate {
	return pageTemplate{template.Must(template.New("page").Parse(pageHTML))}
}

// page is what page.html renders. Nothing in it is a secret: rows are built
// field by field from the account's public settings, the token State (which
// holds no token) and the Observer's counts.
type page struct {
	Now    string
	CSRF   string
	Notice *notice
	Rows   []row
	// Query is the message log search (?q=); Delivery has one section
	// per account.
	Query    string
	Delivery []deliveryView
	// Refresh is the page's reload interval in seconds: short while a
	// device sign-in waits, so its row turns OK soon after the user signs in.
	Refresh int
	// Fixes is the "How to fix" section the failing rows link to.
	Fixes []fix
	// Cluster is the Instances section (nil without cluster).
	Cluster *clusterView
}

// notice is a banner above the table.
type notice struct {
	Error bool
	Text  string
}

type row struct {
	Name, Mailbox, Provider, Grant string
	// State is the token state in words; Class styles it (ok, warn, bad,
	// idle).
	State, Class, StateNote string
	Expiry, ExpiryTitle     string
	LastOK, LastOKTitle     string
	LastErr, LastErrWhen    string
	LastErrFix, LastErrRef  string
	Messages                int64
	Bytes                   string
	SignIn, SignInUrgent    bool
	// DeviceCode, DeviceURI and DeviceExpires: a device sign-in waits for
	// the user to enter the code at the link.
	DeviceCode, DeviceURI, DeviceExpires string
	// Fix is the ID of the fixes entry for the row's failure ("": none).
	Fix string
	// Mailboxes are those seen in use since the relay started, for an
	// account that serves several (domain-wide, or with a mailboxes list).
	Mailboxes []mailboxRow
}

// mailboxRow is one mailbox an account was seen using.
type mailboxRow struct {
	Address            string
	Logins, Messages   int64
	LastUse, LastTitle string
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	var n *notice
	if name := r.URL.Query().Get("signed_in"); name != "" && s.account(name) != nil {
		n = &notice{Text: name + " is signed in."}
	}
	if name := r.URL.Query().Get("device"); name != "" {
		if a := s.account(name); a != nil {
			if _, ok := s.devices.pending(name); ok {
				n = &notice{Text: "Sign-in for " + name + " started: open the link in its row on any device, enter the code, and sign in as " +
					a.Mailbox + ". The row turns OK when you have."}
			}
		}
	}
	s.renderStatus(w, r, http.StatusOK, n)
}

// renderStatus writes the status page with an optional banner. An
// unreachable upstream server is always in the banner, after n's text.
func (s *Server) renderStatus(w http.ResponseWriter, r *http.Request, code int, n *notice) {
	n = withUpstreams(n, s.unreachableUpstreams(r.Context()))
	now := time.Now()
	p := page{Now: now.Format("2006-01-02 15:04:05 MST"), CSRF: s.csrf, Notice: n, Query: searchQuery(r.URL.Query().Get("q")),
		Refresh: 60, Fixes: fixes}
	if s.devices.any() {
		p.Refresh = pendingRefresh
	}
	accts := accounts(s.relay)
	for _, a := range accts {
		p.Rows = append(p.Rows, s.row(a, now))
	}
	p.Delivery = s.deliveryViews(accts, p.Query, now)
	p.Cluster = s.clusterView(r.Context(), now)
	var buf bytes.Buffer
	if err := s.tmpl.t.Execute(&buf, p); err != nil {
		s.log.Error("status page", "err", err)
		http.Error(w, "status page failed (the log has the details)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func (s *Server) row(a account, now time.Time) row {
	st := a.Source.State()
	stats := s.metrics.accountStats(a.Name)
	r := row{
		Name:     a.Name,
		Mailbox:  a.Mailbox,
		Provider: a.Provider,
		Grant:    strings.ReplaceAll(st.Grant, "_", " "),
		Messages: stats.messages,
		Bytes:    humanBytes(stats.bytes),
		SignIn:   s.canSignIn(&a),
	}
	for _, mb := range slices.Sorted(maps.Keys(stats.mailboxes)) {
		if !a.DomainWide() && len(a.Mailboxes) == 0 {
			break // one mailbox: the row says it
		}
		u := stats.mailboxes[mb]
		r.Mailboxes = append(r.Mailboxes, mailboxRow{Address: mb, Logins: u.logins, Messages: u.messages,
			LastUse: relTime(u.last, now), LastTitle: absTime(u.last)})
	}
	if p := a.ProviderRef; p != nil && p.Type != "" {
		r.Provider += " (" + p.Type + ")"
	}
	passthrough := a.PasswordPassthrough && a.Password == ""
	switch {
	case passthrough:
		r.State, r.Class = "Token at each login", "idle"
		r.StateNote = "password passthrough: the app's password is exchanged for a token when it logs in"
	case st.Status == oauth.StatusOK:
		r.State, r.Class = "OK", "ok"
	case st.Status == oauth.StatusRefreshing:
		r.State, r.Class = "Getting a token…", "idle"
	case st.Status == oauth.StatusTransient:
		r.State, r.Class = "Temporary problem", "warn"
	case st.Status == oauth.StatusNeedsSignIn && r.SignIn:
		r.State, r.Class, r.SignInUrgent = "Needs sign-in", "bad", true
	case st.Status == oauth.StatusNeedsSignIn:
		r.State, r.Class = "Needs attention", "bad"
	default:
		r.State, r.Class = "Not checked yet", "idle"
	}
	if st.Status != oauth.StatusOK && !passthrough && st.Expiry.After(now) {
		r.StateNote = "the current token still works until it expires"
	}
	if !st.RetryAt.IsZero() && st.RetryAt.After(now) {
		r.StateNote = strings.TrimPrefix(r.StateNote+"; next try "+relTime(st.RetryAt, now), "; ")
	}
	if !st.Expiry.IsZero() {
		r.Expiry, r.ExpiryTitle = relTime(st.Expiry, now), absTime(st.Expiry)
	}
	last := st.LastSuccess
	if stats.lastOK.After(last) {
		last = stats.lastOK
	}
	if !last.IsZero() {
		r.LastOK, r.LastOKTitle = relTime(last, now), absTime(last)
	}
	if d, ok := s.devices.pending(a.Name); ok && st.Status != oauth.StatusOK {
		r.DeviceCode, r.DeviceURI, r.DeviceExpires = d.userCode, d.uri, relTime(d.expiry, now)
		r.StateNote = "waiting for the sign-in with the code below"
	}
	if e := st.Err; e != nil {
		// The token source's failure is current: it wins.
		r.Fix = fixFor(e, a.ProviderRef.Grant)
		r.LastErr, r.LastErrFix, r.LastErrRef = capitalize(e.Reason), e.Fix, errorRef(e)
		if e.Description != "" {
			r.LastErrRef = strings.TrimPrefix(r.LastErrRef+": "+e.Description, ": ")
		}
	} else if stats.lastErr != "" {
		r.LastErr, r.LastErrWhen, r.Fix = capitalize(stats.lastErr), relTime(stats.lastErrAt, now), stats.lastFix
	}
	return r
}

// errorRef is the error's code and AADSTS number, for searching the web.
func errorRef(e *oauth.Error) string {
	var parts []string
	if e.Code != "" {
		parts = append(parts, e.Code)
	}
	if e.AADSTS != 0 {
		parts = append(parts, fmt.Sprintf("AADSTS%d", e.AADSTS))
	}
	return strings.Join(parts, ", ")
}

// relTime says when t is relative to now: "in 58 min", "3 h ago".
func relTime(t, now time.Time) string {
	d := t.Sub(now)
	future := d > 0
	if !future {
		d = -d
	}
	var s string
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		s = fmt.Sprintf("%d s", int(d/time.Second))
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h %d min", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		s = fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

func absTime(t time.Time) string { return t.Format("2006-01-02 15:04:05 MST") }

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// withUpstreams adds the unreachable upstream servers to the banner n (nil:
// none yet); a banner that names one is an error banner.
func withUpstreams(n *notice, down []upstreamState) *notice {
	if len(down) == 0 {
		return n
	}
	texts := make([]string, len(down))
	for i, u := range down {
		texts[i] = u.pageText()
	}
	text := "Upstream unreachable: " + strings.Join(texts, "; ") + ". Logins through it fail until it answers again."
	if n != nil {
		text = n.Text + " " + text
	}
	return &notice{Error: true, Text: text}
}
