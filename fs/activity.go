package fs

import (
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Activity: what a mount is doing, for kmsfs mount --idle (unmount after
// a time without use, as gocryptfs -idle) and the metrics endpoint. It is
// counted where every request passes, between go-fuse's request loop and
// its node bridge (activityFS), rather than in each operation.

// activity counts a mount's requests and open handles. Safe for
// concurrent use.
type activity struct {
	requests atomic.Uint64 // requests begun
	inFlight atomic.Int64  // requests being served
	files    atomic.Int64  // open file handles (OPEN or CREATE answered, RELEASE not yet seen)
	dirs     atomic.Int64  // open directory handles
}

// Activity is a snapshot of a mount's use.
type Activity struct {
	// Requests counts the FUSE requests served since the mount, but
	// FORGET (the kernel dropping inodes from its cache, under memory
	// pressure as much as after use), and STATFS and the root's GETATTR,
	// STATX, OPENDIR and RELEASEDIR (df, and the monitoring agents that
	// run it on every mount; see beginOn): none is a use of the files.
	Requests uint64
	// InFlight is the number of requests being served now.
	InFlight int64
	// OpenFiles and OpenDirs are the handles applications hold open.
	OpenFiles, OpenDirs int64
}

// Activity returns the mount's use so far.
func (r *Root) Activity() Activity {
	return Activity{
		Requests:  r.activity.requests.Load(),
		InFlight:  r.activity.inFlight.Load(),
		OpenFiles: r.activity.files.Load(),
		OpenDirs:  r.activity.dirs.Load(),
	}
}

func (a *activity) begin() {
	a.requests.Add(1)
	a.inFlight.Add(1)
}

func (a *activity) end() { a.inFlight.Add(-1) }

// beginOn is begin for a request on node, which does not count as a use
// when node is the root and the request one of those df makes besides
// STATFS (GETATTR or STATX, and OPENDIR and RELEASEDIR with `df PATH`):
// df, and the monitoring agents that run it on every mount, would
// otherwise keep an idle mount forever. An open handle of the root
// still keeps the mount while it is held.
func (a *activity) beginOn(node uint64) {
	if node != fuse.FUSE_ROOT_ID {
		a.requests.Add(1)
	}
	a.inFlight.Add(1)
}

// activityFS counts every request it passes on. The methods that open and
// release handles also count the handles.
type activityFS struct {
	fuse.RawFileSystem
	*activity
}

func (a activityFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	a.begin()
	defer a.end()
	st := a.RawFileSystem.Open(cancel, in, out)
	if st.Ok() {
		a.files.Add(1)
	}
	return st
}

func (a activityFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	a.begin()
	defer a.end()
	st := a.RawFileSystem.Create(cancel, in, name, out)
	if st.Ok() {
		a.files.Add(1)
	}
	return st
}

func (a activityFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	a.begin()
	defer a.end()
	st := a.RawFileSystem.Tmpfile(cancel, in, out)
	if st.Ok() {
		a.files.Add(1)
	}
	return st
}

func (a activityFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	a.begin()
	defer a.end()
	a.RawFileSystem.Release(cancel, in)
	a.files.Add(-1)
}

func (a activityFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	a.beginOn(in.NodeId)
	defer a.end()
	st := a.RawFileSystem.OpenDir(cancel, in, out)
	if st.Ok() {
		a.dirs.Add(1)
	}
	return st
}

func (a activityFS) ReleaseDir(in *fuse.ReleaseIn) {
	a.beginOn(in.NodeId)
	defer a.end()
	a.RawFileSystem.ReleaseDir(in)
	a.dirs.Add(-1)
}

// The other requests, but Forget and StatFs (see Activity.Requests).

func (a activityFS) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Lookup(cancel, header, name, out)
}

func (a activityFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	a.beginOn(in.NodeId)
	defer a.end()
	return a.RawFileSystem.GetAttr(cancel, in, out)
}

func (a activityFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.SetAttr(cancel, in, out)
}

func (a activityFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Mknod(cancel, in, name, out)
}

func (a activityFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (a activityFS) Unlink(cancel <-chan struct{}, header *fuse.InHeader, name string) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Unlink(cancel, header, name)
}

func (a activityFS) Rmdir(cancel <-chan struct{}, header *fuse.InHeader, name string) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Rmdir(cancel, header, name)
}

func (a activityFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (a activityFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Link(cancel, in, name, out)
}

func (a activityFS) Symlink(cancel <-chan struct{}, header *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Symlink(cancel, header, target, name, out)
}

func (a activityFS) Readlink(cancel <-chan struct{}, header *fuse.InHeader) ([]byte, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Readlink(cancel, header)
}

func (a activityFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Access(cancel, in)
}

func (a activityFS) GetXAttr(cancel <-chan struct{}, header *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.GetXAttr(cancel, header, attr, dest)
}

func (a activityFS) ListXAttr(cancel <-chan struct{}, header *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.ListXAttr(cancel, header, dest)
}

func (a activityFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (a activityFS) RemoveXAttr(cancel <-chan struct{}, header *fuse.InHeader, attr string) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.RemoveXAttr(cancel, header, attr)
}

func (a activityFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Read(cancel, in, buf)
}

func (a activityFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Lseek(cancel, in, out)
}

func (a activityFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.GetLk(cancel, in, out)
}

func (a activityFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.SetLk(cancel, in)
}

func (a activityFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.SetLkw(cancel, in)
}

func (a activityFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Write(cancel, in, data)
}

func (a activityFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Writev(cancel, in, data)
}

func (a activityFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	a.begin()
	defer a.end()
	return a.RawFileSystem.CopyFileRange(cancel, in)
}

func (a activityFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
}

func (a activityFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Flush(cancel, in)
}

func (a activityFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Fsync(cancel, in)
}

func (a activityFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.Fallocate(cancel, in)
}

func (a activityFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.ReadDir(cancel, in, out)
}

func (a activityFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (a activityFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	a.begin()
	defer a.end()
	return a.RawFileSystem.FsyncDir(cancel, in)
}

func (a activityFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	a.beginOn(in.NodeId)
	defer a.end()
	return a.RawFileSystem.Statx(cancel, in, out)
}
