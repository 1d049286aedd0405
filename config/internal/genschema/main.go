// Command genschema writes config.JSONSchema to the file named by its
// argument: `go generate ./config` regenerates config.schema.json after a
// key was added to the config types (TestSchemaFile fails until then).
package main

import (
	"fmt"
	"os"

	"github.com/oauthrelay/oauthrelay/config"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: genschema FILE")
		os.Exit(2)
	}
	b, err := config.JSONSchema()
	if err == nil {
		err = os.WriteFile(os.Args[1], b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "genschema:", err)
		os.Exit(1)
	}
}
