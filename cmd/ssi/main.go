// Command ssi is the single binary of the ssi cluster: the node daemon (ssi agent) and every
// client command.
package main

import (
	"os"
	"runtime/debug"

	"github.com/ssi-cluster/ssi/internal/cli"
)

// Set at build time: go build -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func main() {
	os.Exit(cli.Execute(cli.BuildInfo{Version: version, Commit: buildCommit()}, os.Args[1:]))
}

func buildCommit() string {
	if commit != "" {
		return commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	// Go stamps the revision when it builds inside a git checkout, unless told not to
	// (GOFLAGS=-buildvcs=false, as on some build machines).
	return "unknown: build in a git checkout with -buildvcs=true to record it"
}
