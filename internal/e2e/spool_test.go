package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestCheckpointDirInDataDir checks that a task's $SSI_CHECKPOINT_DIR is in its own agent's
// data dir (so two ssi dev clusters on one machine never share one), and that the task's
// user can use it there.
func TestCheckpointDirInDataDir(t *testing.T) {
	c := startCluster(t, 1)
	script := `echo "$SSI_CHECKPOINT_DIR"; touch "$SSI_CHECKPOINT_DIR/step" && echo written`
	r := inside(t, c, "n1", "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"ssi", "submit", "--output", "/tmp/ckpt.out", "--", "sh", "-c", script)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || id == "" {
		t.Fatalf("ssi submit as nobody: %v", r)
	}
	eventually(t, 20*time.Second, "job "+id+" completed", func() bool { return jobState(t, c, "n1", id).State == "completed" })
	out := inside(t, c, "n1", "cat", "/tmp/ckpt.out")
	lines := strings.Split(strings.TrimSpace(out.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "/run/ssi/data/spool/n1/ckpt/65534/") || lines[1] != "written" {
		t.Fatalf("the task's output %v, want its checkpoint directory under the agent's data dir /run/ssi/data and written", out)
	}
}
