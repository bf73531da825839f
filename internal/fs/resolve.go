package fs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	maxNameLen = 255
	// maxPathLen is Linux's PATH_MAX less the NUL: the longest path one system call takes, and
	// the longest symlink target.
	maxPathLen = 4095
	// maxRefPath bounds the paths of requests. A tree may be deeper than PATH_MAX: programs
	// walk it with openat, one directory at a time, and so does the kernel for the mount.
	maxRefPath = 1 << 20
)

// validName reports whether a client-supplied file name is a single directory entry name. Any
// bytes but '/' and NUL are allowed, as on Linux: names need not be UTF-8.
func validName(name []byte) syscall.Errno {
	switch {
	case len(name) == 0:
		return syscall.EINVAL
	case len(name) > maxNameLen:
		return syscall.ENAMETOOLONG
	case bytes.Equal(name, []byte(".")), bytes.Equal(name, []byte("..")):
		return syscall.EINVAL
	case bytes.IndexByte(name, '/') >= 0, bytes.IndexByte(name, 0) >= 0:
		return syscall.EINVAL
	}
	return 0
}

// validPath reports whether a client-supplied path names an object below the owner's root
// without any help from resolution: "" (the root) or names joined by single slashes.
func validPath(path []byte) syscall.Errno {
	if len(path) == 0 {
		return 0
	}
	if len(path) > maxRefPath {
		return syscall.ENAMETOOLONG
	}
	for _, name := range bytes.Split(path, []byte("/")) {
		if errno := validName(name); errno != 0 {
			return errno
		}
	}
	return 0
}

// joinPath appends name to the directory path dir ("" being the root).
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// splitPath returns the directory and the last name of a valid non-empty path.
func splitPath(path string) (dir, name string) {
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return "", path
	}
	return path[:i], path[i+1:]
}

func parentPath(path string) string {
	dir, _ := splitPath(path)
	return dir
}

// export is one exported subtree, held open so that nothing is resolved outside it.
type export struct {
	rel string // below the server root, "" for the whole tree
	fd  int    // O_PATH directory
}

type placement int

const (
	outside  placement = iota // not exported: does not exist for clients
	ancestor                  // a directory on the way to an export: look, do not touch
	inside                    // exported
)

// locate says where path stands with respect to the exports, and for paths inside one, which
// export and the rest of the path below it.
func locate(exports []export, path string) (placement, *export, string) {
	verdict := outside
	for i := range exports {
		e := &exports[i]
		switch {
		case e.rel == "":
			return inside, e, path
		case path == e.rel:
			return inside, e, ""
		case strings.HasPrefix(path, e.rel+"/"):
			return inside, e, path[len(e.rel)+1:]
		case path == "" || strings.HasPrefix(e.rel, path+"/"):
			verdict = ancestor
		}
	}
	return verdict, nil, ""
}

// openExports opens root and each export below it. Exports are absolute paths as seen on the
// owner; each must be a real directory, not reached through a symlink.
func openExports(root string, paths []string) (rootFD int, exports []export, err error) {
	rootFD, err = unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("open file server root %q: %w (set the root to an existing directory)", root, err)
	}
	if len(paths) == 0 {
		return rootFD, []export{{rel: "", fd: rootFD}}, nil
	}
	for _, p := range paths {
		clean := filepath.Clean(p)
		if !filepath.IsAbs(p) || clean != p && clean+"/" != p {
			closeExports(rootFD, exports)
			return -1, nil, fmt.Errorf("export %q is not a clean absolute path: write it like /home/shared", p)
		}
		rel := strings.TrimPrefix(clean, "/")
		if rel == "" {
			closeExports(rootFD, exports)
			return rootFD, []export{{rel: "", fd: rootFD}}, nil
		}
		fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			closeExports(rootFD, exports)
			return -1, nil, fmt.Errorf("open export %q below %q: %w (export existing directories, not symlinks)", p, root, err)
		}
		exports = append(exports, export{rel: rel, fd: fd})
	}
	return rootFD, exports, nil
}

func closeExports(rootFD int, exports []export) {
	for _, e := range exports {
		if e.fd != rootFD {
			unix.Close(e.fd)
		}
	}
	if rootFD >= 0 {
		unix.Close(rootFD)
	}
}

// resolved is an object named by the directory that holds it and its name there. An empty name
// means the directory itself (the root of the tree or of an export).
type resolved struct {
	dir      int
	name     string
	closeDir bool
	// modifiable: the entry is inside an export, so it may be created, removed or renamed.
	modifiable bool
	// exported: the object itself is exported (an export's root or below), so its attributes
	// may be changed.
	exported bool
}

func (r resolved) close() {
	if r.closeDir {
		unix.Close(r.dir)
	}
}

// at returns the path and flags for an *at system call on the object, following no symlink.
func (r resolved) at() (string, int) {
	if r.name == "" {
		return "", unix.AT_EMPTY_PATH | unix.AT_SYMLINK_NOFOLLOW
	}
	return r.name, unix.AT_SYMLINK_NOFOLLOW
}

// resolveFlags confine resolution to the export: ".." stops at its root, absolute symlinks start
// there, and /proc magic links are refused.
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// resolve finds the directory holding path (relative to the root) with the calling thread's
// credentials, so search permission on every directory on the way is checked.
func (s *Server) resolve(path string) (resolved, syscall.Errno) {
	r, errno := s.resolveIn(path)
	if errno == 0 && inAgentProc(r.dir, r.name) {
		r.close()
		return resolved{}, syscall.ENOENT
	}
	return r, errno
}

// resolveIn is resolve without the check that hides the agent's own /proc/<pid>.
func (s *Server) resolveIn(path string) (resolved, syscall.Errno) {
	where, e, sub := locate(s.exports, path)
	switch {
	case where == outside:
		return resolved{}, syscall.ENOENT
	case where == inside && sub != "":
		dir, name := splitPath(sub)
		fd, errno := openBelow(e.fd, dir, unix.O_PATH|unix.O_DIRECTORY)
		if errno != 0 {
			return resolved{}, errno
		}
		return resolved{dir: fd, name: name, closeDir: true, modifiable: true, exported: true}, 0
	case path == "":
		return resolved{dir: s.rootFD, name: "", exported: where == inside}, 0
	default:
		// An export root or a directory above one, resolved from the server root.
		dir, name := splitPath(path)
		fd, errno := openBelow(s.rootFD, dir, unix.O_PATH|unix.O_DIRECTORY)
		if errno != 0 {
			return resolved{}, errno
		}
		return resolved{dir: fd, name: name, closeDir: true, exported: where == inside}, 0
	}
}

// openBelow opens path below the directory base ("" being base itself) without leaving it.
// A path longer than PATH_MAX is opened a piece at a time, each piece from the directory the
// last one led to.
func openBelow(base int, path string, flags int) (int, syscall.Errno) {
	if path == "" {
		path = "."
	}
	dir := base
	defer func() {
		if dir != base {
			unix.Close(dir)
		}
	}()
	for len(path) > maxPathLen {
		// Names are at most 255 bytes, so there is a slash well inside the first PATH_MAX.
		cut := strings.LastIndexByte(path[:maxPathLen], '/')
		if cut <= 0 {
			return -1, syscall.ENAMETOOLONG
		}
		// Symlinks along the way are followed as within one path; the pieces after the first
		// are confined below the directory they start from, still inside the export.
		fd, err := unix.Openat2(dir, path[:cut], &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: resolveFlags,
		})
		if err != nil {
			return -1, errnoOf(err)
		}
		if dir != base {
			unix.Close(dir)
		}
		dir, path = fd, path[cut+1:]
	}
	fd, err := unix.Openat2(dir, path, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: resolveFlags,
	})
	if err != nil {
		return -1, errnoOf(err)
	}
	return fd, 0
}

// openObject opens the resolved object itself as O_PATH, not following it if it is a symlink.
func openObject(r resolved) (int, syscall.Errno) {
	if r.name == "" {
		fd, err := unix.Openat(r.dir, ".", unix.O_PATH|unix.O_CLOEXEC, 0)
		return fd, errnoOf(err)
	}
	fd, err := unix.Openat(r.dir, r.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, errnoOf(err)
	}
	return fd, 0
}

// procFD names an open descriptor through /proc so that calls which take only a path (chmod,
// truncate, xattrs) act on exactly that object, whatever happens to its name meanwhile.
func procFD(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// errnoOf turns a system call error into the errno sent to the client.
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if errno, ok := err.(syscall.Errno); ok {
		return errno
	}
	return syscall.EIO
}

// inAgentProc reports whether the object name in the directory dir ("" for dir itself) is the
// agent's own /proc/<pid> (or a thread's, /proc/<tid>) or inside it, in any mount of procfs.
// The kernel lets a process look at itself whatever its credentials (a thread of the same
// process passes every ptrace check): served as the caller, /proc/<agent>/maps would show
// anyone the agent's memory layout, and /proc/<agent>/mem, mode 0600 for root, would let a
// root caller without capabilities write into the agent. The tree hides them, as it hides
// the cluster's own mounts.
func inAgentProc(dir int, name string) bool {
	var sfs unix.Statfs_t
	if unix.Fstatfs(dir, &sfs) != nil {
		return true // cannot tell: refuse
	}
	if sfs.Type != unix.PROC_SUPER_MAGIC {
		return false
	}
	p, err := os.Readlink(procFD(dir))
	if err != nil {
		return true
	}
	if name != "" {
		p += "/" + name
	}
	parts := strings.Split(p, "/")
	for i, part := range parts {
		if isAgentTask(part) && isProcRoot(strings.Join(parts[:i], "/")) {
			return true
		}
	}
	return false
}

// isAgentTask reports whether name is the agent's pid or the id of one of its threads.
func isAgentTask(name string) bool {
	n, err := strconv.Atoi(name)
	if err != nil || n <= 0 {
		return false
	}
	if n == os.Getpid() {
		return true
	}
	_, err = os.Lstat("/proc/self/task/" + name)
	return err == nil
}

// procRootIno is the inode number of a procfs mount's root (PROC_ROOT_INO).
const procRootIno = 1

// isProcRoot reports whether dir is the root of a procfs mount.
func isProcRoot(dir string) bool {
	if dir == "" {
		dir = "/"
	}
	var sfs unix.Statfs_t
	var st unix.Stat_t
	return unix.Statfs(dir, &sfs) == nil && sfs.Type == unix.PROC_SUPER_MAGIC &&
		unix.Stat(dir, &st) == nil && st.Ino == procRootIno
}
