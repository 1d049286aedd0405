// Command manpage writes oauthrelay(1) from README.md, so that the man page
// of the packages says what the README says: its commands are the README's
// "Commands" table, row for row (cmd/oauthrelay's TestREADMECommands keeps
// that table equal to the binary's own command list).
//
//	go run ./dist/manpage -version V README.md > oauthrelay.1
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

func main() {
	version := flag.String("version", "dev", "version for the page footer")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: manpage [-version V] README.md")
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err == nil {
		defer f.Close()
		var rows []row
		if rows, err = commandRows(f); err == nil {
			err = write(os.Stdout, *version, rows)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "manpage:", err)
		os.Exit(1)
	}
}

// row is one line of the README's Commands table.
type row struct{ synopsis, text string }

// commandRows reads the table under "## Commands".
func commandRows(r io.Reader) ([]row, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	in := false
	var rows []row
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "## Commands":
			in = true
		case in && strings.HasPrefix(line, "## "):
			in = false
		case in && strings.HasPrefix(line, "| `"):
			cells := splitRow(line)
			if len(cells) != 2 {
				return nil, fmt.Errorf("README.md Commands: want 2 columns: %s", line)
			}
			rows = append(rows, row{cells[0], cells[1]})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, errors.New("README.md has no Commands table")
	}
	return rows, nil
}

// splitRow splits a Markdown table row at the | that are not escaped.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(line), "|"), "|")
	var cells []string
	var b strings.Builder
	for i := 0; i < len(line); i++ {
		switch {
		case line[i] == '\\' && i+1 < len(line) && line[i+1] == '|':
			b.WriteByte('|')
			i++
		case line[i] == '|':
			cells = append(cells, strings.TrimSpace(b.String()))
			b.Reset()
		default:
			b.WriteByte(line[i])
		}
	}
	return append(cells, strings.TrimSpace(b.String()))
}

var (
	codeRE = regexp.MustCompile("`([^`]*)`")
	boldRE = regexp.MustCompile(`\*\*([^*]*)\*\*`)
	linkRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// roff turns a cell's Markdown into roff text: code in bold, links as their
// text, the characters roff gives a meaning escaped.
func roff(md string) string {
	s := strings.ReplaceAll(md, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	s = linkRE.ReplaceAllString(s, "$1")
	s = boldRE.ReplaceAllString(s, `\fB$1\fR`)
	s = codeRE.ReplaceAllString(s, `\fB$1\fR`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func write(w io.Writer, version string, rows []row) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH OAUTHRELAY 1 \"\" \"oauthrelay %s\" \"User Commands\"\n", roff(version))
	b.WriteString(".SH NAME\noauthrelay \\- plain SMTP/IMAP for legacy applications, OAuth 2.0 to Microsoft 365\n")
	b.WriteString(".SH SYNOPSIS\n.B oauthrelay\n.I COMMAND\n[\n.I ARGS\n]\n")
	b.WriteString(".SH DESCRIPTION\nThe application keeps speaking plain SMTP and IMAP to 127.0.0.1 with a local " +
		"username and password; oauthrelay maps the login to a configured mailbox, gets an OAuth 2.0 access token " +
		"and authenticates upstream with SASL XOAUTH2.\n")
	b.WriteString(".SH COMMANDS\n")
	for _, r := range rows {
		fmt.Fprintf(&b, ".TP\n.B oauthrelay %s\n%s\n", roff(strings.Trim(r.synopsis, "`")), roff(r.text))
	}
	b.WriteString(".SH FILES\n" +
		".TP\n.I /etc/oauthrelay/config.yaml\nthe configuration; every key is described in " +
		"/usr/share/doc/oauthrelay/config.example.yaml, and /usr/share/oauthrelay/config.schema.json is its JSON Schema\n" +
		".TP\n.I /var/lib/oauthrelay\ntoken store, its key, the spool of delivery: queue\n" +
		".SH EXIT STATUS\n0 on success, 1 on failure, 2 on a usage error. For check: 0 every step passed (warnings allowed), " +
		"1 a step failed, 2 a usage or configuration error.\n" +
		".SH SEE ALSO\n/usr/share/doc/oauthrelay/README.md, /usr/share/doc/oauthrelay/deploy.md, " +
		"\\fBsystemctl\\fR(1)\n")
	_, err := io.WriteString(w, b.String())
	return err
}
