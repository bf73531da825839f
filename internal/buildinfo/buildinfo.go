// Package buildinfo identifies a binary of ssi: its version and the commit it was built from.
package buildinfo

import "runtime/debug"

// Info identifies a binary.
type Info struct {
	Version string
	Commit  string
}

// Get returns version and commit as set at link time (-X main.version, -X main.commit), the
// commit falling back to the one Go stamped into the binary.
func Get(version, commit string) Info {
	if commit != "" {
		return Info{Version: version, Commit: commit}
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return Info{Version: version, Commit: s.Value}
			}
		}
	}
	// Go stamps the revision when it builds inside a git checkout, unless told not to
	// (GOFLAGS=-buildvcs=false, as on some build machines).
	return Info{Version: version, Commit: "unknown: build in a git checkout with -buildvcs=true to record it"}
}
