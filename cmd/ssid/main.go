// Command ssid is the server half of ssi: the node daemon (ssid agent, or ssi agent, which
// runs this binary) and the simulated cluster (ssi dev), with every client command of ssi as
// well. It is a separate binary because it links the embedded etcd server, gRPC and FUSE,
// whose initialisation would slow every short client command of ssi by milliseconds.
package main

import (
	"os"

	"github.com/ssi-cluster/ssi/internal/buildinfo"
	"github.com/ssi-cluster/ssi/internal/daemoncli"
)

// Set at build time: go build -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

func main() {
	os.Exit(daemoncli.Execute(buildinfo.Get(version, commit), os.Args[1:]))
}
