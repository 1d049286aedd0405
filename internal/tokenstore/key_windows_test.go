//go:build windows

package tokenstore

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/windows"
)

// usersCanRead gives dir a DACL like C:\ProgramData's: BUILTIN\Users may
// read what is created in it.
func usersCanRead(t *testing.T, dir string) {
	t.Helper()
	tu, err := windows.GetCurrentProcessToken().GetTokenUser()
	if err != nil {
		t.Fatal(err)
	}
	sd, err := windows.SecurityDescriptorFromString("D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;" +
		tu.User.Sid.String() + ")(A;OICI;0x1200a9;;;BU)")
	if err != nil {
		t.Fatal(err)
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		t.Fatal(err)
	}
	err = windows.SetNamedSecurityInfo(dir, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil)
	if err != nil {
		t.Fatal(err)
	}
}

// A key file Users can read is refused, with the fix; a key the store
// creates in the same directory is private despite the inherited ACL.
func TestSharedKeyRefusedOnWindows(t *testing.T) {
	state := t.TempDir()
	usersCanRead(t, state)
	path := filepath.Join(state, KeyFileName)
	if err := os.WriteFile(path, testKey(5), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadKey(state, KeyOptions{Getenv: noEnv})
	if err == nil {
		t.Fatal("a key file readable by Users was accepted")
	}
	if msg := err.Error(); !strings.Contains(msg, "S-1-5-32-545") || !strings.Contains(msg, "icacls") {
		t.Errorf("error %q does not name Users and the fix", msg)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKey(state, KeyOptions{Getenv: noEnv})
	if err != nil {
		t.Fatalf("created key refused: %v", err)
	}
	if again, err := LoadKey(state, KeyOptions{Getenv: noEnv}); err != nil || !bytes.Equal(again, k) {
		t.Fatalf("second LoadKey: %v", err)
	}
}
