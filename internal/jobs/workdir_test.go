package jobs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFromSubmitNode(t *testing.T) {
	root := t.TempDir()
	tree := filepath.Join(root, "tree")
	here := filepath.Join(root, "here")       // exists on this node
	onlyHome := filepath.Join(root, "home-w") // exists only on the submit node n1
	for _, d := range []string{here, filepath.Join(tree, "n1", onlyHome)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	through := filepath.Join(tree, "n1", onlyHome)
	for _, c := range []struct {
		name, path string
		isDir      bool
		tree, from string
		want       string
	}{
		{"exists here", here, true, tree, "n1", here},
		{"only on the submit node", onlyHome, true, tree, "n1", through},
		{"output file in such a directory", onlyHome + "/ssi-7.out", false, tree, "n1", through + "/ssi-7.out"},
		{"output file here", here + "/ssi-7.out", false, tree, "n1", here + "/ssi-7.out"},
		{"no tree mounted", onlyHome, true, "", "n1", onlyHome},
		{"submitted on this node", onlyHome, true, tree, "n2", onlyHome},
		{"nowhere", "/no/such/dir", true, tree, "n1", "/no/such/dir"},
	} {
		if got := fromSubmitNode(c.path, c.isDir, c.tree, c.from, "n2"); got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, got, c.want)
		}
	}
}
