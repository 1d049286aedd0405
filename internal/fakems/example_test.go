package fakems_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/oauthrelay/oauthrelay/internal/fakems"
	"github.com/oauthrelay/oauthrelay/internal/sasl"
)

// A daemon app with client credentials sends a message through the fake
// Exchange Online, and the test looks at what arrived.
func Example() {
	ctx := context.Background()
	ms, err := fakems.Start(ctx, fakems.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer ms.Close()
	ms.AddMailbox("scanner@contoso.onmicrosoft.com", "")
	ms.AddApp(fakems.App{ClientID: "app-1", Secret: "secret"})
	ms.GrantApp("app-1", "scanner@contoso.onmicrosoft.com")

	cc := clientcredentials.Config{
		ClientID:     "app-1",
		ClientSecret: "secret",
		TokenURL:     ms.TokenURL,
		Scopes:       []string{"https://outlook.office365.com/.default"},
	}
	tok, err := cc.Token(ctx)
	if err != nil {
		log.Fatal(err)
	}

	c, err := smtp.DialStartTLS(ms.SMTPAddr, ms.ClientTLSConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewXOAuth2Client("scanner@contoso.onmicrosoft.com", tok.AccessToken)); err != nil {
		log.Fatal(err)
	}
	msg := "Subject: scan\r\n\r\nattached\r\n"
	if err := c.SendMail("scanner@contoso.onmicrosoft.com", []string{"boss@example.com"}, strings.NewReader(msg)); err != nil {
		log.Fatal(err)
	}

	got, err := ms.WaitMessages(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(got[0].From, got[0].To, got[0].AppOnly)
	// Output: scanner@contoso.onmicrosoft.com [boss@example.com] true
}
