package fs

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ssi-cluster/ssi/internal/fs/fspb"
)

func TestFramedFieldNumbers(t *testing.T) {
	for _, c := range []struct {
		m    protoreflect.ProtoMessage
		num  protowire.Number
		name protoreflect.Name
	}{{&fspb.WriteRequest{}, writeRequestData, "data"}, {&fspb.ReadReply{}, readReplyData, "data"}} {
		fd := c.m.ProtoReflect().Descriptor().Fields().ByNumber(c.num)
		if fd == nil || fd.Name() != c.name || fd.Kind() != protoreflect.BytesKind {
			t.Errorf("%T: field %d is %v, frames take it for bytes %s", c.m, c.num, fd, c.name)
		}
	}
}

func TestWritevAtWritesPiecesInOrder(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	f := &openFile{fd: int(file.Fd()), regular: true}
	var pieces [][]byte
	var want []byte
	for i := range 3000 { // more than one pwritev takes
		p := bytes.Repeat([]byte{byte(i)}, i%7)
		pieces = append(pieces, p)
		want = append(want, p...)
	}
	n, errno := writevAt(f, pieces, 10)
	if errno != 0 || n != len(want) {
		t.Fatalf("wrote %d of %d: %v", n, len(want), errno)
	}
	got, _ := os.ReadFile(file.Name())
	if !bytes.Equal(got[10:], want) {
		t.Fatal("the file does not hold the pieces in order")
	}
}

// TestLargeIOThroughTheTree reads and writes pieces larger than the Calls stream takes, at odd
// offsets and sizes, with an owner serving them as frames and one as plain messages (an older
// agent): both must give the bytes back exactly.
func TestLargeIOThroughTheTree(t *testing.T) {
	needRoot(t)
	c := newTestCluster(t, "n1", "n2", "n3")
	n1 := c.node("n1")
	c.node("n3").noCalls = true // registered with fspb's own handlers
	c.node("n3").restart(ServerConfig{})
	n1.mountTree(5 * time.Second)
	data := make([]byte, 3<<20+12345)
	rand.New(rand.NewSource(1)).Read(data)
	for _, owner := range []string{"n2", "n3"} {
		path := n1.path(owner, "big")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(data); {
			n := min(len(data)-off, 700<<10+off%4096)
			if _, err := f.WriteAt(data[off:off+n], int64(off)); err != nil {
				t.Fatal(err)
			}
			off += n
		}
		f.Close()
		onDisk, _ := os.ReadFile(c.node(owner).disk("big"))
		if !bytes.Equal(onDisk, data) {
			t.Fatalf("%s: the owner's disk holds %d bytes, not what was written", owner, len(onDisk))
		}
		must(t, os.WriteFile(c.node(owner).disk("other"), data[1:], 0o644)) // not in n1's cache
		got, err := os.ReadFile(n1.path(owner, "other"))
		if err != nil || !bytes.Equal(got, data[1:]) {
			t.Fatalf("%s: read back %d bytes (%v), not what the owner holds", owner, len(got), err)
		}
	}
}

func TestStartWritebackOfAClosedFileDoesNothing(t *testing.T) {
	fd, err := unix.Open(filepath.Join(t.TempDir(), "f"), unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f := &openFile{fd: fd, regular: true}
	if n, errno := writevAt(f, [][]byte{make([]byte, 1<<20), {1}}, 0); n != 1<<20+1 || errno != 0 {
		t.Fatalf("wrote %d: %v", n, errno)
	}
	f.startWriteback(0, 1<<20+1)
	f.close()
	f.startWriteback(0, 1<<20+1) // its descriptor may be another file's by now
}
