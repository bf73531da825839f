// Command ssi is the command line of the ssi cluster: every client command, started in a few
// milliseconds because it links neither gRPC nor the agent. The commands that run the cluster
// (ssi agent, ssi dev) are in ssid, built next to it, which ssi runs in its place.
package main

import (
	"os"

	"github.com/ssi-cluster/ssi/internal/buildinfo"
	"github.com/ssi-cluster/ssi/internal/cli"
)

// Set at build time: go build -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func main() {
	os.Exit(cli.Execute(buildinfo.Get(version, commit), os.Args[1:], nil))
}
