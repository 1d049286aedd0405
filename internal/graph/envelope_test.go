package graph

import (
	"bufio"
	"strings"
	"testing"
)

func TestRewriteHeader(t *testing.T) {
	for _, tc := range []struct {
		name, head string
		rcpts      []string
		want       string
		removed    []string
		added      []string
	}{
		{"unchanged", "From: a@x\r\nTo: b@y\r\nMessage-ID: <1@x>\r\n\r\n", []string{"B@y"},
			"From: a@x\r\nTo: b@y\r\nMessage-ID: <1@x>\r\n\r\n", nil, nil},
		{"bcc only in the envelope", "From: a@x\r\nTo: Bob <b@y>\r\nMessage-ID: <1@x>\r\n\r\n", []string{"b@y", "c@z"},
			"From: a@x\r\nTo: Bob <b@y>\r\nMessage-ID: <1@x>\r\nBcc: <c@z>\r\n\r\n", nil, []string{"c@z"}},
		{"header-only recipient removed", "From: a@x\r\nTo: b@y,\r\n d@q\r\nCc: e@q\r\nMessage-ID: <1@x>\r\n\r\n", []string{"b@y"},
			"From: a@x\r\nTo: <b@y>\r\nMessage-ID: <1@x>\r\n\r\n", []string{"d@q", "e@q"}, nil},
		{"existing Bcc merged", "To: b@y\r\nBcc: c@z, x@q\r\nMessage-ID: <1@x>\r\n\r\n", []string{"b@y", "c@z", "n@n"},
			"To: b@y\r\nBcc: <c@z>,\r\n <n@n>\r\nMessage-ID: <1@x>\r\n\r\n", []string{"x@q"}, []string{"n@n"}},
		{"undisclosed recipients kept", "To: undisclosed-recipients:;\r\nMessage-ID: <1@x>\r\n\r\n", []string{"c@z"},
			"To: undisclosed-recipients:;\r\nMessage-ID: <1@x>\r\nBcc: <c@z>\r\n\r\n", nil, []string{"c@z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, rw, err := RewriteHeader([]byte(tc.head), tc.rcpts, "relay.test")
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
			if strings.Join(rw.Removed, ",") != strings.Join(tc.removed, ",") || strings.Join(rw.Added, ",") != strings.Join(tc.added, ",") {
				t.Errorf("removed %v added %v, want %v %v", rw.Removed, rw.Added, tc.removed, tc.added)
			}
		})
	}
}

func TestRewriteAddsMessageID(t *testing.T) {
	got, rw, err := RewriteHeader([]byte("To: b@y\r\n\r\n"), []string{"b@y"}, "relay.test")
	if err != nil || !rw.Generated || !strings.HasSuffix(rw.MessageID, "@relay.test>") || !strings.Contains(string(got), "Message-ID: "+rw.MessageID+"\r\n\r\n") {
		t.Fatalf("%q %+v %v", got, rw, err)
	}
}

func TestReadHeader(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("A: 1\r\nB: 2\r\n\r\nbody\r\n"))
	h, err := ReadHeader(br)
	rest, _ := br.ReadString(0)
	if err != nil || string(h) != "A: 1\r\nB: 2\r\n\r\n" || rest != "body\r\n" {
		t.Fatalf("%q %q %v", h, rest, err)
	}
	if _, err := ReadHeader(bufio.NewReader(strings.NewReader(strings.Repeat("X: y\r\n", 60000)))); err != ErrHeaderTooLong {
		t.Fatalf("long header: %v", err)
	}
}
