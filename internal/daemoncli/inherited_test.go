package daemoncli

import (
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCloseInheritedOnExec(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fd, err := syscall.Dup(int(r.Fd())) // dup(2) leaves FD_CLOEXEC clear, as an inherited descriptor has it
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	flags := func() int {
		f, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if flags()&unix.FD_CLOEXEC != 0 {
		t.Fatal("a dup'ed descriptor is already close-on-exec")
	}
	if err := closeInheritedOnExec(); err != nil {
		t.Fatal(err)
	}
	if flags()&unix.FD_CLOEXEC == 0 {
		t.Fatal("the descriptor is still inherited by children")
	}
	if f, _ := unix.FcntlInt(uintptr(2), unix.F_GETFD, 0); f&unix.FD_CLOEXEC != 0 {
		t.Fatal("stderr became close-on-exec")
	}
}
