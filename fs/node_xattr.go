package fs

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"unsafe"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// Extended attributes pass through to the backing object unencrypted (as
// names and symlink targets are), except POSIX ACLs.

var (
	_ fusefs.NodeGetxattrer    = (*node)(nil)
	_ fusefs.NodeSetxattrer    = (*node)(nil)
	_ fusefs.NodeRemovexattrer = (*node)(nil)
	_ fusefs.NodeListxattrer   = (*node)(nil)
)

// withXattrPath runs f with a path naming n's backing object. There are no
// *at xattr syscalls before Linux 6.13, so the path goes through /proc:
// the parent directory's descriptor and the name for a symlink (with the
// l* calls, which do not follow it), an O_PATH descriptor of the object
// otherwise. Either path is short whatever the depth.
func (n *node) withXattrPath(op string, f func(path string, link bool) error) syscall.Errno {
	pfd, name, err := n.parentAt()
	if err != nil {
		return n.r.metaErrno(err, op, n.relPath())
	}
	if n.StableAttr().Mode == unix.S_IFLNK {
		if err := n.checkSame(pfd, name); err != nil {
			return n.r.metaErrno(err, op, n.relPath())
		}
		p := "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + name
		return n.xattrErrno(retryEINTR(func() error { return f(p, true) }), op)
	}
	fd, err := openat(pfd, name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return n.r.metaErrno(err, op, n.relPath())
	}
	defer unix.Close(fd)
	if err := n.checkSame(fd, ""); err != nil {
		return n.r.metaErrno(err, op, n.relPath())
	}
	return n.xattrErrno(retryEINTR(func() error { return f("/proc/self/fd/"+strconv.Itoa(fd), false) }), op)
}

// xattrErrno builds the log path only when there is something to log:
// ENODATA answers most getxattr calls (ls -l asks two per file), and the
// path walk cost 4 % of the daemon's time in ls -lR.
func (n *node) xattrErrno(err error, op string) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok && !n.r.log.Enabled(context.Background(), slog.LevelDebug) {
		return e // logErrno would log a plain errno at debug level only
	}
	return n.r.metaErrno(err, op, n.relPath())
}

// capsAttr is asked for by the kernel before every write (to drop file
// capabilities); almost no file has it, so its absence is remembered per
// inode instead of costing three syscalls per write.
const capsAttr = "security.capability"

// POSIX ACLs are refused (EOPNOTSUPP), not stored: kmsfs does not ask
// the kernel for FUSE_POSIX_ACL, so the kernel would check access by the
// mode bits alone. An ACL passed through would be shown by getfacl and
// ignored by every open, so "setfacl -m u:bob:--- f" would leave bob
// reading f: a deny that fails open. gocryptfs shipped exactly that
// (gocryptfs#536, #542, #543). Refused, setfacl says "Operation not
// supported", cp -a and rsync -A fall back to the mode bits, and ls -l,
// which asks for an ACL of every file it lists, remembers after the
// first answer that this filesystem has none: one FUSE round trip per
// file fewer.
func isACL(attr string) bool {
	return attr == "system.posix_acl_access" || attr == "system.posix_acl_default"
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if isACL(attr) {
		return 0, syscall.EOPNOTSUPP
	}
	if attr == capsAttr && n.noCaps.Load() {
		return 0, syscall.ENODATA
	}
	sz, errno := n.getxattr(attr, dest)
	if attr == capsAttr && errno == syscall.ENODATA {
		n.noCaps.Store(true)
	}
	return uint32(sz), errno
}

// getxattr reads attr of n's backing object: with getxattrat where the
// kernel has it, else through withXattrPath.
func (n *node) getxattr(attr string, dest []byte) (int, syscall.Errno) {
	if !noGetxattrat.Load() {
		if sz, ok, err := n.getxattrAt(attr, dest); ok {
			return sz, n.xattrErrno(err, "getxattr")
		}
	}
	var sz int
	errno := n.withXattrPath("getxattr", func(path string, link bool) error {
		var err error
		if link {
			sz, err = unix.Lgetxattr(path, attr, dest)
		} else {
			sz, err = unix.Getxattr(path, attr, dest)
		}
		return err
	})
	return sz, errno
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if isACL(attr) {
		return syscall.EOPNOTSUPP
	}
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	if attr == capsAttr {
		n.noCaps.Store(false)
	}
	return n.withXattrPath("setxattr", func(path string, link bool) error {
		if link {
			return unix.Lsetxattr(path, attr, data, int(flags))
		}
		return unix.Setxattr(path, attr, data, int(flags))
	})
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if isACL(attr) {
		return syscall.EOPNOTSUPP
	}
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	if attr == capsAttr {
		n.noCaps.Store(false)
	}
	return n.withXattrPath("removexattr", func(path string, link bool) error {
		if link {
			return unix.Lremovexattr(path, attr)
		}
		return unix.Removexattr(path, attr)
	})
}

// Listxattr lists the backing object's attributes without its ACLs (an
// ACL stored there by an older kmsfs, or by hand, is not the file's: see
// isACL). The list is read whole and filtered, so a size query (empty
// dest) answers the size of the filtered list.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	buf := make([]byte, max(len(dest), 256))
	for {
		var sz int
		errno := n.withXattrPath("listxattr", func(path string, link bool) error {
			var err error
			if link {
				sz, err = unix.Llistxattr(path, buf)
			} else {
				sz, err = unix.Listxattr(path, buf)
			}
			return err
		})
		if errno == syscall.ERANGE && len(buf) < xattrListMax {
			buf = make([]byte, xattrListMax) // the list changed size, or outgrew dest
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		list := withoutACLs(buf[:sz])
		if len(dest) == 0 {
			return uint32(len(list)), 0
		}
		if len(list) > len(dest) {
			return 0, syscall.ERANGE
		}
		return uint32(copy(dest, list)), 0
	}
}

// xattrListMax is the kernel's limit on a listxattr list (XATTR_LIST_MAX).
const xattrListMax = 65536

// withoutACLs drops the ACL names from a listxattr list (names each ended
// by a NUL), in place.
func withoutACLs(list []byte) []byte {
	out := list[:0]
	for len(list) > 0 {
		i := bytes.IndexByte(list, 0)
		if i < 0 {
			i = len(list) - 1 // malformed: keep the rest as it is
		}
		name := list[:i+1]
		list = list[i+1:]
		if !isACL(string(name[:len(name)-1])) {
			out = append(out, name...)
		}
	}
	return out
}

// noGetxattrat is set once the kernel has answered ENOSYS to getxattrat
// (before Linux 6.13).
var noGetxattrat atomic.Bool

// getxattrAt reads attr of n's backing object with one getxattrat call on
// its parent's descriptor, without following a symlink. ls -l asks for
// two attributes of every file it lists, so this is on the hot path: the
// /proc path of withXattrPath costs an open, a procfs lookup and a close
// more. ok is false when the kernel lacks the call.
func (n *node) getxattrAt(attr string, dest []byte) (sz int, ok bool, err error) {
	pfd, name, err := n.parentAt()
	if err != nil {
		return 0, true, err
	}
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, true, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, true, err
	}
	// struct xattr_args from <linux/xattr.h>.
	args := struct {
		value uint64
		size  uint32
		flags uint32
	}{size: uint32(len(dest))}
	if len(dest) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&dest[0])))
	}
	err = retryEINTR(func() error {
		r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(pfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
			uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		if e != 0 {
			return e
		}
		sz = int(r)
		return nil
	})
	runtime.KeepAlive(dest)
	if err == syscall.ENOSYS {
		noGetxattrat.Store(true)
		return 0, false, nil
	}
	return sz, true, err
}
