package fs

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The owner tells clients which POSIX ACLs an object has (fspb.Attr.acl), so that the client
// answers the kernel's questions for system.posix_acl_* itself when there is none: with
// ACLs on (CAP_POSIX_ACL) the kernel asks for a file's access ACL before its first permission
// check, which would otherwise cost a round trip per file opened.

const (
	aclAccess  = 1 << 0
	aclDefault = 1 << 1

	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"
)

// objectAt names an object for *at system calls: name in the directory dir, or dir itself
// when name is "".
type objectAt struct {
	dir  int
	name string
}

func atFD(fd int) objectAt { return objectAt{dir: fd} }

func (r resolved) object() objectAt {
	name, _ := r.at()
	return objectAt{dir: r.dir, name: name}
}

// aclsOf reports which ACLs the object has (aclAccess, aclDefault), or false if it cannot
// tell. Symlinks have none.
func aclsOf(at objectAt, mode uint32) (uint32, bool) {
	if mode&syscall.S_IFMT == syscall.S_IFLNK {
		return 0, true
	}
	var acls uint32
	for _, x := range []struct {
		name string
		bit  uint32
	}{{xattrACLAccess, aclAccess}, {xattrACLDefault, aclDefault}} {
		if x.bit == aclDefault && mode&syscall.S_IFMT != syscall.S_IFDIR {
			break
		}
		switch err := hasXattrAt(at, x.name); err {
		case nil:
			acls |= x.bit
		case unix.ENODATA, unix.EOPNOTSUPP:
		default:
			return 0, false
		}
	}
	return acls, true
}

// hasXattrAt reports nil if the object has the extended attribute, without reading it or
// opening the object (getxattrat, Linux 6.13).
func hasXattrAt(at objectAt, name string) error {
	path, err := unix.BytePtrFromString(at.name)
	if err != nil {
		return err
	}
	attr, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if at.name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	// struct xattr_args: where the value goes and its size (none: the size only), and flags.
	var args struct {
		value uint64
		size  uint32
		flags uint32
	}
	_, _, errno := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(at.dir), uintptr(unsafe.Pointer(path)), uintptr(flags),
		uintptr(unsafe.Pointer(attr)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	if errno != 0 {
		return errno
	}
	return nil
}
