package fs

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

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
