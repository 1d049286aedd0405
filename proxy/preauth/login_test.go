package preauth

import "testing"

func TestParsePlainAndBase64(t *testing.T) {
	if _, ok := DecodeSASL("AHUAcA"); !ok {
		t.Error("unpadded base64 refused")
	}
	if b, ok := DecodeSASL("="); !ok || len(b) != 0 {
		t.Error(`"=" is not empty`)
	}
	if _, ok := DecodeSASL("!!"); ok {
		t.Error("bad base64 accepted")
	}
	if z, u, p, ok := ParsePlain([]byte("\x00user\x00pa ss")); !ok || z != "" || u != "user" || p != "pa ss" {
		t.Errorf("ParsePlain: %q %q %q %v", z, u, p, ok)
	}
	for _, bad := range []string{"", "user", "\x00\x00pass", "a\x00b\x00c\x00d"} {
		if _, _, _, ok := ParsePlain([]byte(bad)); ok {
			t.Errorf("ParsePlain(%q) accepted", bad)
		}
	}
}
