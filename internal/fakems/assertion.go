package fakems

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionSkew is the clock skew tolerated on exp and nbf.
const assertionSkew = 5 * time.Minute

// verifyAssertion checks a certificate credential the way Entra does: an
// RS256 (or PS256) JWT whose header names the registered certificate by
// x5t#S256 (or the older SHA-1 x5t), signed by its key, with aud the token
// endpoint, iss and sub the client ID, and a current exp.
func (s *Server) verifyAssertion(r *http.Request, app App) *aadError {
	if t := r.PostForm.Get("client_assertion_type"); t != assertionType {
		return &aadError{400, "invalid_request", 50027, "Invalid JWT token. Client assertion type '" + t + "' is not supported."}
	}
	malformed := &aadError{400, "invalid_request", 50027, "JWT token is invalid or malformed."}
	parts := strings.Split(r.PostForm.Get("client_assertion"), ".")
	if len(parts) != 3 {
		return malformed
	}
	var hdr struct {
		Alg     string `json:"alg"`
		X5t     string `json:"x5t"`
		X5tS256 string `json:"x5t#S256"`
	}
	var claims struct {
		Aud string `json:"aud"`
		Iss string `json:"iss"`
		Sub string `json:"sub"`
		Exp int64  `json:"exp"`
		Nbf int64  `json:"nbf"`
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || decodePart(parts[0], &hdr) != nil || decodePart(parts[1], &claims) != nil {
		return malformed
	}

	cert := app.Certificate
	if cert == nil {
		return &aadError{401, "invalid_client", 700027, "Client assertion failed signature validation. The application has no certificate credential."}
	}
	s256 := sha256.Sum256(cert.Raw)
	s1 := sha1.Sum(cert.Raw)
	if hdr.X5tS256 != base64.RawURLEncoding.EncodeToString(s256[:]) && hdr.X5t != base64.RawURLEncoding.EncodeToString(s1[:]) {
		return &aadError{401, "invalid_client", 700027, "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found.]"}
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return &aadError{401, "invalid_client", 700027, "Client assertion failed signature validation. Only RSA certificates are supported."}
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	switch hdr.Alg {
	case "RS256":
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
	case "PS256":
		err = rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, nil)
	default:
		return &aadError{401, "invalid_client", 700027, "Client assertion failed signature validation. Unsupported algorithm '" + hdr.Alg + "'."}
	}
	if err != nil {
		return &aadError{401, "invalid_client", 700027, "Client assertion failed signature validation."}
	}

	now := time.Now()
	switch {
	case claims.Aud != s.TokenURL && claims.Aud != s.BaseURL+"/"+s.Tenant+"/oauth2/token":
		return &aadError{401, "invalid_client", 700212, "No matching federated identity record found for presented assertion audience '" + claims.Aud + "'."}
	case claims.Iss != app.ClientID || claims.Sub != app.ClientID:
		return &aadError{401, "invalid_client", 700023, "Client assertion audience claim does not match Realm issuer. The iss and sub claims must be the client ID."}
	case claims.Exp == 0 || now.After(time.Unix(claims.Exp, 0).Add(assertionSkew)):
		return &aadError{401, "invalid_client", 700024, "Client assertion is not within its valid time range."}
	case claims.Nbf != 0 && now.Add(assertionSkew).Before(time.Unix(claims.Nbf, 0)):
		return &aadError{401, "invalid_client", 700024, "Client assertion is not within its valid time range."}
	}
	return nil
}

func decodePart(p string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
