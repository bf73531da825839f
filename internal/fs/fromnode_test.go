package fs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFromNode(t *testing.T) {
	root := t.TempDir()
	tree := filepath.Join(root, "tree")
	here := filepath.Join(root, "here")     // exists on this node
	onlyN1 := filepath.Join(root, "home-w") // exists only on node n1
	for _, d := range []string{here, filepath.Join(tree, "n1", onlyN1)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	through := filepath.Join(tree, "n1", onlyN1)
	for _, c := range []struct {
		name, path string
		isDir      bool
		tree, node string
		want       string
	}{
		{"exists here", here, true, tree, "n1", here},
		{"only on the other node", onlyN1, true, tree, "n1", through},
		{"file in such a directory", onlyN1 + "/ssi-7.out", false, tree, "n1", through + "/ssi-7.out"},
		{"file here", here + "/ssi-7.out", false, tree, "n1", here + "/ssi-7.out"},
		{"no tree mounted", onlyN1, true, "", "n1", ""},
		{"no other node", onlyN1, true, tree, "", ""},
		{"nowhere", "/no/such/dir", true, tree, "n1", ""},
	} {
		if got := FromNode(c.path, c.isDir, c.tree, c.node); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}
