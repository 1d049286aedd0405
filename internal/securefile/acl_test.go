package securefile

import (
	"slices"
	"strings"
	"testing"
)

const (
	testSelf  = "S-1-5-21-1004336348-1177238915-682003330-1001" // an administrator running `oauthrelay login`
	testOther = "S-1-5-21-1004336348-1177238915-682003330-1002" // another local user
	testSvc   = "S-1-5-80-1234-5678"                            // NT SERVICE\oauthrelay
)

func TestPrivateSDDL(t *testing.T) {
	if got, want := privateSDDL(testSelf, true), "O:"+testSelf+"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;"+testSelf+")"; got != want {
		t.Errorf("directory SDDL\n got %s\nwant %s", got, want)
	}
	if got, want := privateSDDL(testSelf, false), "O:"+testSelf+"D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;"+testSelf+")"; got != want {
		t.Errorf("file SDDL\n got %s\nwant %s", got, want)
	}
}

// What a DACL looks like after privateSDDL, as read back: the three entries,
// not inherited.
func createdDACL(self string) []aceEntry {
	return []aceEntry{
		{Type: aceAllowed, Mask: fileAllAccess, SID: sidSystem},
		{Type: aceAllowed, Mask: fileAllAccess, SID: sidAdministrators},
		{Type: aceAllowed, Mask: fileAllAccess, SID: self},
	}
}

func TestOffendingACEs(t *testing.T) {
	readInherited := func(sid string) aceEntry {
		return aceEntry{Type: aceAllowed, Flags: aceFlagInherited, Mask: 0x1200a9, SID: sid} // RX
	}
	for _, tc := range []struct {
		name        string
		aces        []aceEntry
		self, owner string
		bad         []string // offending SIDs, in order
	}{
		{name: "as created", aces: createdDACL(testSelf), self: testSelf, owner: testSelf},
		{name: "empty DACL (no access at all)", self: testSelf, owner: testSelf},
		// The key written by `oauthrelay login` (owner and entry: the
		// administrator), read by the service running as SYSTEM.
		{name: "written by another admin, read as SYSTEM", aces: createdDACL(testSelf), self: sidSystem, owner: testSelf},
		{name: "written by the service account, read by an admin", aces: createdDACL(testSvc), self: testSelf, owner: testSvc},
		// The same entry when the owner is not that account (the default
		// owner of an elevated admin's files is BUILTIN\Administrators).
		{name: "explicit stranger, owner Administrators", aces: createdDACL(testOther), self: sidSystem, owner: sidAdministrators, bad: []string{testOther}},
		{
			name: "inherited from C:\\ProgramData",
			aces: []aceEntry{
				{Type: aceAllowed, Flags: aceFlagInherited, Mask: fileAllAccess, SID: sidSystem},
				{Type: aceAllowed, Flags: aceFlagInherited, Mask: fileAllAccess, SID: sidAdministrators},
				{Type: aceAllowed, Flags: aceFlagInherited, Mask: fileAllAccess, SID: testSelf}, // from CREATOR OWNER
				readInherited(sidUsers),
				{Type: aceAllowed, Flags: aceFlagInherited, Mask: 0x116, SID: sidUsers}, // create files / append
			},
			self: testSelf, owner: testSelf, bad: []string{sidUsers, sidUsers},
		},
		{name: "Everyone", aces: []aceEntry{{Type: aceAllowed, Mask: genericRead, SID: sidEveryone}}, self: testSelf, bad: []string{sidEveryone}},
		{name: "Authenticated Users", aces: []aceEntry{readInherited(sidAuthenticated)}, self: testSelf, bad: []string{sidAuthenticated}},
		{name: "another user", aces: []aceEntry{{Type: aceAllowedCallback, Mask: fileReadData, SID: testOther}}, self: testSelf, owner: testSelf, bad: []string{testOther}},
		{name: "a broad group as owner is no owner", aces: []aceEntry{readInherited(sidUsers)}, self: testSelf, owner: sidUsers, bad: []string{sidUsers}},
		{name: "OWNER RIGHTS with a broad owner", aces: []aceEntry{{Type: aceAllowed, Mask: fileAllAccess, SID: sidOwnerRights}}, self: testSelf, owner: sidUsers, bad: []string{sidOwnerRights}},
		{name: "OWNER RIGHTS", aces: []aceEntry{{Type: aceAllowed, Mask: fileAllAccess, SID: sidOwnerRights}}, self: testSelf, owner: testOther},
		{name: "CREATOR OWNER, inherit only", aces: []aceEntry{{Type: aceAllowed, Flags: aceFlagInheritOnly | 0x3, Mask: fileAllAccess, SID: sidCreatorOwner}}, self: testSelf},
		{name: "Users, inherit only", aces: []aceEntry{{Type: aceAllowed, Flags: aceFlagInheritOnly | 0x3, Mask: genericRead, SID: sidUsers}}, self: testSelf},
		{name: "deny entries take nothing", aces: []aceEntry{{Type: aceDenied, Mask: fileAllAccess, SID: sidEveryone}, {Type: aceDeniedCallback, Mask: 1, SID: sidUsers}}, self: testSelf},
		{name: "zero mask", aces: []aceEntry{{Type: aceAllowed, SID: sidEveryone}}, self: testSelf},
		{name: "unparsed allow entry", aces: []aceEntry{{Type: aceAllowedObject, Mask: fileReadData}}, self: testSelf, bad: []string{""}},
		{name: "empty self matches no unparsed SID", aces: []aceEntry{{Type: aceAllowed, Mask: fileReadData}}, bad: []string{""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, a := range offendingACEs(tc.aces, tc.self, tc.owner) {
				got = append(got, a.SID)
			}
			if !slices.Equal(got, tc.bad) {
				t.Errorf("offending %q, want %q", got, tc.bad)
			}
		})
	}
}

func TestDescribeACE(t *testing.T) {
	for _, tc := range []struct {
		a    aceEntry
		name string
		want string
	}{
		{aceEntry{Type: aceAllowed, Flags: aceFlagInherited, Mask: 0x1200a9, SID: sidUsers}, wellKnownName(sidUsers), `BUILTIN\Users (S-1-5-32-545): read (inherited)`},
		{aceEntry{Type: aceAllowed, Mask: fileAllAccess, SID: sidEveryone}, "Everyone", "Everyone (S-1-1-0): full control"},
		{aceEntry{Type: aceAllowed, Mask: genericAll, SID: testOther}, "", testOther + ": full control"},
		{aceEntry{Type: aceAllowed, Mask: 0x116, SID: sidUsers}, "U", "U (S-1-5-32-545): write"},
		{aceEntry{Type: aceAllowed, Mask: genericRead | genericWrite | accessDelete | accessWriteDAC, SID: sidUsers}, "U", "U (S-1-5-32-545): read, write, delete, change permissions"},
		{aceEntry{Type: aceAllowed, Mask: 0x80, SID: sidUsers}, "U", "U (S-1-5-32-545): access 0x80"},
		{aceEntry{Type: aceAllowedObject, Mask: 1}, "", "an ACE of type 0x5: read"},
	} {
		if got := describeACE(tc.a, tc.name); got != tc.want {
			t.Errorf("describeACE(%+v)\n got %s\nwant %s", tc.a, got, tc.want)
		}
	}
}

func TestWindowsFix(t *testing.T) {
	path := `C:\ProgramData\oauthrelay\state\key`
	bad := []aceEntry{
		{Type: aceAllowed, Flags: aceFlagInherited, Mask: 1, SID: sidUsers},
		{Type: aceAllowed, Mask: 1, SID: testOther},
		{Type: aceAllowed, Mask: 2, SID: testOther},
		{Type: aceAllowedObject, Mask: 1},
	}
	got := windowsFix(path, testSelf, bad)
	want := []string{
		`icacls "` + path + `" /inheritance:r /grant:r *S-1-5-18:F *S-1-5-32-544:F *` + testSelf + `:F`,
		`icacls "` + path + `" /remove:g *` + testOther,
	}
	if !slices.Equal(got, want) {
		t.Errorf("fix\n got %q\nwant %q", got, want)
	}
	// Only inherited offenders, running as SYSTEM: one command, no
	// duplicate grant.
	got = windowsFix(path, sidSystem, bad[:1])
	if len(got) != 1 || strings.Count(got[0], sidSystem) != 1 {
		t.Errorf("fix as SYSTEM: %q", got)
	}
}

func TestNotPrivateErrorMessage(t *testing.T) {
	e := &NotPrivateError{Path: "P", Others: []string{"a", "b"}, Fix: []string{"x", "y"}}
	if got, want := e.Error(), "securefile: P is accessible to others: a, b; make it private with: x, then: y"; got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestWellKnownName(t *testing.T) {
	if wellKnownName(sidUsers) != `BUILTIN\Users` || wellKnownName(testOther) != "" {
		t.Error("wellKnownName")
	}
	for _, sid := range []string{sidSystem, sidAdministrators, sidCreatorOwner, sidOwnerRights} {
		if broadSID(sid) {
			t.Errorf("%s counted as broad", sid)
		}
	}
}
