// Command locker is the e2e tests' process that holds a file open and locks it through the
// cluster tree. It opens the file named by its argument, then runs the commands read on stdin,
// one a line, answering each on a line: "ok", the errno's name, or what was read.
//
//	lk r|w|u START LEN   F_SETLK
//	fl sh|ex|un          flock with LOCK_NB
//	write TEXT           the file becomes TEXT and a newline (pwrite, ftruncate, fsync)
//	read                 pread at offset 0: the first line
//
// If the open fails it prints the errno's name and exits with status 1.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: locker FILE < commands")
		os.Exit(2)
	}
	f, err := os.OpenFile(os.Args[1], os.O_RDWR, 0)
	if err != nil {
		fmt.Println(errName(err))
		os.Exit(1)
	}
	defer f.Close()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(run(f, strings.Fields(in.Text())))
	}
}

func run(f *os.File, args []string) string {
	if len(args) == 0 {
		return "empty command"
	}
	switch {
	case args[0] == "lk" && len(args) == 4:
		types := map[string]int16{"r": syscall.F_RDLCK, "w": syscall.F_WRLCK, "u": syscall.F_UNLCK}
		typ, ok := types[args[1]]
		start, err1 := strconv.ParseInt(args[2], 10, 64)
		length, err2 := strconv.ParseInt(args[3], 10, 64)
		if !ok || err1 != nil || err2 != nil {
			break
		}
		lk := syscall.Flock_t{Type: typ, Start: start, Len: length}
		return errName(syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk))
	case args[0] == "fl" && len(args) == 2:
		how, ok := map[string]int{"sh": syscall.LOCK_SH, "ex": syscall.LOCK_EX, "un": syscall.LOCK_UN}[args[1]]
		if !ok {
			break
		}
		return errName(syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB))
	case args[0] == "write" && len(args) == 2:
		data := []byte(args[1] + "\n")
		if _, err := f.WriteAt(data, 0); err != nil {
			return errName(err)
		}
		if err := f.Truncate(int64(len(data))); err != nil {
			return errName(err)
		}
		return errName(f.Sync())
	case args[0] == "read" && len(args) == 1:
		b := make([]byte, 4096)
		n, err := f.ReadAt(b, 0)
		if n == 0 && err != nil {
			return errName(err)
		}
		line, _, _ := bytes.Cut(b[:n], []byte("\n"))
		return string(line)
	}
	return "bad command: " + strings.Join(args, " ")
}

// errName is "ok" for nil, else the name of the errno err carries.
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	names := map[syscall.Errno]string{
		syscall.EAGAIN: "EAGAIN", syscall.EIO: "EIO", syscall.ENOTCONN: "ENOTCONN",
		syscall.EBADF: "EBADF", syscall.EINTR: "EINTR", syscall.ENOENT: "ENOENT",
		syscall.EACCES: "EACCES", syscall.EDEADLK: "EDEADLK", syscall.ESTALE: "ESTALE",
	}
	if name, ok := names[errno]; ok {
		return name
	}
	return fmt.Sprintf("errno %d (%v)", int(errno), errno)
}
