package fakems

import (
	"slices"
	"testing"
)

func TestParseDelegatedScopes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		scope   string
		aud     resource
		perms   []string
		offline bool
		aadsts  int
	}{
		{"https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access",
			resOutlook, []string{scopeIMAP, scopeSMTP}, true, 0},
		{"https://outlook.office365.com/SMTP.Send", resOutlook, []string{scopeSMTP}, false, 0},
		{"https://outlook.office.com/.default offline_access", resOutlook, []string{scopeIMAP, scopePOP, scopeSMTP}, true, 0},
		{"SMTP.Send offline_access", resGraph, []string{"SMTP.Send"}, true, 0},
		{"openid profile offline_access", resGraph, nil, true, 0},
		{"https://outlook.office.com/SMTP.Send https://graph.microsoft.com/Mail.Send", "", nil, false, 28000},
		{"https://outlook.office.com/Nope.Nope", "", nil, false, 70011},
		{"https://example.com/x", "", nil, false, 500011},
		{"", "", nil, false, 900144},
	}
	for _, tc := range cases {
		ss, e := parseDelegatedScopes(tc.scope)
		if tc.aadsts != 0 {
			if e == nil || e.aadsts != tc.aadsts {
				t.Errorf("%q: error %+v, want AADSTS%d", tc.scope, e, tc.aadsts)
			}
			continue
		}
		if e != nil {
			t.Errorf("%q: %+v", tc.scope, e)
			continue
		}
		if ss.aud != tc.aud || !slices.Equal(ss.perms, tc.perms) || ss.offline != tc.offline {
			t.Errorf("%q: got %+v", tc.scope, ss)
		}
	}
}
