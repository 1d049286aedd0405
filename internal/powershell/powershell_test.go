package powershell

import (
	"strings"
	"testing"

	"github.com/oauthrelay/oauthrelay/config"
)

// Names reach the commands as literals: an apostrophe is doubled, nothing
// else in them is PowerShell's; a pattern becomes a Get-Mailbox filter.
func TestSteps(t *testing.T) {
	s := New(config.CloudUSGov)
	s.ConnectGraph("Application.Read.All")
	s.ConnectExchange()
	s.EnableSMTPAuth("o'brien@contoso.com")
	s.EnableSMTPAuth("*@contoso.com")
	s.AddSendAs("shared@contoso.com", "invoices@contoso.com")
	s.AddSendAs("shared@contoso.com", "*@contoso.com")
	s.AddMailboxPermission("invoices@contoso.com")
	s.EnablePOP3("invoices@contoso.com")
	got := s.String()
	for _, want := range []string{
		"Connect-MgGraph -Environment USGov -Scopes 'Application.Read.All'\n",
		"Connect-ExchangeOnline -ExchangeEnvironmentName O365USGovGCCHigh\n",
		"Set-CASMailbox -Identity 'o''brien@contoso.com' -SmtpClientAuthenticationDisabled $false\n",
		`Get-Mailbox -ResultSize Unlimited -Filter "PrimarySmtpAddress -like '*@contoso.com'" | Set-CASMailbox -SmtpClientAuthenticationDisabled $false` + "\n",
		"Add-RecipientPermission -Identity 'shared@contoso.com' -Trustee 'invoices@contoso.com' -AccessRights SendAs -Confirm:$false\n",
		"# Add-RecipientPermission -Identity 'shared@contoso.com' -Trustee <mailbox>",
		"Add-MailboxPermission -Identity 'invoices@contoso.com' -User $sp.Id -AccessRights FullAccess\n",
		"Set-CASMailbox -Identity 'invoices@contoso.com' -PopEnabled $true\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("script lacks %q:\n%s", want, got)
		}
	}
	if g := New("").String(); g != "" {
		t.Errorf("an empty script: %q", g)
	}
	s = New(config.CloudGlobal)
	s.ConnectExchange()
	if s.String() != "Connect-ExchangeOnline\n" {
		t.Errorf("global: %q", s.String())
	}
}
