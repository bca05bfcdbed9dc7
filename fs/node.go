package fs

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is one inode of the plaintext view. Its backing object is found by
// its path relative to CIPHERDIR (rootFd); an open file uses its handle's
// descriptor instead.
type node struct {
	fusefs.Inode
	r *Root

	mu  sync.Mutex // guards st, unnamed and dfd
	st  *fileState // open-file state of a regular file; nil when nothing uses it
	dfd int        // a directory's O_PATH descriptor once used (at.go); 0 or -1: none

	// unnamed is an O_PATH descriptor of a file made with O_TMPFILE, so
	// linkat can give it a name later; -1 (or 0, never set) otherwise.
	unnamed int

	// noCaps: the backing object had no security.capability xattr when
	// last asked, and none was set through this mount since.
	noCaps atomic.Bool
}

var _ fusefs.NodeOnForgetter = (*node)(nil)

// OnForget closes the descriptors kept for the node.
func (n *node) OnForget() {
	n.dropUnnamed()
	n.closeDirFd()
}

// dropUnnamed closes the descriptor kept for an O_TMPFILE file: once it is
// linked, or once its last handle is closed (linkat needs an open file).
func (n *node) dropUnnamed() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropUnnamedLocked()
}

func (n *node) dropUnnamedLocked() {
	if n.unnamed > 0 {
		unix.Close(n.unnamed)
		n.unnamed = -1
	}
}

var (
	_ fusefs.NodeLookuper  = (*node)(nil)
	_ fusefs.NodeGetattrer = (*node)(nil)
	_ fusefs.NodeStatfser  = (*node)(nil)
)

// relPath is the node's path relative to CIPHERDIR ("" for the root).
func (n *node) relPath() string {
	return n.Path(n.r.root.EmbeddedInode())
}

func (n *node) isRoot() bool { return n == n.r.root }

func genFromStatx(stx *unix.Statx_t) uint64 {
	if stx.Mask&unix.STATX_BTIME == 0 || (stx.Btime.Sec == 0 && stx.Btime.Nsec == 0) {
		return 1
	}
	return uint64(stx.Btime.Sec)*1e9 + uint64(stx.Btime.Nsec)
}

// fillAttr converts a backing statx to the plaintext view's attributes:
// everything passes through but the size of regular files, which is the
// plaintext size computed from the stored size (no read, no key).
func (r *Root) fillAttr(stx *unix.Statx_t, out *fuse.Attr) {
	out.Ino = stx.Ino
	out.Size = stx.Size
	out.Blocks = stx.Blocks
	out.Atime, out.Atimensec = uint64(stx.Atime.Sec), stx.Atime.Nsec
	out.Mtime, out.Mtimensec = uint64(stx.Mtime.Sec), stx.Mtime.Nsec
	out.Ctime, out.Ctimensec = uint64(stx.Ctime.Sec), stx.Ctime.Nsec
	out.Mode = uint32(stx.Mode)
	out.Nlink = stx.Nlink
	out.Uid, out.Gid = stx.Uid, stx.Gid
	out.Rdev = uint32(unix.Mkdev(stx.Rdev_major, stx.Rdev_minor))
	out.Blksize = stx.Blksize
	if stx.Mode&unix.S_IFMT == unix.S_IFREG {
		// A damaged stored size still gets the size of its readable
		// part; reads of the damaged part fail with EIO and log then.
		plain, _ := r.layout.PlainSize(int64(stx.Size))
		out.Size = uint64(plain)
	}
}

func (r *Root) fillAttrFromStat(st *unix.Stat_t, out *fuse.Attr) {
	var stx unix.Statx_t
	stx.Ino = st.Ino
	stx.Size = uint64(st.Size)
	stx.Blocks = uint64(st.Blocks)
	stx.Atime = unix.StatxTimestamp{Sec: st.Atim.Sec, Nsec: uint32(st.Atim.Nsec)}
	stx.Mtime = unix.StatxTimestamp{Sec: st.Mtim.Sec, Nsec: uint32(st.Mtim.Nsec)}
	stx.Ctime = unix.StatxTimestamp{Sec: st.Ctim.Sec, Nsec: uint32(st.Ctim.Nsec)}
	stx.Mode = uint16(st.Mode)
	stx.Nlink = uint32(st.Nlink)
	stx.Uid, stx.Gid = st.Uid, st.Gid
	stx.Rdev_major, stx.Rdev_minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	stx.Blksize = uint32(st.Blksize)
	r.fillAttr(&stx, out)
}

// newChild makes (or finds, for hard links) the inode for a backing object.
func (n *node) newChild(ctx context.Context, stx *unix.Statx_t) *fusefs.Inode {
	dev := unix.Mkdev(stx.Dev_major, stx.Dev_minor)
	id := n.r.idFromStat(dev, stx.Ino, genFromStatx(stx), uint32(stx.Mode))
	return n.NewInode(ctx, &node{r: n.r}, id)
}

// Lookup finds name in the directory. Hidden names do not exist.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	if hidden(n.isRoot(), name) {
		return nil, syscall.ENOENT
	}
	var stx unix.Statx_t
	dfd, err := n.dirFd()
	if err == nil {
		err = statxAt(dfd, name, &stx)
	}
	if err == unix.ENOENT && !n.r.log.Enabled(ctx, slog.LevelDebug) {
		// Every create looks up first: skip building the path for a
		// log line nobody reads.
		return nil, syscall.ENOENT
	}
	if err != nil {
		return nil, n.r.errno(err, "lookup", join(n.relPath(), name))
	}
	n.r.fillAttr(&stx, &out.Attr)
	return n.newChild(ctx, &stx), 0
}

// Getattr stats the backing object; through an open handle when there is
// one (the file may be unlinked).
func (n *node) Getattr(ctx context.Context, fh fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if g, ok := fh.(fusefs.FileGetattrer); ok {
		return g.Getattr(ctx, out)
	}
	var stx unix.Statx_t
	pfd, name, err := n.parentAt()
	if err == nil {
		if n.isRoot() {
			err = retryEINTR(func() error {
				return unix.Statx(pfd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &stx)
			})
		} else {
			err = statxAt(pfd, name, &stx)
		}
	}
	if err != nil {
		return n.r.errno(err, "getattr", n.relPath())
	}
	n.r.fillAttr(&stx, &out.Attr)
	return 0
}

// Statfs reports the backing filesystem.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := retryEINTR(func() error { return syscall.Fstatfs(n.r.rootFd, &st) }); err != nil {
		return n.r.errno(err, "statfs", "")
	}
	out.FromStatfsT(&st)
	return 0
}
