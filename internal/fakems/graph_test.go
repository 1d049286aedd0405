package fakems

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// graphToken gets an app-only Graph token for the daemon app.
func graphToken(t *testing.T, s *Server) string {
	t.Helper()
	cfg := daemonConfig(s)
	cfg.Scopes = []string{"https://graph.microsoft.com/.default"}
	tok, err := cfg.Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

func graphDo(t *testing.T, s *Server, method, url, token, ctype string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func graphCode(b []byte) string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.Unmarshal(b, &e)
	return e.Error.Code
}

const graphMIME = "From: " + alice + "\r\nTo: <bob@example.com>\r\nBcc: carol@example.com\r\nSubject: hi\r\nMessage-ID: <m1@x>\r\n\r\nhello\r\n"

// TestGraphSendMailCurl sends MIME with curl, a client nobody here wrote:
// 202, the recipients are the headers', the Sent Items lookup finds it.
func TestGraphSendMailCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	s := newWorld(t, Options{})
	tok := graphToken(t, s)
	ca := s.CAFile
	body := base64.StdEncoding.EncodeToString([]byte(graphMIME))
	out, err := exec.CommandContext(t.Context(), "curl", "-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}",
		"-H", "Authorization: Bearer "+tok, "-H", "Content-Type: text/plain", "--data-binary", body,
		s.GraphURL+"/v1.0/users/"+alice+"/sendMail").CombinedOutput()
	if err != nil || string(out) != "202" {
		t.Fatalf("curl: %v %s", err, out)
	}
	msgs := s.GraphMessages()
	if len(msgs) != 1 || strings.Join(msgs[0].Recipients, ",") != "bob@example.com,carol@example.com" || string(msgs[0].MIME) != graphMIME {
		t.Fatalf("recorded %+v", msgs)
	}
	resp, b := graphDo(t, s, "GET", s.GraphURL+"/v1.0/users/"+alice+"/mailFolders/sentitems/messages?%24filter="+
		strings.ReplaceAll("internetMessageId eq '<m1@x>'", " ", "%20"), tok, "", nil)
	var list struct {
		Value []struct{ InternetMessageID string }
	}
	if json.Unmarshal(b, &list); resp.StatusCode != 200 || len(list.Value) != 1 || list.Value[0].InternetMessageID != "<m1@x>" {
		t.Fatalf("sent items: %d %s", resp.StatusCode, b)
	}
}

// TestGraphRefusals: the audience, the mailbox's access, SendAs, the
// permissions, REST disabled and the 4 MB limit, each with Graph's code.
func TestGraphRefusals(t *testing.T) {
	s := newWorld(t, Options{})
	tok := graphToken(t, s)
	mime := []byte(base64.StdEncoding.EncodeToString([]byte(graphMIME)))
	send := func(mbox, tok string, body []byte) (int, string) {
		resp, b := graphDo(t, s, "POST", s.GraphURL+"/v1.0/users/"+mbox+"/sendMail", tok, "text/plain", body)
		return resp.StatusCode, graphCode(b)
	}
	outlook, err := daemonConfig(s).Token(ctxWithClient(t, s))
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, status int, code string, gotStatus int, gotCode string) {
		t.Helper()
		if gotStatus != status || gotCode != code {
			t.Errorf("%s: %d %s, want %d %s", name, gotStatus, gotCode, status, code)
		}
	}
	st, c := send(alice, outlook.AccessToken, mime)
	check("Outlook token", 401, "InvalidAuthenticationToken", st, c)
	st, c = send(bob, tok, []byte(base64.StdEncoding.EncodeToString([]byte(strings.ReplaceAll(graphMIME, alice, bob)))))
	check("not granted", 403, "ErrorAccessDenied", st, c)
	st, c = send(alice, tok, []byte(base64.StdEncoding.EncodeToString([]byte(strings.ReplaceAll(graphMIME, alice, shared)))))
	check("send as", 403, "ErrorSendAsDenied", st, c)
	st, c = send(alice, tok, bytes.Repeat([]byte("QUFB"), 1<<20+1))
	check("4 MB", 413, "RequestBodyTooLarge", st, c)
	s.SetMailboxRESTDisabled(alice, true)
	st, c = send(alice, tok, mime)
	check("REST disabled", 404, "MailboxNotEnabledForRESTAPI", st, c)
	s.SetMailboxRESTDisabled(alice, false)
	s.SetGraphPermissions(daemonID, permMailReadWrite)
	st, c = send(alice, graphToken(t, s), mime)
	check("no Mail.Send", 403, "ErrorAccessDenied", st, c)
	if len(s.GraphMessages()) != 0 {
		t.Error("a refused message was recorded")
	}
}

// TestGraphDraftUpload: a draft from MIME, an attachment through an upload
// session in ranges, send: the fake reassembles it byte for byte.
func TestGraphDraftUpload(t *testing.T) {
	s := newWorld(t, Options{})
	tok := graphToken(t, s)
	base := s.GraphURL + "/v1.0/users/" + alice + "/messages"
	resp, b := graphDo(t, s, "POST", base, tok, "text/plain", []byte(base64.StdEncoding.EncodeToString([]byte(graphMIME))))
	var d struct{ ID string }
	if json.Unmarshal(b, &d); resp.StatusCode != 201 || d.ID == "" {
		t.Fatalf("draft: %d %s", resp.StatusCode, b)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 400_000) // 6.4 MB
	item := fmt.Sprintf(`{"AttachmentItem":{"attachmentType":"file","name":"big.bin","size":%d,"contentType":"application/octet-stream"}}`, len(data))
	resp, b = graphDo(t, s, "POST", base+"/"+d.ID+"/attachments/createUploadSession", tok, "application/json", []byte(item))
	var up struct{ UploadURL string }
	if json.Unmarshal(b, &up); resp.StatusCode != 201 || up.UploadURL == "" {
		t.Fatalf("upload session: %d %s", resp.StatusCode, b)
	}
	put := func(from, to int, token string) int {
		req, _ := http.NewRequestWithContext(t.Context(), "PUT", up.UploadURL, bytes.NewReader(data[from:to]))
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to-1, len(data)))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := s.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := put(0, 10, tok); st != 401 {
		t.Errorf("PUT with Authorization: %d, want 401", st)
	}
	const chunk = 12 * 320 << 10
	for from := 0; from < len(data); from += chunk {
		to := min(from+chunk, len(data))
		want := 200
		if to == len(data) {
			want = 201
		}
		if st := put(from, to, ""); st != want {
			t.Fatalf("PUT %d-%d: %d, want %d", from, to, st, want)
		}
	}
	if resp, b = graphDo(t, s, "POST", base+"/"+d.ID+"/send", tok, "", nil); resp.StatusCode != 202 {
		t.Fatalf("send: %d %s", resp.StatusCode, b)
	}
	msgs := s.GraphMessages()
	if len(msgs) != 1 || len(msgs[0].Attachments) != 1 || msgs[0].Attachments[0].SHA256 != sha256.Sum256(data) || msgs[0].Via != "draft" {
		t.Fatalf("recorded %+v", msgs)
	}
	if !bytes.Contains(msgs[0].MIME, []byte(base64.StdEncoding.EncodeToString(data[:57]))) {
		t.Error("reassembled MIME lacks the attachment")
	}
}
