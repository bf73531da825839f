package jobs

import (
	"os"
	"path/filepath"
)

// fromSubmitNode is where a path of the submit node is found on this node: the path itself
// when its deciding part exists here (the path for a working directory, its directory for an
// output file), else the same path on the submit node through the cluster file tree, so that
// a job submitted from a directory only the submit node has starts there and writes its
// output there. Without the tree, or when neither exists, the path is returned unchanged and
// whatever uses it fails with the usual error.
func fromSubmitNode(path string, isDir bool, tree, submitNode, self string) string {
	check := path
	if !isDir {
		check = filepath.Dir(path)
	}
	if tree == "" || submitNode == "" || submitNode == self || exists(check) {
		return path
	}
	through := filepath.Join(tree, submitNode, path)
	checkThrough := through
	if !isDir {
		checkThrough = filepath.Dir(through)
	}
	if !exists(checkThrough) {
		return path
	}
	return through
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// tree is where this node mounts the cluster file tree, or "".
func (e *executor) tree() string {
	if e.s.d.Tree == nil {
		return ""
	}
	return e.s.d.Tree()
}
