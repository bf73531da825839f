package fs

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The randomized test applies the same random operations to a directory of another node through
// the mount and to a local directory, and compares every result and the final trees.

type fsOp struct {
	name string
	// do applies the operation below root and returns what is observable of it.
	do func(root string) (string, error)
}

func errnoOf2(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

func describeStat(st os.FileInfo) string {
	s := st.Sys().(*syscall.Stat_t)
	size := st.Size()
	if st.IsDir() {
		size = 0 // directory sizes depend on the file system's history, not on the operations
	}
	return fmt.Sprintf("type=%v perm=%v size=%d nlink=%d", st.Mode().Type(), st.Mode().Perm(), size, s.Nlink)
}

func randomOp(r *rand.Rand) fsOp {
	names := []string{"a", "b", "c", "d1/a", "d1/b", "d2/a", "d1/e/f", "d2"}
	dirs := []string{"d1", "d2", "d1/e", "d3"}
	pick := func(list []string) string { return list[r.IntN(len(list))] }
	data := func() []byte {
		b := make([]byte, r.IntN(3*4096))
		for i := range b {
			b[i] = byte('a' + r.IntN(26))
		}
		return b
	}
	switch r.IntN(16) {
	case 0:
		p, d, perm := pick(names), data(), os.FileMode(0o600+r.IntN(0o177))
		return fsOp{fmt.Sprintf("write %s (%d bytes)", p, len(d)), func(root string) (string, error) {
			return "", os.WriteFile(filepath.Join(root, p), d, perm)
		}}
	case 1:
		p, d := pick(names), data()
		return fsOp{"append " + p, func(root string) (string, error) {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return "", err
			}
			defer f.Close()
			_, err = f.Write(d)
			return "", err
		}}
	case 2:
		p, d, off := pick(names), data(), int64(r.IntN(20000))
		return fsOp{fmt.Sprintf("write %s at %d", p, off), func(root string) (string, error) {
			f, err := os.OpenFile(filepath.Join(root, p), os.O_RDWR, 0)
			if err != nil {
				return "", err
			}
			defer f.Close()
			_, err = f.WriteAt(d, off)
			return "", err
		}}
	case 3:
		p, size := pick(names), int64(r.IntN(10000))
		return fsOp{fmt.Sprintf("truncate %s %d", p, size), func(root string) (string, error) {
			return "", os.Truncate(filepath.Join(root, p), size)
		}}
	case 4:
		p := pick(names)
		return fsOp{"read " + p, func(root string) (string, error) {
			b, err := os.ReadFile(filepath.Join(root, p))
			return string(b), err
		}}
	case 5:
		p := pick(append(names, dirs...))
		return fsOp{"lstat " + p, func(root string) (string, error) {
			st, err := os.Lstat(filepath.Join(root, p))
			if err != nil {
				return "", err
			}
			return describeStat(st), nil
		}}
	case 6:
		p, perm := pick(dirs), os.FileMode(0o700+r.IntN(0o77))
		return fsOp{"mkdir " + p, func(root string) (string, error) { return "", os.Mkdir(filepath.Join(root, p), perm) }}
	case 7:
		p := pick(dirs)
		return fsOp{"rmdir " + p, func(root string) (string, error) { return "", syscall.Rmdir(filepath.Join(root, p)) }}
	case 8:
		p := pick(names)
		return fsOp{"unlink " + p, func(root string) (string, error) { return "", syscall.Unlink(filepath.Join(root, p)) }}
	case 9:
		a, b := pick(append(names, dirs...)), pick(append(names, dirs...))
		return fsOp{"rename " + a + " " + b, func(root string) (string, error) {
			return "", os.Rename(filepath.Join(root, a), filepath.Join(root, b))
		}}
	case 10:
		a, b := pick(names), pick(names)
		return fsOp{"link " + a + " " + b, func(root string) (string, error) {
			return "", os.Link(filepath.Join(root, a), filepath.Join(root, b))
		}}
	case 11:
		target, p := pick([]string{"a", "b", "d1", "missing"}), pick(names)
		return fsOp{"symlink " + target + " " + p, func(root string) (string, error) {
			return "", os.Symlink(target, filepath.Join(root, p))
		}}
	case 12:
		p := pick(names)
		return fsOp{"readlink " + p, func(root string) (string, error) { return os.Readlink(filepath.Join(root, p)) }}
	case 13:
		p, perm := pick(append(names, dirs...)), os.FileMode(0o700+r.IntN(0o77))
		return fsOp{fmt.Sprintf("chmod %s %v", p, perm), func(root string) (string, error) {
			return "", os.Chmod(filepath.Join(root, p), perm)
		}}
	case 14:
		p := pick(append(dirs, "."))
		return fsOp{"list " + p, func(root string) (string, error) {
			entries, err := os.ReadDir(filepath.Join(root, p))
			var out []string
			for _, e := range entries {
				out = append(out, e.Name()+":"+e.Type().String())
			}
			return strings.Join(out, ","), err
		}}
	default:
		p, when := pick(names), time.Unix(int64(1e9+r.IntN(1e8)), int64(r.IntN(1e9)))
		return fsOp{"utimes " + p, func(root string) (string, error) {
			if err := os.Chtimes(filepath.Join(root, p), when, when); err != nil {
				return "", err
			}
			st, err := os.Stat(filepath.Join(root, p))
			if err != nil {
				return "", err
			}
			return st.ModTime().String(), nil
		}}
	}
}

// treeSnapshot describes a whole tree for comparison.
func treeSnapshot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := rel + " " + describeStat(st)
		switch {
		case st.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" content=%x", b)
		case st.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		}
		out = append(out, line)
		return nil
	})
	must(t, err)
	slices.Sort(out)
	return out
}

func TestRandomOperationsMatchALocalDirectory(t *testing.T) {
	c := newTestCluster(t, "n1", "n2")
	n1 := c.node("n1")
	n1.mountTree(5 * time.Second)
	ops := 1500
	if testing.Short() {
		ops = 300
	}
	for _, seed := range []uint64{1, 2, uint64(time.Now().UnixNano())} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			remote := n1.path("n2", fmt.Sprint("random-", seed))
			local := filepath.Join(t.TempDir(), "local")
			must(t, os.Mkdir(remote, 0o755))
			must(t, os.Mkdir(local, 0o755))
			r := rand.New(rand.NewPCG(seed, seed))
			for i := range ops / 3 {
				op := randomOp(r)
				gotOut, gotErr := op.do(remote)
				wantOut, wantErr := op.do(local)
				if errnoOf2(gotErr) != errnoOf2(wantErr) || gotOut != wantOut {
					t.Fatalf("op %d, %s: mount gave (%.80q, %v), local gave (%.80q, %v)",
						i, op.name, gotOut, errnoOf2(gotErr), wantOut, errnoOf2(wantErr))
				}
			}
			got, want := treeSnapshot(t, remote), treeSnapshot(t, local)
			t.Logf("final tree: %d entries", len(got))
			if !slices.Equal(got, want) {
				t.Fatalf("trees differ:\nmount: %q\nlocal: %q", got, want)
			}
		})
	}
}
