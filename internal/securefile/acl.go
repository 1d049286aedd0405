package securefile

// The Windows decisions, kept free of system calls so that they are tested
// on every platform: the security descriptor new files and directories get,
// and which DACL entries make a file readable by others.

import (
	"fmt"
	"strings"
)

// Well-known SIDs (MS-DTYP 2.4.2.4).
const (
	sidEveryone       = "S-1-1-0"
	sidCreatorOwner   = "S-1-3-0"
	sidOwnerRights    = "S-1-3-4"
	sidNetwork        = "S-1-5-2"
	sidBatch          = "S-1-5-3"
	sidInteractive    = "S-1-5-4"
	sidService        = "S-1-5-6"
	sidAnonymous      = "S-1-5-7"
	sidAuthenticated  = "S-1-5-11"
	sidSystem         = "S-1-5-18"
	sidAdministrators = "S-1-5-32-544"
	sidUsers          = "S-1-5-32-545"
	sidGuests         = "S-1-5-32-546"
	sidRemoteDesktop  = "S-1-5-32-555"
	sidLocalAccount   = "S-1-5-113"
)

// wellKnownName names the SIDs above, for messages when the account lookup
// fails; "" for any other SID.
func wellKnownName(sid string) string {
	switch sid {
	case sidEveryone:
		return "Everyone"
	case sidCreatorOwner:
		return "CREATOR OWNER"
	case sidOwnerRights:
		return "OWNER RIGHTS"
	case sidNetwork:
		return `NT AUTHORITY\NETWORK`
	case sidBatch:
		return `NT AUTHORITY\BATCH`
	case sidInteractive:
		return `NT AUTHORITY\INTERACTIVE`
	case sidService:
		return `NT AUTHORITY\SERVICE`
	case sidAnonymous:
		return `NT AUTHORITY\ANONYMOUS LOGON`
	case sidAuthenticated:
		return `NT AUTHORITY\Authenticated Users`
	case sidSystem:
		return `NT AUTHORITY\SYSTEM`
	case sidAdministrators:
		return `BUILTIN\Administrators`
	case sidUsers:
		return `BUILTIN\Users`
	case sidGuests:
		return `BUILTIN\Guests`
	case sidRemoteDesktop:
		return `BUILTIN\Remote Desktop Users`
	case sidLocalAccount:
		return `NT AUTHORITY\Local account`
	}
	return ""
}

// broadSID reports whether sid stands for many accounts. Such a SID never
// counts as the file's owner: a file owned by BUILTIN\Users is not private
// to anyone.
func broadSID(sid string) bool {
	switch sid {
	case sidEveryone, sidNetwork, sidBatch, sidInteractive, sidService, sidAnonymous, sidAuthenticated,
		sidUsers, sidGuests, sidRemoteDesktop, sidLocalAccount:
		return true
	}
	return false
}

// ACE header values (MS-DTYP 2.4.4.1).
const (
	aceAllowed               = 0x0
	aceDenied                = 0x1
	aceAllowedCompound       = 0x4
	aceAllowedObject         = 0x5
	aceAllowedCallback       = 0x9
	aceDeniedCallback        = 0xA
	aceAllowedCallbackObject = 0xB

	aceFlagInheritOnly = 0x08
	aceFlagInherited   = 0x10
)

// Access mask bits (MS-DTYP 2.4.3, and FILE_* of winnt.h).
const (
	fileReadData    = 0x0001
	fileWriteData   = 0x0002
	fileAppendData  = 0x0004
	accessDelete    = 0x0001_0000
	accessWriteDAC  = 0x0004_0000
	accessWriteOwn  = 0x0008_0000
	fileAllAccess   = 0x001F_01FF
	genericAll      = 0x1000_0000
	genericWrite    = 0x4000_0000
	genericRead     = 0x8000_0000
	readBits        = fileReadData | genericRead
	writeBits       = fileWriteData | fileAppendData | genericWrite
	permissionsBits = accessWriteDAC | accessWriteOwn
)

// privateSDDL is the security descriptor of a private directory (dir) or
// file, owned by userSID: a protected DACL ("P": nothing inherited from the
// parent) giving full control to SYSTEM, Administrators and userSID. For a
// directory the entries are inherited by files (OI) and subdirectories (CI)
// created in it later.
//
// The owner is set explicitly because the owner of a file created by an
// elevated administrator would otherwise be BUILTIN\Administrators, and the
// explicit entry for that administrator's own account would then look, to
// CheckPrivate in the service (running as SYSTEM), like access for a
// stranger.
func privateSDDL(userSID string, dir bool) string {
	flags := ""
	if dir {
		flags = "OICI"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "O:%sD:P", userSID)
	for _, sid := range []string{"SY", "BA", userSID} {
		fmt.Fprintf(&b, "(A;%s;FA;;;%s)", flags, sid)
	}
	return b.String()
}

// aceEntry is one DACL entry as CheckPrivate sees it. SID is empty for an
// entry type whose layout is not parsed (object ACEs, which file systems do
// not use).
type aceEntry struct {
	Type  uint8
	Flags uint8
	Mask  uint32
	SID   string
}

// offendingACEs returns the entries of a DACL that give someone other than
// SYSTEM, Administrators, self (the current process's user) or owner (the
// file's owner, unless that is a group of many accounts) any access to the
// object itself. Deny entries and inherit-only entries (which only apply to
// children) take no access away from the check; an allow entry the check
// cannot read is an offender, so that the answer errs on the side of "not
// private".
func offendingACEs(aces []aceEntry, self, owner string) []aceEntry {
	var bad []aceEntry
	for _, a := range aces {
		if !grants(a) {
			continue
		}
		if a.Type != aceAllowed && a.Type != aceAllowedCallback {
			bad = append(bad, a) // allow entry of a layout we do not parse
			continue
		}
		if !allowedSID(a.SID, self, owner) {
			bad = append(bad, a)
		}
	}
	return bad
}

// grants reports whether a is an allow entry that applies to the object and
// grants something.
func grants(a aceEntry) bool {
	switch a.Type {
	case aceAllowed, aceAllowedCallback, aceAllowedCompound, aceAllowedObject, aceAllowedCallbackObject:
	default:
		return false // deny, audit, or a type Windows itself ignores in a DACL
	}
	return a.Flags&aceFlagInheritOnly == 0 && a.Mask != 0
}

func allowedSID(sid, self, owner string) bool {
	switch {
	case sid == "":
		return false
	case sid == sidSystem, sid == sidAdministrators, sid == self:
		return true
	case broadSID(sid):
		return false
	case sid == owner, sid == sidOwnerRights:
		// OWNER RIGHTS is whoever owns the file.
		return owner != "" && !broadSID(owner)
	}
	return false
}

// describeACE names an offending entry for a message: the account (name,
// when known), its SID, what it may do, and whether it came from the parent
// directory.
func describeACE(a aceEntry, name string) string {
	who := a.SID
	switch {
	case a.SID == "":
		who = fmt.Sprintf("an ACE of type %#x", a.Type)
	case name != "":
		who = name + " (" + a.SID + ")"
	}
	s := who + ": " + accessWords(a.Mask)
	if a.Flags&aceFlagInherited != 0 {
		s += " (inherited)"
	}
	return s
}

// accessWords says in words what an access mask allows.
func accessWords(mask uint32) string {
	if mask&genericAll != 0 || mask&fileAllAccess == fileAllAccess {
		return "full control"
	}
	var w []string
	for _, m := range []struct {
		bits uint32
		word string
	}{{readBits, "read"}, {writeBits, "write"}, {accessDelete, "delete"}, {permissionsBits, "change permissions"}} {
		if mask&m.bits != 0 {
			w = append(w, m.word)
		}
	}
	if len(w) == 0 {
		return fmt.Sprintf("access %#x", mask)
	}
	return strings.Join(w, ", ")
}

// windowsFix returns the icacls commands that make path private to SYSTEM,
// Administrators and self: drop the inherited entries and grant the three
// full control, then remove the explicit grants of the offenders.
func windowsFix(path, self string, bad []aceEntry) []string {
	grant := fmt.Sprintf(`icacls "%s" /inheritance:r /grant:r *%s:F *%s:F`, path, sidSystem, sidAdministrators)
	if self != "" && self != sidSystem && self != sidAdministrators {
		grant += " *" + self + ":F"
	}
	fix := []string{grant}
	var remove []string
	seen := map[string]bool{}
	for _, a := range bad {
		if a.SID != "" && a.Flags&aceFlagInherited == 0 && !seen[a.SID] {
			seen[a.SID] = true
			remove = append(remove, "*"+a.SID)
		}
	}
	if len(remove) > 0 {
		fix = append(fix, fmt.Sprintf(`icacls "%s" /remove:g %s`, path, strings.Join(remove, " ")))
	}
	return fix
}
