package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
	"github.com/ssi-cluster/ssi/internal/buildinfo"
)

// Scripts get [] and {} for what is empty (etcd unreachable, say), never null.
func TestStatusJSONHasNoNulls(t *testing.T) {
	var b bytes.Buffer
	if err := (printer{w: &b, format: formatJSON}).json(toStatusJSON(&ssipb.StatusResponse{})); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "null") {
		t.Errorf("ssi status -o json of an empty status has null:\n%s", b.String())
	}
}

func TestVersionJSON(t *testing.T) {
	args := []string{"version", "-o", "json"}
	var stdout, stderr strings.Builder
	code := execute(NewRoot(buildinfo.Info{Version: "v1.2", Commit: "abc"}, args, nil), args, &stdout, &stderr)
	var v struct {
		Version, Commit, Go string
		Protocol            int
	}
	if err := json.Unmarshal([]byte(stdout.String()), &v); code != 0 || err != nil || v.Version != "v1.2" || v.Commit != "abc" || v.Protocol != ssipb.ProtocolVersion || v.Go == "" {
		t.Errorf("ssi version -o json: exit %d, %q (%v), stderr %q", code, stdout.String(), err, stderr.String())
	}
}

func TestVersionFlag(t *testing.T) {
	build := buildinfo.Info{Version: "v1.2", Commit: "abc"}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var stdout, stderr strings.Builder
		code := execute(NewRoot(build, args, nil), args, &stdout, &stderr)
		if want := versionLine(build) + "\n"; code != 0 || stdout.String() != want {
			t.Errorf("ssi %v: exit %d, stdout %q, stderr %q; want %q", args, code, stdout.String(), stderr.String(), want)
		}
	}
}
