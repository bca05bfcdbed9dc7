package fs

import (
	"context"
	"strconv"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Directory operations pass straight through to CIPHERDIR: names, links
// and symlink targets are stored as they are, and none of these
// operations needs a key.

var (
	_ fusefs.NodeMkdirer        = (*node)(nil)
	_ fusefs.NodeRmdirer        = (*node)(nil)
	_ fusefs.NodeUnlinker       = (*node)(nil)
	_ fusefs.NodeRenamer        = (*node)(nil)
	_ fusefs.NodeLinker         = (*node)(nil)
	_ fusefs.NodeSymlinker      = (*node)(nil)
	_ fusefs.NodeReadlinker     = (*node)(nil)
	_ fusefs.NodeMknoder        = (*node)(nil)
	_ fusefs.NodeOpendirHandler = (*node)(nil)
)

// dirOp runs f on the backing directory of n, refusing hidden names and
// changes to a read-only mount.
func (n *node) dirOp(op, name string, f func(dirfd int) error) syscall.Errno {
	if hidden(n.isRoot(), name) {
		if op == "unlink" || op == "rmdir" {
			return syscall.ENOENT
		}
		return syscall.EPERM
	}
	if n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	dirfd, err := n.dirFd()
	if err == nil {
		err = retryEINTR(func() error { return f(dirfd) })
	}
	if err != nil {
		return n.r.errno(err, op, join(n.relPath(), name))
	}
	return 0
}

// entry fills out and returns the inode of the new object name in n.
func (n *node) entry(ctx context.Context, op, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	var stx unix.Statx_t
	dirfd, err := n.dirFd()
	if err == nil {
		err = statxAt(dirfd, name, &stx)
	}
	if err != nil {
		return nil, n.r.errno(err, op, join(n.relPath(), name))
	}
	n.r.fillAttr(&stx, &out.Attr)
	return n.newChild(ctx, &stx), 0
}

// noPerm tells makeEntry to leave the new object's mode as mk made it
// (a symlink has no mode of its own).
const noPerm = -1

// makeEntry makes a new object name in n with mk, gives it the caller as
// owner and, unless perm is noPerm, exactly the permission bits perm
// (undoing mk if either fails), and returns its inode.
func (n *node) makeEntry(ctx context.Context, op, name string, unlinkFlags int, perm int, mk func(dirfd int) error, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	errno := n.dirOp(op, name, func(dirfd int) error {
		if err := mk(dirfd); err != nil {
			return err
		}
		err := n.r.chownNew(ctx, dirfd, -1, name)
		if err == nil && perm != noPerm {
			err = exactMode(dirfd, name, uint32(perm))
		}
		if err != nil {
			unix.Unlinkat(dirfd, name, unlinkFlags)
			return err
		}
		return nil
	})
	if errno != 0 {
		return nil, errno
	}
	return n.entry(ctx, op, name, out)
}

// exactMode gives the new object name in dirfd the rwx bits of perm if
// it came out otherwise. The mount runs with umask 0, so only a default
// ACL on the stored parent directory narrows them: kmsfs refuses and
// hides ACLs (isACL), but one put there by an older kmsfs or by hand
// would still narrow the modes of new directories and nodes behind the
// mount's back. The set-id and sticky bits are left as made: a directory
// inherits set-group-ID from its parent. Files get the same from
// finishNew.
func exactMode(dirfd int, name string, perm uint32) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Mode&0o777 == perm&0o777 {
		return nil
	}
	mode := st.Mode&0o7000 | perm&0o777
	return chmodAt(dirfd, name, mode)
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return n.makeEntry(ctx, "mkdir", name, unix.AT_REMOVEDIR, int(mode&0o7777), func(dirfd int) error {
		return unix.Mkdirat(dirfd, name, mode&0o7777)
	}, out)
}

// Mknod makes devices, FIFOs and sockets, and regular files: an empty
// stored file, which is a valid empty kmsfs file until its first write.
func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return n.makeEntry(ctx, "mknod", name, 0, int(mode&0o7777), func(dirfd int) error {
		return unix.Mknodat(dirfd, name, mode, int(rdev))
	}, out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return n.makeEntry(ctx, "symlink", name, 0, noPerm, func(dirfd int) error {
		return unix.Symlinkat(target, dirfd, name)
	}, out)
}

func (n *node) Link(ctx context.Context, target fusefs.InodeEmbedder, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok || t.r != n.r {
		return nil, syscall.EXDEV
	}
	var link func(dirfd int) error
	if _, parent := t.Parent(); parent != nil {
		sfd, sname, err := t.parentAt()
		if err != nil {
			return nil, n.r.errno(err, "link", t.relPath())
		}
		link = func(dirfd int) error { return unix.Linkat(sfd, sname, dirfd, name, 0) }
	} else {
		// Never named (O_TMPFILE): link from the descriptor kept for it.
		// The kernel refuses unlinked files that are not O_TMPFILE.
		t.mu.Lock()
		fd := t.unnamed
		t.mu.Unlock()
		if fd <= 0 {
			return nil, syscall.ENOENT
		}
		link = func(dirfd int) error {
			return unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), dirfd, name, unix.AT_SYMLINK_FOLLOW)
		}
	}
	errno := n.dirOp("link", name, link)
	if errno == 0 {
		t.dropUnnamed() // named now: paths work again
	}
	if errno != 0 {
		return nil, errno
	}
	return n.entry(ctx, "link", name, out)
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	pfd, name, err := n.parentAt()
	if err != nil {
		return nil, n.r.errno(err, "readlink", n.relPath())
	}
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		var m int
		err := retryEINTR(func() error {
			var err error
			m, err = unix.Readlinkat(pfd, name, buf)
			return err
		})
		if err != nil {
			return nil, n.r.errno(err, "readlink", n.relPath())
		}
		if m < size {
			return buf[:m], 0
		}
	}
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.dirOp("unlink", name, func(dirfd int) error { return unix.Unlinkat(dirfd, name, 0) })
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.dirOp("rmdir", name, func(dirfd int) error { return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR) })
}

// Rename passes flags (RENAME_NOREPLACE, RENAME_EXCHANGE) to renameat2.
// The encryption context names no path, so no key is involved.
func (n *node) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok || np.r != n.r {
		return syscall.EXDEV
	}
	if hidden(np.isRoot(), newName) {
		return syscall.EPERM
	}
	return n.dirOp("rename", name, func(dirfd int) error {
		ndirfd, err := np.dirFd()
		if err != nil {
			return err
		}
		return unix.Renameat2(dirfd, name, ndirfd, newName, uint(flags))
	})
}

// OpendirHandle opens the backing directory; the listing hides kmsfs's
// own names and supports seeking (telldir/seekdir).
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	dfd, err := n.dirFd()
	fd := -1
	if err == nil {
		fd, err = openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	}
	if err != nil {
		return nil, 0, n.r.errno(err, "opendir", n.relPath())
	}
	// The stream owns fd; a second descriptor serves fstat, so the
	// directory can still be stat'ed after it was renamed over.
	statFd, err := unix.Dup(fd)
	if err != nil {
		unix.Close(fd)
		return nil, 0, n.r.errno(err, "opendir", n.relPath())
	}
	ds, errno := fusefs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		unix.Close(fd)
		unix.Close(statFd)
		return nil, 0, errno
	}
	return &dirHandle{DirStream: ds, n: n, r: n.r, statFd: statFd}, 0, 0
}

// dirHandle filters hidden names out of a backing directory stream.
type dirHandle struct {
	fusefs.DirStream
	n      *node
	r      *Root
	statFd int
}

var _ fusefs.FileGetattrer = (*dirHandle)(nil)

func (d *dirHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(d.statFd, &st); err != nil {
		return d.r.errno(err, "getattr", d.n.relPath())
	}
	d.r.fillAttrFromStat(&st, &out.Attr)
	return 0
}

var (
	_ fusefs.FileReaddirenter = (*dirHandle)(nil)
	_ fusefs.FileSeekdirer    = (*dirHandle)(nil)
	_ fusefs.FileReleasedirer = (*dirHandle)(nil)
	_ fusefs.FileFsyncdirer   = (*dirHandle)(nil)
)

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	for d.HasNext() {
		e, errno := d.Next()
		if errno != 0 {
			return nil, errno
		}
		if hidden(d.n.isRoot(), e.Name) {
			continue
		}
		if e.Mode&unix.S_IFMT == unix.S_IFREG && d.r.opts.PrefetchKeys && !d.n.childOpen(e.Name) {
			d.r.listingPrefetch(join(d.n.relPath(), e.Name))
		}
		return &e, 0
	}
	return nil, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.DirStream.(fusefs.FileSeekdirer).Seekdir(ctx, off)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	unix.Close(d.statFd)
	d.DirStream.(fusefs.FileReleasedirer).Releasedir(ctx, flags)
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.DirStream.(fusefs.FileFsyncdirer).Fsyncdir(ctx, flags)
}
