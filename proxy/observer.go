package proxy

import "github.com/oauthrelay/oauthrelay/internal/events"

// Observer is told what the sessions do, for metrics and the status page:
// events.Observer, whose events carry an account's public facts
// (Account.Info), never the *Account.
type Observer = events.Observer
