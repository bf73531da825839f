package fs

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

// Everything a client sends is untrusted input to the owner, and whatever an owner says a
// symlink holds is untrusted to the client. These fuzz the decoders and checks of both.

func FuzzValidPath(f *testing.F) {
	for _, s := range []string{"", "a/b", "../x", "a//b", "/etc", "a/./b", "x\x00y", strings.Repeat("a/", 3000)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if validPath(p) != 0 {
			return
		}
		// A valid path is its own clean, relative form: no resolution can take it up.
		s := string(p)
		if s == "" {
			return
		}
		if path.Clean(s) != s || strings.HasPrefix(s, "/") || strings.ContainsRune(s, 0) {
			t.Fatalf("validPath accepted %q", s)
		}
		for _, part := range strings.Split(s, "/") {
			if part == ".." || part == "." || part == "" {
				t.Fatalf("validPath accepted %q", s)
			}
		}
	})
}

func FuzzRewriteLink(f *testing.F) {
	f.Add([]byte("/etc/passwd"), []byte("l"))
	f.Add([]byte("../../x"), []byte("a/b/l"))
	f.Add([]byte("a/../../b"), []byte("d/l"))
	f.Fuzz(func(t *testing.T, target, link []byte) {
		if len(target) == 0 || validPath(link) != 0 || len(link) == 0 {
			return
		}
		const prefix = "/ssi/n2"
		got := string(rewriteLink(target, link, "/ssi", "n2"))
		if strings.HasPrefix(got, "/") {
			// Kept as it is only when it names the cluster tree, as on the owner.
			if !strings.HasPrefix(got, prefix+"/") && !(got == string(target) && inTree(got, "/ssi")) {
				t.Fatalf("rewriteLink(%q at %q) = %q leaves the node's tree", target, link, got)
			}
			return
		}
		// Kept relative: resolved lexically from the link's directory it stays below the root.
		resolved := path.Join("/", path.Dir("/"+string(link)), got)
		depth := strings.Count(string(link), "/")
		for _, part := range strings.Split(got, "/") {
			switch part {
			case "..":
				depth--
			case "", ".":
			default:
				depth++
			}
			if depth < 0 {
				t.Fatalf("rewriteLink(%q at %q) = %q climbs above the root (%s)", target, link, got, resolved)
			}
		}
	})
}

func FuzzParseDirents(f *testing.F) {
	f.Add(append(dirent(1, 1, unix.DT_REG, "a"), dirent(2, 2, unix.DT_DIR, "bb")...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, buf []byte) {
		parseDirents(buf, func(ino uint64, off int64, typ uint8, name []byte) bool {
			if len(name) > len(buf) || bytes.IndexByte(name, 0) >= 0 {
				t.Fatalf("name %q out of its record", name)
			}
			return true
		})
	})
}

func FuzzParseFIDRecords(f *testing.F) {
	rec := make([]byte, 28)
	rec[0] = unix.FAN_EVENT_INFO_TYPE_DFID_NAME
	rec[2] = 28
	rec[12] = 4 // handle bytes
	copy(rec[24:], "nm\x00\x00")
	f.Add(rec)
	f.Fuzz(func(t *testing.T, buf []byte) {
		for _, r := range parseFIDRecords(buf) {
			if len(r.name) > len(buf) || len(r.key) > len(buf)+12 {
				t.Fatalf("record %+v larger than its input", r)
			}
		}
	})
}

// FuzzRequests feeds decoded random requests to a real server whose root holds a few files and
// symlinks pointing out of it. No request may crash it, and every object it describes must be
// inside the root.
func FuzzRequests(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root (the server takes on callers' credentials)")
	}
	root := f.TempDir()
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "d", "e"), 0o755))
	must(os.WriteFile(filepath.Join(root, "d", "f"), []byte("x"), 0o644))
	must(os.Symlink("/", filepath.Join(root, "slash")))
	must(os.Symlink("../../../../..", filepath.Join(root, "d", "up")))
	inside := map[fileID]bool{}
	filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		var st unix.Statx_t
		if err == nil && unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, statxMask, &st) == nil {
			inside[statxID(&st)] = true
		}
		return nil
	})
	s, err := NewServer(ServerConfig{Root: root, ReadOnly: true, identify: testIdentify})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	ctx := withCallerNode(context.Background(), "fuzzer")

	seed := func(m proto.Message) []byte {
		b, _ := proto.Marshal(m)
		return b
	}
	caller := &fspb.Caller{Uid: 0}
	f.Add(uint8(0), seed(&fspb.LookupRequest{Session: []byte("s"), Caller: caller, Dir: &fspb.NodeRef{Path: []byte("slash")}, Name: []byte("etc")}))
	f.Add(uint8(0), seed(&fspb.LookupRequest{Session: []byte("s"), Caller: caller, Dir: &fspb.NodeRef{Path: []byte("d/up")}, Name: []byte("etc")}))
	f.Add(uint8(1), seed(&fspb.NodeRequest{Session: []byte("s"), Caller: caller, Node: &fspb.NodeRef{Path: []byte("slash/d")}}))
	f.Add(uint8(2), seed(&fspb.ReaddirRequest{Session: []byte("s"), Caller: caller, Dir: &fspb.NodeRef{Path: []byte("slash/d")}, Plus: true}))
	f.Add(uint8(3), seed(&fspb.OpenRequest{Session: []byte("s"), Caller: caller, Node: &fspb.NodeRef{Path: []byte("d/f")}}))
	f.Add(uint8(4), seed(&fspb.XattrRequest{Session: []byte("s"), Caller: caller, Node: &fspb.NodeRef{Path: []byte("d")}, Op: fspb.XattrRequest_LIST, Size: 100}))

	check := func(t *testing.T, a *fspb.Attr) {
		if a != nil && !inside[idFromPB(a.Id)] {
			t.Fatalf("the server described an object outside its root: %v", a.Id)
		}
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		switch kind % 5 {
		case 0:
			var req fspb.LookupRequest
			if proto.Unmarshal(data, &req) == nil {
				if r, err := s.Lookup(ctx, &req); err == nil {
					check(t, r.Attr)
				}
			}
		case 1:
			var req fspb.NodeRequest
			if proto.Unmarshal(data, &req) == nil {
				if r, err := s.Getattr(ctx, &req); err == nil {
					check(t, r.Attr)
				}
				s.Readlink(ctx, &req)
				s.Statfs(ctx, &req)
			}
		case 2:
			var req fspb.ReaddirRequest
			if proto.Unmarshal(data, &req) == nil {
				if r, err := s.Readdir(ctx, &req); err == nil {
					for _, e := range r.Entries {
						check(t, e.Attr)
					}
				}
			}
		case 3:
			var req fspb.OpenRequest
			if proto.Unmarshal(data, &req) == nil {
				if r, err := s.Open(ctx, &req); err == nil && r.Errno == 0 {
					check(t, r.Attr)
					s.Read(ctx, &fspb.ReadRequest{Session: req.Session, Handle: r.Handle, Size: 1 << 30, Offset: 1 << 62})
					s.Release(ctx, &fspb.HandleRequest{Session: req.Session, Handle: r.Handle})
				}
			}
		case 4:
			var req fspb.XattrRequest
			if proto.Unmarshal(data, &req) == nil {
				if r, err := s.Xattr(ctx, &req); err == nil && r.Errno == int32(syscall.EROFS) && req.Op < 2 {
					t.Fatalf("reading an xattr refused as a change")
				}
			}
		}
	})
}

// FuzzChangeRequests feeds decoded random requests that change the tree (create, mknod,
// symlink, link, remove, rename, setattr, xattrs, and writes, allocation and locks on what
// they open) to a writable server whose root holds symlinks pointing out of it, next to a
// directory anyone may change. No request may crash the server or change that directory.
// They run as nobody without capabilities, whatever the request says: as root, a fuzzed
// mknod and write could reach the machine's own disks.
func FuzzChangeRequests(f *testing.F) {
	if os.Geteuid() != 0 {
		f.Skip("needs root (the server takes on callers' credentials)")
	}
	base := f.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	for _, d := range []string{base, root, filepath.Join(root, "d"), outside} {
		must(os.MkdirAll(d, 0o777))
		must(os.Chmod(d, 0o777))
	}
	for _, p := range []string{filepath.Join(root, "d", "f"), filepath.Join(outside, "o")} {
		must(os.WriteFile(p, []byte("x"), 0o666))
		must(os.Chmod(p, 0o666))
	}
	must(os.Symlink("/", filepath.Join(root, "slash")))
	must(os.Symlink(outside, filepath.Join(root, "abs")))
	must(os.Symlink("../outside", filepath.Join(root, "out")))
	must(os.Symlink("../../..", filepath.Join(root, "d", "up")))
	// snapshot describes the directory outside the root and what it holds.
	snapshot := func() string {
		var b strings.Builder
		filepath.WalkDir(outside, func(p string, _ os.DirEntry, err error) error {
			var st unix.Stat_t
			if err == nil && unix.Lstat(p, &st) == nil {
				names, _ := unix.Listxattr(p, make([]byte, 4096))
				b.WriteString(fmt.Sprintf("%s %o %d:%d %d %d %d.%d %d\n", p, st.Mode, st.Uid, st.Gid, st.Size, st.Nlink, st.Mtim.Sec, st.Mtim.Nsec, names))
			}
			return nil
		})
		return b.String()
	}
	before := snapshot()
	s, err := NewServer(ServerConfig{Root: root, identify: testIdentify, reclaimGrace: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	ctx := withCallerNode(context.Background(), "fuzzer")

	seed := func(m proto.Message) []byte {
		b, _ := proto.Marshal(m)
		return b
	}
	sess := []byte("s")
	ref := func(p string) *fspb.NodeRef { return &fspb.NodeRef{Path: []byte(p)} }
	f.Add(uint8(0), seed(&fspb.CreateRequest{Session: sess, Dir: ref("out"), Name: []byte("n"), Flags: uint32(os.O_RDWR), Mode: 0o666}))
	f.Add(uint8(0), seed(&fspb.CreateRequest{Session: sess, Dir: ref("d"), Name: []byte("n"), Flags: uint32(os.O_RDWR | os.O_APPEND), Mode: 0o666}))
	f.Add(uint8(1), seed(&fspb.MknodRequest{Session: sess, Dir: ref("slash"), Name: []byte("fifo"), Mode: syscall.S_IFIFO | 0o666}))
	f.Add(uint8(2), seed(&fspb.SymlinkRequest{Session: sess, Dir: ref("abs"), Name: []byte("l"), Target: []byte("/")}))
	f.Add(uint8(3), seed(&fspb.LinkRequest{Session: sess, Target: ref("out/o"), Dir: ref("d"), Name: []byte("stolen")}))
	f.Add(uint8(4), seed(&fspb.RemoveRequest{Session: sess, Dir: ref("d/up"), Name: []byte("o")}))
	f.Add(uint8(5), seed(&fspb.RenameRequest{Session: sess, Dir: ref("d"), Name: []byte("f"), NewDir: ref("d/up/outside"), NewName: []byte("f")}))
	f.Add(uint8(5), seed(&fspb.RenameRequest{Session: sess, Dir: ref(""), Name: []byte("out"), NewDir: ref("d"), NewName: []byte("x"), Flags: unix.RENAME_EXCHANGE}))
	f.Add(uint8(6), seed(&fspb.SetattrRequest{Session: sess, Node: ref("abs/o"), Valid: setMode | setSize | setMtimeNow, Mode: 0o777}))
	f.Add(uint8(7), seed(&fspb.XattrRequest{Session: sess, Node: ref("slash/o"), Op: fspb.XattrRequest_SET, Name: []byte("user.x"), Value: []byte("v")}))

	var none uint64
	nobody := func() *fspb.Caller { return &fspb.Caller{Uid: nobodyID, Gid: nobodyID, Capabilities: &none} }
	// asNobody decodes req from data and, if it decodes, makes it (do) as nobody.
	asNobody := func(req proto.Message, data []byte, do func()) {
		if proto.Unmarshal(data, req) != nil {
			return
		}
		m := req.ProtoReflect()
		m.Set(m.Descriptor().Fields().ByName("caller"), protoreflect.ValueOfMessage(nobody().ProtoReflect()))
		do()
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		switch kind % 8 {
		case 0:
			var req fspb.CreateRequest
			if proto.Unmarshal(data, &req) != nil {
				return
			}
			req.Caller = nobody()
			r, err := s.Create(ctx, &req)
			if err != nil || r.Errno != 0 {
				break
			}
			s.Write(ctx, &fspb.WriteRequest{Session: req.Session, Caller: nobody(), Handle: r.Handle, Offset: 1, Data: []byte("written")})
			s.Allocate(ctx, &fspb.AllocateRequest{Session: req.Session, Caller: nobody(), Handle: r.Handle, Length: 4096})
			s.Setattr(ctx, &fspb.SetattrRequest{Session: req.Session, Caller: nobody(), Node: &fspb.NodeRef{Path: append(append(req.Dir.GetPath(), '/'), req.Name...), Handle: r.Handle}, Valid: setSize, Size: 2})
			s.Lock(ctx, &fspb.LockRequest{Session: req.Session, Handle: r.Handle, Op: fspb.LockRequest_SET, Type: unix.F_WRLCK, End: 1<<63 - 1, Owner: 1})
			s.Release(ctx, &fspb.HandleRequest{Session: req.Session, Handle: r.Handle})
		case 1:
			var req fspb.MknodRequest
			asNobody(&req, data, func() { s.Mknod(ctx, &req) })
		case 2:
			var req fspb.SymlinkRequest
			asNobody(&req, data, func() { s.Symlink(ctx, &req) })
		case 3:
			var req fspb.LinkRequest
			asNobody(&req, data, func() { s.Link(ctx, &req) })
		case 4:
			var req fspb.RemoveRequest
			asNobody(&req, data, func() { s.Remove(ctx, &req) })
		case 5:
			var req fspb.RenameRequest
			asNobody(&req, data, func() { s.Rename(ctx, &req) })
		case 6:
			var req fspb.SetattrRequest
			asNobody(&req, data, func() { s.Setattr(ctx, &req) })
		case 7:
			var req fspb.XattrRequest
			asNobody(&req, data, func() { s.Xattr(ctx, &req) })
		}
		if after := snapshot(); after != before {
			t.Fatalf("a request changed the directory outside the root:\nbefore:\n%safter:\n%s", before, after)
		}
	})
}

// FuzzFilterXattrNames: the names of extended attributes the owner lists for a client are the
// object's own, in order, without security.* and without empty names.
func FuzzFilterXattrNames(f *testing.F) {
	f.Add([]byte("user.a\x00security.selinux\x00trusted.t\x00"))
	f.Add([]byte("\x00\x00security.\x00user.b"))
	f.Fuzz(func(t *testing.T, list []byte) {
		got := filterXattrNames(list)
		var want []byte
		for name := range bytes.SplitSeq(list, []byte{0}) {
			if len(name) > 0 && !bytes.HasPrefix(name, []byte("security.")) {
				want = append(append(want, name...), 0)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("filterXattrNames(%q) = %q, want %q", list, got, want)
		}
		if len(list) > 0 && len(got) > 0 && &got[0] == &list[0] {
			t.Fatalf("filterXattrNames(%q) wrote over its input", list)
		}
	})
}

// FuzzLockRanges: a lock range from a client (inclusive end, 2^63-1 for "to the end") goes to
// struct flock and back unchanged, or is refused; never a range that starts before 0 or ends
// before it starts.
func FuzzLockRanges(f *testing.F) {
	f.Add(uint64(0), uint64(math.MaxInt64))
	f.Add(uint64(5), uint64(4))
	f.Add(uint64(math.MaxInt64), uint64(math.MaxUint64))
	f.Fuzz(func(t *testing.T, start, end uint64) {
		lk, errno := toFlock(unix.F_WRLCK, start, end)
		if errno != 0 {
			return
		}
		if lk.Start < 0 || lk.Len < 0 {
			t.Fatalf("toFlock(%d, %d) = start %d, len %d", start, end, lk.Start, lk.Len)
		}
		_, s, e := fromFlock(lk)
		if s != start || e != min(end, math.MaxInt64) {
			t.Fatalf("range %d-%d came back as %d-%d", start, end, s, e)
		}
	})
}
