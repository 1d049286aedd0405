// Package spool is the durable storage of the queue behind `delivery:
// queue`: a message is written here, body and envelope, before the app is
// answered 250, and stays here until it is delivered, failed or deleted.
//
// # Format
//
// One file per message, as Postfix and mox keep their queues, under a root
// directory (the relay uses <state_dir>/queue):
//
//	tmp/           bodies being received (<id>.<random>)
//	body/<id>      the message as the app sent it (dot-unstuffed), immutable
//	active/<id>.json  the envelope of a message waiting for delivery
//	failed/<id>.json  the envelope of a failed message, kept for keep_failed
//	quarantine/<id>.<n>/  what recovery found corrupt: envelope.json, body, reason
//	lock           the lock file that serialises changes of envelopes
//
// An embedded database would be a new dependency and buys nothing here:
// the queue is small (thousands of messages at most), every operation
// touches one message, bodies up to 150 MB must stream to disk rather than
// through a database's pages, and a file per message can be inspected,
// copied and repaired with ordinary tools. The body stays in body/ for the
// whole life of the message, whatever its state: failing a message writes
// its envelope into failed/ and removes the active one; the 150 MB file
// never moves, so there is no state in which an envelope has lost its body.
//
// Envelopes are JSON (Envelope), small, and replaced atomically through
// internal/securefile (temp file, fsync, rename, fsync of the directory).
// All directories and files are private (0700/0600 on Unix, a protected
// DACL inherited from the directories on Windows).
//
// # Durability
//
// Create streams the body into tmp/ (never more than a 256 KiB buffer in
// memory), fsyncs it, renames it into body/ and fsyncs that directory,
// then links the envelope into active/ and fsyncs active/. The envelope's
// appearance is the commit point: before it nothing is visible (a body
// without an envelope is a leftover, removed at Open once it is older than
// Options.LeftoverAge); after it the message is complete on disk. Create
// returns only after that, which is when the app may be told 250.
//
// # Recovery
//
// Open checks every envelope: one whose JSON does not parse or fails
// validation, whose body is missing or unreadable, or whose body's size
// differs from the size recorded at Create is moved to quarantine/ with a
// reason file and returned in Recovery.Quarantined for the caller to log;
// the others are left untouched. Leftover temp files and bodies without an
// envelope older than Options.LeftoverAge are removed.
//
// # Several processes
//
// `oauthrelay queue` runs while `serve` does, on the same directory. Every
// change of an envelope (Update, Retry, Delete, Fail, ExpireFailed, and the
// recovery at Open) holds an exclusive lock on the lock file for the few
// file operations it makes, so none sees another half done; reads need no
// lock because envelopes are replaced atomically. An Update of a message
// deleted meanwhile returns ErrNotFound and never brings it back.
//
// Delivery is claimed separately: Claim takes an exclusive, non-blocking
// lock on the message's body file (flock(2) on Unix, LockFileEx on
// Windows), held until released. Two claimants, in one process or two,
// never hold the same message; a claim held by a process that crashes
// disappears with it.
//
// # At-least-once
//
// A message is delivered at least once, not exactly once. If the upstream
// accepted it but the process died before the envelope recording that
// reached disk, the message is still pending after the restart and is sent
// again (with the same Message-ID, so the recipient's client can collapse
// the two). The caller can count such possible duplicates: BeginAttempt,
// called under a claim before the upstream is contacted, durably marks the
// envelope InFlight and reports whether the mark was already there, i.e.
// whether an earlier attempt ended without an envelope update (a crash, or
// a caller that did not clear it). An Update with InFlight zero clears it.
//
// # Export
//
// Export writes a message as an .eml stream (RFC 5322), not mbox: the
// envelope as header fields prepended to the message (Return-Path for the
// envelope sender, X-Oauthrelay-* for the rest, one X-Oauthrelay-Recipient
// per recipient with its state), then the body byte for byte. mbox would
// have to quote body lines that begin with "From ", so the exported body
// would no longer be the one queued; an .eml opens in any mail client and
// its body can be compared with what the app sent.
//
// Out of scope: delivery itself, retry schedules and DSNs (the queue
// worker's), and sharing one spool between machines (flock over NFS is not
// to be relied upon).
package spool
