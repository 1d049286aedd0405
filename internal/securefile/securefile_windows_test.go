//go:build windows

package securefile

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/windows"
)

// setDACL replaces path's DACL with the one in sddl, protected from
// inheritance when sddl says "D:P".
func setDACL(t *testing.T, path, sddl string) {
	t.Helper()
	sd, err := windows.SecurityDescriptorFromString(sddl)
	if err != nil {
		t.Fatal(err)
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		t.Fatal(err)
	}
	info := windows.SECURITY_INFORMATION(windows.DACL_SECURITY_INFORMATION)
	if strings.HasPrefix(sddl, "D:P") {
		info |= windows.PROTECTED_DACL_SECURITY_INFORMATION
	}
	if err := windows.SetNamedSecurityInfo(path, windows.SE_FILE_OBJECT, info, nil, nil, dacl, nil); err != nil {
		t.Fatal(err)
	}
}

// sharedDir is a directory whose DACL, like C:\ProgramData's, lets
// BUILTIN\Users read what is created in it.
func sharedDir(t *testing.T) string {
	t.Helper()
	self, err := currentUserSID()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	setDACL(t, dir, "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;"+self+")(A;OICI;0x1200a9;;;BU)")
	return dir
}

func readSD(t *testing.T, path string) (owner string, protected bool, aces []aceEntry) {
	t.Helper()
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.OWNER_SECURITY_INFORMATION|windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		t.Fatal(err)
	}
	o, _, err := sd.Owner()
	if err != nil {
		t.Fatal(err)
	}
	ctl, _, err := sd.Control()
	if err != nil {
		t.Fatal(err)
	}
	aces, err = daclEntries(sd)
	if err != nil {
		t.Fatal(err)
	}
	return o.String(), ctl&windows.SE_DACL_PROTECTED != 0, aces
}

// Below a directory that shares with Users, what securefile creates holds
// exactly the three explicit entries, is owned by the current user, and
// inherits nothing.
func TestWindowsCreatedSecurityDescriptor(t *testing.T) {
	self, err := currentUserSID()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(sharedDir(t), "state")
	if err := MkdirAll(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "key")
	if err := WriteNew(path, []byte("k")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path  string
		flags uint8
	}{{dir, 0x3 /* OICI */}, {path, 0}} {
		owner, protected, aces := readSD(t, tc.path)
		if owner != self || !protected {
			t.Errorf("%s: owner %s protected %v, want %s, true", tc.path, owner, protected, self)
		}
		var got []string
		for _, a := range aces {
			if a.Type != aceAllowed || a.Flags != tc.flags || a.Mask != fileAllAccess {
				t.Errorf("%s: entry %+v", tc.path, a)
			}
			got = append(got, a.SID)
		}
		if want := []string{sidSystem, sidAdministrators, self}; !slices.Equal(got, want) {
			t.Errorf("%s: entries for %q, want %q", tc.path, got, want)
		}
		if err := CheckPrivate(tc.path); err != nil {
			t.Errorf("CheckPrivate(%s): %v", tc.path, err)
		}
	}
}

// The defect: a file written the ordinary way in such a directory is
// readable by Users, and CheckPrivate says so, naming the group.
func TestWindowsCheckPrivateRejectsUsers(t *testing.T) {
	path := filepath.Join(sharedDir(t), "key")
	if err := os.WriteFile(path, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := CheckPrivate(path)
	var np *NotPrivateError
	if !errors.As(err, &np) {
		t.Fatalf("CheckPrivate: %v, want a NotPrivateError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, sidUsers) || !strings.Contains(msg, "(inherited)") || !strings.Contains(msg, "icacls") {
		t.Errorf("message %q does not name Users, the inheritance and the fix", msg)
	}

	// An explicit grant to Everyone is found too.
	if err := WriteFile(path, []byte("k")); err != nil {
		t.Fatal(err)
	}
	setDACL(t, path, "D:P(A;;FA;;;SY)(A;;FR;;;WD)")
	if err := CheckPrivate(path); !errors.As(err, &np) || !strings.Contains(err.Error(), sidEveryone) {
		t.Fatalf("Everyone: %v", err)
	}
}
