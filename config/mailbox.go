package config

import (
	"errors"
	"fmt"
	"strings"
)

// The values of an account's send_as key.
const (
	// SendAsMailbox: the account's mailbox (for a domain-wide account the
	// one the app logged in as) logs in upstream, and a MAIL FROM that is
	// none of the account's mailboxes is sent as that mailbox (Exchange
	// checks its SendAs permission on the sender).
	SendAsMailbox = "mailbox"
	// SendAsSender (app-only accounts): the MAIL FROM mailbox itself logs
	// in upstream, which SMTP.SendAsApp allows wherever the app has
	// permission on it.
	SendAsSender = "sender"
)

// The limits of an address (RFC 5321 §4.5.3.1.1, §4.5.3.1.3).
const (
	maxLocalPart  = 64
	maxAddressLen = 254
	maxLabelLen   = 63
)

// NormalizeAddress returns the one form of a mailbox address that the
// relay compares, logs in upstream with and counts failures by: the local
// part and the domain in lower case, without the trailing dot of a fully
// qualified domain. It is the only gate between a name an app sends at
// login and the mailbox a domain-wide account opens, and configuration
// (mailbox patterns, mailboxes) goes through it too, so both sides of a
// comparison are alike.
//
// It refuses rather than interprets everything that could make one string
// name two mailboxes, or make a mailbox outside the account's pattern look
// like one inside it:
//   - anything but exactly one '@' (a@contoso.com@evil.com);
//   - '%' and '!' in the local part: source routes (a%evil.com@contoso.com)
//     that a mail system may forward to another host;
//   - quoted local parts, backslashes, brackets, spaces and control
//     characters: a quoted string can hide an '@';
//   - an empty local part, leading, trailing or doubled dots;
//   - any byte that is not ASCII, in the local part or the domain: Unicode
//     look-alikes (a Cyrillic 'о' in contoso, a fullwidth '＠') cannot be
//     told apart reliably without confusable tables, so an internationalised
//     domain is written in its A-label (xn--) form, in the configuration as
//     at login;
//   - a domain that is not LDH labels (letters, digits, '-'), such as an
//     address literal [192.0.2.1] or contoso.com:25.
func NormalizeAddress(s string) (string, error) {
	if len(s) > maxAddressLen+1 { // +1: a trailing dot
		return "", fmt.Errorf("longer than %d characters", maxAddressLen)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 0x80:
			return "", errors.New("has a character that is not ASCII (an internationalised domain is written in its xn-- form)")
		case c <= ' ' || c == 0x7f:
			return "", errors.New("has a space or a control character")
		}
	}
	local, domain, ok := strings.Cut(s, "@")
	switch {
	case !ok:
		return "", errors.New("has no @")
	case strings.Contains(domain, "@"):
		return "", errors.New("has more than one @")
	case local == "":
		return "", errors.New("has an empty local part")
	case len(local) > maxLocalPart:
		return "", fmt.Errorf("has a local part longer than %d characters", maxLocalPart)
	}
	if err := checkLocal(local); err != nil {
		return "", err
	}
	domain = strings.TrimSuffix(domain, ".")
	if err := checkDomain(domain); err != nil {
		return "", err
	}
	return strings.ToLower(local) + "@" + strings.ToLower(domain), nil
}

// checkLocal allows a dot-atom (RFC 5322 §3.2.3) without '%' and '!'.
func checkLocal(local string) error {
	if local[0] == '"' {
		return errors.New("has a quoted local part")
	}
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return errors.New("has a local part with a leading, trailing or doubled dot")
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		switch {
		case c == '%' || c == '!':
			return fmt.Errorf("has %q in the local part (a source route)", c)
		case isAlnum(c) || c == '.' || strings.IndexByte("#$&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return fmt.Errorf("has %q in the local part", c)
		}
	}
	return nil
}

// checkDomain allows LDH labels (RFC 5890 §2.3.1), A-labels included.
func checkDomain(domain string) error {
	if domain == "" {
		return errors.New("has an empty domain")
	}
	for label := range strings.SplitSeq(domain, ".") {
		if label == "" || len(label) > maxLabelLen || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("has a domain that is not a host name: %q", domain)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isAlnum(c) && c != '-' {
				return fmt.Errorf("has a domain that is not a host name: %q", domain)
			}
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// IsMailboxPattern reports whether a mailbox key is a domain-wide pattern,
// "*@domain": every mailbox of that domain (or of the mailboxes list).
func IsMailboxPattern(s string) bool { return strings.HasPrefix(s, "*@") }

// patternDomain is the normalised domain of a "*@domain" pattern; "" if s
// is not a valid one.
func patternDomain(s string) string {
	d, ok := strings.CutPrefix(s, "*@")
	if !ok {
		return ""
	}
	n, err := NormalizeAddress("x@" + d)
	if err != nil {
		return ""
	}
	return n[len("x@"):]
}

// DomainWide reports whether the account's mailbox is a "*@domain"
// pattern: apps log in with a mailbox address of it as their user name.
func (a *Account) DomainWide() bool { return IsMailboxPattern(a.Mailbox) }

// AppOnly reports whether the account's grant is client credentials: its
// token is the app's, valid for every mailbox the app has permission on.
func (a *Account) AppOnly() bool {
	return a.ProviderRef != nil && a.ProviderRef.Grant == GrantClientCredentials
}

// OpensMailbox reports which mailbox a login with user name login opens:
// for a domain-wide account an address of its pattern's domain (and of
// its mailboxes list, if it has one); for any other account one of its
// mailboxes list (shared mailboxes the delegate, or the app, may open).
// The name is normalised first (NormalizeAddress); one it refuses opens
// nothing.
func (a *Account) OpensMailbox(login string) (string, bool) {
	addr, err := NormalizeAddress(login)
	if err != nil {
		return "", false
	}
	if a.DomainWide() {
		d := patternDomain(a.Mailbox)
		if d == "" || addr[strings.LastIndexByte(addr, '@')+1:] != d {
			return "", false
		}
		if len(a.Mailboxes) == 0 {
			return addr, true
		}
	}
	if a.mailboxSet != nil {
		return addr, a.mailboxSet[addr]
	}
	for _, m := range a.Mailboxes {
		if n, err := NormalizeAddress(m); err == nil && n == addr {
			return addr, true
		}
	}
	return "", false
}

// IsMailbox reports whether addr is one of the account's mailboxes: its
// own, or one it opens (OpensMailbox).
func (a *Account) IsMailbox(addr string) bool {
	if !a.DomainWide() && strings.EqualFold(a.Mailbox, addr) {
		return true
	}
	_, ok := a.OpensMailbox(addr)
	return ok
}

// SMTPMailbox is the mailbox that logs in upstream (the XOAUTH2 user) for
// a message with MAIL FROM from, in a session that logged in to mailbox
// login ("" when the session chose none: a relay_from client of a
// domain-wide account). A delegated token is its user's alone, so the
// account's mailbox logs in and any other sender is send-as. An app-only
// token serves every mailbox the app has permission on: a sender that is
// one of the account's mailboxes logs in itself, so does any sender with
// send_as: sender, and any other is sent as the session's mailbox. ""
// means no mailbox may send this: the caller refuses the sender.
func (a *Account) SMTPMailbox(login, from string) string {
	if !a.AppOnly() {
		return a.Mailbox
	}
	if f, err := NormalizeAddress(from); err == nil && (a.IsMailbox(f) || a.SendAs == SendAsSender) {
		if !a.DomainWide() && strings.EqualFold(f, a.Mailbox) {
			return a.Mailbox
		}
		return f
	}
	if login == "" && !a.DomainWide() {
		return a.Mailbox
	}
	return login
}

// SendsAs reports whether the account may log in upstream over SMTP as
// mailbox (see SMTPMailbox), so that mailbox's limits take this account's
// into account.
func (a *Account) SendsAs(mailbox string) bool {
	if !a.DomainWide() && strings.EqualFold(a.Mailbox, mailbox) {
		return true
	}
	if !a.AppOnly() {
		return false
	}
	return a.IsMailbox(mailbox) || a.SendAs == SendAsSender && a.AllowsSender(mailbox)
}

// validateMailboxes checks the keys of a's mailboxes: the mailbox or its
// pattern, the mailboxes list and send_as.
func validateMailboxes(r *report, path string, a *Account) {
	switch {
	case a.Mailbox == "":
		r.add(path+".mailbox", "required")
	case a.DomainWide():
		if patternDomain(a.Mailbox) == "" || strings.ContainsAny(a.Mailbox[2:], "*") {
			r.add(path+".mailbox", `%q is not "*@domain" with a host name (an internationalised domain in its xn-- form)`, a.Mailbox)
		} else if a.ProviderRef != nil && !a.AppOnly() {
			r.add(path+".mailbox", "%q is a pattern: it needs grant client_credentials (provider %s has %s): "+
				"a delegated token is one user's", a.Mailbox, a.Provider, a.ProviderRef.Grant)
		}
		if a.Username != "" {
			r.add(path+".username", "not used with a mailbox pattern: apps log in with the mailbox address as their user name")
		}
	case strings.Contains(a.Mailbox, "*"):
		r.add(path+".mailbox", `%q: the only pattern is "*@domain"`, a.Mailbox)
	case !isAddress(a.Mailbox):
		r.add(path+".mailbox", "%q is not an email address", a.Mailbox)
	}
	seen := map[string]bool{}
	if len(a.Mailboxes) > 0 {
		a.mailboxSet = seen // a login looks its name up here, not in the list
	}
	domain := patternDomain(a.Mailbox)
	for i, m := range a.Mailboxes {
		key := fmt.Sprintf("%s.mailboxes[%d]", path, i)
		n, err := NormalizeAddress(m)
		switch {
		case err != nil:
			r.add(key, "%q %w", m, err)
		case seen[n]:
			r.add(key, "%q is listed twice (addresses ignore case)", m)
		case a.DomainWide() && domain != "" && !strings.HasSuffix(n, "@"+domain):
			r.add(key, "%q is not in the domain of mailbox %q", m, a.Mailbox)
		case !a.DomainWide() && strings.EqualFold(n, a.Mailbox):
			r.add(key, "%q is the account's own mailbox", m)
		}
		seen[n] = true
	}
	switch {
	case !oneOf(r, path+".send_as", a.SendAs, "send_as", SendAsMailbox, SendAsSender) || a.SendAs != SendAsSender:
	case a.ProviderRef != nil && !a.AppOnly():
		r.add(path+".send_as", "sender needs grant client_credentials (provider %s has %s): "+
			"a delegated token logs in only as its own user", a.Provider, a.ProviderRef.Grant)
	case a.DomainWide():
		// Its own mailboxes send as themselves already; sender would
		// log in as allowed_from addresses outside the pattern.
		r.add(path+".send_as", "sender is not for a mailbox pattern: its mailboxes log in as themselves, "+
			"and other senders are sent as the mailbox logged in (list more mailboxes in mailboxes)")
	}
}

// validateLoginNames reports login names that two accounts would answer
// to: a username that another account's mailboxes cover, and mailboxes
// two accounts open. A login by address must name one account.
func validateLoginNames(r *report, c *Config) {
	for i, a := range c.Accounts {
		for j, b := range c.Accounts {
			if i == j {
				continue
			}
			if a.Username != "" {
				if _, ok := b.OpensMailbox(a.Username); ok {
					r.add(fmt.Sprintf("accounts[%d].username", i), "%q is also a mailbox that accounts[%d] (%s) opens: "+
						"a login name must name one account", a.Username, j, b.Name)
				}
			}
			if j < i && mailboxesOverlap(a, b) {
				r.add(fmt.Sprintf("accounts[%d].mailboxes", i), "some mailboxes are also those of accounts[%d] (%s): "+
					"a login by mailbox address must name one account", j, b.Name)
			}
		}
	}
}

// mailboxesOverlap reports whether a login name could open a mailbox of
// both a and b.
func mailboxesOverlap(a, b *Account) bool {
	open := func(x, y *Account) bool {
		for _, m := range x.Mailboxes {
			if _, ok := y.OpensMailbox(m); ok {
				return true
			}
		}
		return false
	}
	if a.DomainWide() && b.DomainWide() && len(a.Mailboxes) == 0 && len(b.Mailboxes) == 0 {
		return patternDomain(a.Mailbox) != "" && patternDomain(a.Mailbox) == patternDomain(b.Mailbox)
	}
	return open(a, b) || open(b, a)
}
