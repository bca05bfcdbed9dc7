package fs

import (
	"context"
	"path/filepath"
	"strconv"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// Extended attributes pass through to the backing object unencrypted (as
// names and symlink targets are).

var (
	_ fusefs.NodeGetxattrer    = (*node)(nil)
	_ fusefs.NodeSetxattrer    = (*node)(nil)
	_ fusefs.NodeRemovexattrer = (*node)(nil)
	_ fusefs.NodeListxattrer   = (*node)(nil)
)

// withXattrPath runs f with a path naming n's backing object. There are no
// *at xattr syscalls before Linux 6.13, so the path is the /proc link of an
// O_PATH descriptor (relative to rootFd, hence PATH_MAX-safe). A symlink
// cannot be reached through that link without following it, so symlinks
// use their absolute path with the l* calls.
func (n *node) withXattrPath(op string, f func(path string, link bool) error) syscall.Errno {
	p := n.relPath()
	if n.StableAttr().Mode == unix.S_IFLNK {
		return n.r.metaErrno(retryEINTR(func() error { return f(filepath.Join(n.r.opts.CipherDir, p), true) }), op, p)
	}
	fd, err := openat(n.r.rootFd, rel(p), unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return n.r.errno(err, op, p)
	}
	defer unix.Close(fd)
	return n.r.metaErrno(retryEINTR(func() error { return f("/proc/self/fd/"+strconv.Itoa(fd), false) }), op, p)
}

// capsAttr is asked for by the kernel before every write (to drop file
// capabilities); almost no file has it, so its absence is remembered per
// inode instead of costing three syscalls per write.
const capsAttr = "security.capability"

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if attr == capsAttr && n.noCaps.Load() {
		return 0, syscall.ENODATA
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
	if attr == capsAttr && errno == syscall.ENODATA {
		n.noCaps.Store(true)
	}
	return uint32(sz), errno
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
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

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var sz int
	errno := n.withXattrPath("listxattr", func(path string, link bool) error {
		var err error
		if link {
			sz, err = unix.Llistxattr(path, dest)
		} else {
			sz, err = unix.Listxattr(path, dest)
		}
		return err
	})
	return uint32(sz), errno
}
