package fs

import (
	"errors"
	"os"
	"path/filepath"
)

// FromNode is where a path of another node is found on this one: the path itself when the
// part that decides exists here (the path for a directory, its parent for a file), else the
// same path on node through the tree mounted at tree when it exists there, else "". This is
// how commands and jobs started away from their caller's node keep their working directory
// and output files. An empty tree or node skips the second place.
func FromNode(path string, isDir bool, tree, node string) string {
	if present(path, isDir) {
		return path
	}
	if tree == "" || node == "" {
		return ""
	}
	if through := filepath.Join(tree, node, path); present(through, isDir) {
		return through
	}
	return ""
}

// present reports whether path (or, for a file, its directory) exists. A path that exists but
// cannot be examined counts: whatever uses it reports the real error.
func present(path string, isDir bool) bool {
	if !isDir {
		path = filepath.Dir(path)
	}
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}
