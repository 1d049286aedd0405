package upstream

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestExplainSMTP(t *testing.T) {
	for _, tc := range []struct {
		code int
		enh  smtp.EnhancedCode
		msg  string
		want string
	}{
		{535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.", "Set-CASMailbox"},
		{535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful [X]", "Add-MailboxPermission"},
		{550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender", "SendAs"},
		{432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded", "3 concurrent"},
		{554, smtp.EnhancedCode{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException", "10,000"},
		{550, smtp.EnhancedCode{5, 2, 252}, "sender throttled", "throttles"},
		{250, smtp.EnhancedCode{2, 0, 0}, "OK", ""},
	} {
		got := ExplainSMTP(tc.code, tc.enh, tc.msg)
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("ExplainSMTP(%d %v %q) = %q, want it to contain %q", tc.code, tc.enh, tc.msg, got, tc.want)
		}
	}
	if !strings.Contains(ExplainIMAP("BAD User is authenticated but not connected."), "Add-MailboxPermission") {
		t.Error("ExplainIMAP misses the not-connected case")
	}
	if !strings.Contains(ExplainIMAP("NO AUTHENTICATE failed."), "IMAP.AccessAsApp") {
		t.Error("ExplainIMAP misses AUTHENTICATE failed")
	}
}
