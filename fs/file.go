package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/blockfile"
)

// file is an open regular file: a descriptor of the stored file plus the
// inode's shared state (content lock, cipher).
type file struct {
	n     *node
	st    *fileState
	fd    int
	flags uint32

	closeOnce sync.Once
	// fdMu keeps fd open while a borrower (node.borrowFd) uses it: close
	// takes it for writing.
	fdMu sync.RWMutex
}

var (
	_ fusefs.FileReader    = (*file)(nil)
	_ fusefs.FileWriter    = (*file)(nil)
	_ fusefs.FileFlusher   = (*file)(nil)
	_ fusefs.FileFsyncer   = (*file)(nil)
	_ fusefs.FileReleaser  = (*file)(nil)
	_ fusefs.FileGetattrer = (*file)(nil)
	_ fusefs.FileLseeker   = (*file)(nil)
	_ fusefs.FileAllocater = (*file)(nil)
)

func (f *file) path() string { return f.n.relPath() }

func (f *file) close() {
	f.closeOnce.Do(func() {
		f.n.unlistHandle(f)
		f.fdMu.Lock()
		unix.Close(f.fd)
		f.fdMu.Unlock()
		f.n.release(f.st)
	})
}

// errNeedKey: the file got a header (from another mount) since this mount
// found it empty; ensureKey loads it.
var errNeedKey = errors.New("file was given a header by another mount while open here")

// change runs a change of the stored file (write, truncate, fallocate):
// it gives the file its header if it has none, then calls fn with its
// blockcipher view and plaintext size. A change that fails may have
// stopped part-way, leaving a block that reads only through its journal
// record, so the file is marked unsettled; the next change settles the
// journal first, as an open would, rather than overwrite that record.
// reach is the plaintext offset up to which fn seals blocks (a write's
// end, a truncate's new size; 0 if it seals none): past a bad tail
// (fileKey.badTail) the change is refused. Stray bytes past the last
// whole block, which a crash during an append can leave and no read
// serves, are cut off first. Caller holds st.content for writing.
func (f *file) change(reach int64, fn func(bf blockfile.File, size int64) error) error {
	if f.st.unsettled && f.st.key != nil {
		// Before ensureHeader looks at the final block: it may read
		// only through its journal record until then.
		if err := f.n.r.settle(f.fd, f.st.cipher(), f.n.relPath); err != nil {
			return err
		}
		f.st.unsettled = false
	}
	stored, done, err := f.ensureHeader()
	if err != nil {
		return err
	}
	defer done()
	if cut := f.n.r.layout.StrayTail(stored); cut > 0 && f.st.key != nil {
		if err := fdStore(f.fd).Truncate(stored - cut); err != nil {
			return err
		}
		f.n.r.log.Info("cut stray bytes past the last whole block (a crash during an append leaves them; they hold nothing readable)", "path", f.n.relPath(), "bytes", cut)
		stored -= cut
	}
	bf, size, err := f.blocksOf(stored)
	if err != nil {
		return err
	}
	if k := f.st.key; k != nil && k.badTail > 0 && reach > k.badTail {
		return fmt.Errorf("its final block fails authentication (a crash during an append, or a cut, leaves that): it takes no change reaching it, to %d bytes, until it is truncated to at most %d bytes: %w", reach, k.badTail, blockcipher.ErrAuth)
	}
	if err := fn(bf, size); err != nil {
		f.st.unsettled = true
		return err
	}
	return nil
}

// settleNow settles the journal of a file a failed change left unsettled.
// If it fails (the disk still full, say), reads go on consulting the
// journal and the next change tries again.
func (f *file) settleNow() {
	f.st.content.Lock()
	defer f.st.content.Unlock()
	if !f.st.unsettled || f.st.key == nil {
		return
	}
	if err := f.n.r.settle(f.fd, f.st.cipher(), f.n.relPath); err != nil {
		// The failed change was logged; do not log once per read.
		f.n.r.log.Debug("could not settle before a read", "path", f.n.relPath(), "err", err)
		return
	}
	f.st.unsettled = false
}

// blocks returns the blockcipher view of the stored file and its plaintext
// size. Caller holds st.content. A stored size no writer produces is
// reported with the size of the readable part and the error.
func (f *file) blocks() (blockfile.File, int64, error) {
	stored, err := fdStore(f.fd).size()
	if err != nil {
		return blockfile.File{}, 0, err
	}
	return f.blocksOf(stored)
}

// blocksOf is blocks of a stored file of stored bytes.
func (f *file) blocksOf(stored int64) (blockfile.File, int64, error) {
	if stored == 0 {
		return blockfile.File{}, 0, nil
	}
	if f.st.key == nil {
		// Empty when opened here; another mount has written it since.
		return blockfile.File{}, 0, errNeedKey
	}
	size, err := f.n.r.layout.PlainSize(stored)
	return blockfile.File{C: f.st.cipher(), S: fdStore(f.fd), ReserveAppends: !f.n.r.inPlace}, size, err
}

// Read decrypts the blocks under [off, off+len(dest)). A block failing
// authentication fails the read with EIO and one warning naming the file
// and block; other blocks and files are unaffected. Every error goes with
// a nil ReadResult: with DisableSplice (mount.go) go-fuse would send a
// non-nil one as data, dropping the errno.
func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.st.content.RLock()
	if f.st.unsettled && !f.n.r.opts.ReadOnly {
		// A change failed part-way. A block it lengthened in place can
		// read only once settled (docs/FORMAT.md, "Journal"): settle now
		// rather than at the next change.
		f.st.content.RUnlock()
		f.settleNow()
		f.st.content.RLock()
	}
	if c := f.st.cipher(); c != nil {
		// No fstat for the size: the one read of the blocks reads a
		// little past them and learns it where it matters.
		n, err := blockfile.File{C: c, S: f.n.r.store(f.fd)}.ReadAtProbe(dest, off)
		if err != blockfile.ErrSizeUnknown {
			f.st.content.RUnlock()
			if err != nil && err != io.EOF {
				return nil, f.n.r.errno(err, "read", f.path(), blockAttrs(err, off)...)
			}
			return fuse.ReadResultData(dest[:n]), 0
		}
	}
	bf, size, err := f.blocks()
	if err == errNeedKey {
		f.st.content.RUnlock()
		if err := f.ensureKey(); err != nil {
			return nil, f.n.r.errno(err, "read", f.path())
		}
		f.st.content.RLock()
		bf, size, err = f.blocks()
	}
	defer f.st.content.RUnlock()
	// A stored size no writer produces (a torn append's stray bytes)
	// reports the readable part as the size (blocks). Reads inside it
	// are served, also when they ask for more, as a read of a page or a
	// direct read does; only a read at or past its end fails.
	if err != nil && (bf.C == nil || off >= size) {
		return nil, f.n.r.errno(err, "read", f.path(), "off", off)
	}
	if bf.C == nil {
		return fuse.ReadResultData(nil), 0
	}
	n, err := bf.ReadAt(dest, off, size)
	if err != nil && err != io.EOF {
		return nil, f.n.r.errno(err, "read", f.path(), blockAttrs(err, off)...)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// blockAttrs names the failing block of err for the log line.
func blockAttrs(err error, off int64) []any {
	var be *blockcipher.BlockError
	if errors.As(err, &be) {
		return []any{"block", be.Block}
	}
	return []any{"off", off}
}

// Write encrypts data into the blocks under [off, off+len(data)),
// reading and re-sealing partial blocks, under the inode's content lock.
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.n.r.opts.ReadOnly {
		return 0, syscall.EROFS
	}
	f.st.content.Lock()
	defer f.st.content.Unlock()
	end := off + int64(len(data))
	err := f.change(end, func(bf blockfile.File, size int64) error {
		if l := f.n.r.layout; size > 0 && off <= l.BlockToPlainOff(l.PlainOffToBlock(size-1)) && end >= size {
			// The write replaces the final block whole, unread: it must
			// authenticate first, or a cut at a block boundary made
			// behind this mount's back (the file held open here, or its
			// key this mount's own) would be sealed over and read as
			// whole (found by review).
			var b [1]byte
			if _, err := bf.ReadAt(b[:], size-1, size); err != nil {
				return err
			}
		}
		_, err := bf.WriteAt(data, off, size)
		return err
	})
	if err != nil {
		return 0, f.n.r.errno(err, "write", f.path(), blockAttrs(err, off)...)
	}
	return uint32(len(data)), 0
}

// truncate sets the plaintext size. Truncating to 0 needs no key.
func (f *file) truncate(size int64) error {
	f.st.content.Lock()
	defer f.st.content.Unlock()
	stored, err := fdStore(f.fd).size()
	if err != nil {
		return err
	}
	// A stored size no writer makes (cut inside a block) reads as the
	// whole blocks before the cut; truncating to 0 still works, so that
	// O_TRUNC gets past the damage.
	cur, damaged := f.n.r.layout.PlainSize(stored)
	if size == cur && damaged == nil {
		// Nothing to cut, but a truncate (and O_TRUNC) still updates
		// mtime and ctime, as on ext4: truncate the stored file to
		// its own size.
		if size == 0 {
			f.st.restart = true
		}
		return fdStore(f.fd).Truncate(stored)
	}
	if size == 0 {
		// Cut to the header alone, as far as there is one: the next
		// write starts the file over with a new ID and key, or, while
		// the key service cannot give one, goes on under this one
		// (ensureHeader).
		f.st.restart = true
		return fdStore(f.fd).Truncate(min(stored, f.n.r.layout.HeaderSize))
	}
	return f.change(size, func(bf blockfile.File, cur int64) error {
		if err := bf.Truncate(cur, size); err != nil {
			return err
		}
		if k := f.st.key; k != nil && k.badTail > 0 && size <= k.badTail {
			// The new final block, sealed anew, authenticates.
			k.badTail = 0
		}
		return nil
	})
}

// Flush has nothing to do: writes reach the stored file before they are
// acknowledged.
func (f *file) Flush(ctx context.Context) syscall.Errno { return 0 }

// Fsync makes the stored file durable: fdatasync when the caller asked
// only for data, fsync otherwise.
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	var err error
	if flags&1 != 0 {
		err = retryEINTR(func() error { return unix.Fdatasync(f.fd) })
	} else {
		err = retryEINTR(func() error { return unix.Fsync(f.fd) })
	}
	if err != nil {
		return f.n.r.errno(err, "fsync", f.path())
	}
	return 0
}

// Release closes the stored file; the inode's last release wipes its key.
func (f *file) Release(ctx context.Context) syscall.Errno {
	f.close()
	return 0
}

// Getattr stats the open stored file (it may be unlinked).
func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return f.n.r.errno(err, "getattr", f.path())
	}
	f.n.r.fillAttrFromStat(&st, &out.Attr)
	return 0
}

// Allocate supports mode 0 (extend the file with zeros, reserving the
// stored space) and FALLOC_FL_KEEP_SIZE (reserve only).
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if f.n.r.opts.ReadOnly {
		return syscall.EROFS
	}
	if mode&^unix.FALLOC_FL_KEEP_SIZE != 0 {
		return syscall.EOPNOTSUPP
	}
	end := int64(off + size)
	if int64(off) < 0 || end < int64(off) || end > blockcipher.MaxPlainSize {
		return syscall.EFBIG
	}
	f.st.content.Lock()
	defer f.st.content.Unlock()
	reach := end
	if mode&unix.FALLOC_FL_KEEP_SIZE != 0 {
		reach = 0 // reserves space, seals nothing
	}
	err := f.change(reach, func(bf blockfile.File, cur int64) error {
		l := f.n.r.layout
		first, count := l.Span(int64(off), int64(size))
		cipherOff := l.BlockToCipherOff(first)
		cipherLen := l.BlockToCipherOff(first+count) - cipherOff
		if err := fdStore(f.fd).Preallocate(cipherOff, cipherLen); err != nil {
			return err
		}
		if mode&unix.FALLOC_FL_KEEP_SIZE == 0 && end > cur {
			return bf.Truncate(cur, end)
		}
		return nil
	})
	if err != nil {
		return f.n.r.errno(err, "fallocate", f.path())
	}
	return 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the stored file's holes: a
// block is a hole only when none of its stored bytes is allocated; data
// may include zeros, as POSIX allows.
func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	f.st.content.RLock()
	defer f.st.content.RUnlock()
	stored, err := fdStore(f.fd).size()
	if err != nil {
		return 0, f.n.r.errno(err, "lseek", f.path())
	}
	l := f.n.r.layout
	size, _ := l.PlainSize(stored)
	if int64(off) < 0 || int64(off) >= size {
		// A negative offset is ENXIO too, as on ext4.
		return 0, syscall.ENXIO
	}
	seek := func(cipherOff int64, w int) (int64, error) {
		var r int64
		err := retryEINTR(func() error {
			var err error
			r, err = unix.Seek(f.fd, cipherOff, w)
			return err
		})
		return r, err
	}
	blk := l.PlainOffToBlock(int64(off))
	switch whence {
	case unix.SEEK_DATA:
		c, err := seek(l.BlockToCipherOff(blk), unix.SEEK_DATA)
		if err != nil {
			return 0, f.n.r.errno(err, "lseek", f.path())
		}
		b := l.CipherOffToBlock(max(c, l.HeaderSize))
		return uint64(max(int64(off), l.BlockToPlainOff(b))), 0
	case unix.SEEK_HOLE:
		last := l.BlockCount(size) - 1 // the final block is never a hole
		for b := blk; b < last; b++ {
			start := l.BlockToCipherOff(b)
			d, err := seek(start, unix.SEEK_DATA)
			if err == unix.ENXIO || err == nil && d >= l.BlockToCipherOff(b+1) {
				return uint64(max(int64(off), l.BlockToPlainOff(b))), 0
			}
			if err != nil {
				return 0, f.n.r.errno(err, "lseek", f.path())
			}
			// Skip to the block holding the next hole.
			h, err := seek(start, unix.SEEK_HOLE)
			if err != nil {
				return 0, f.n.r.errno(err, "lseek", f.path())
			}
			if nb := l.CipherOffToBlock(h); nb > b+1 {
				b = nb - 1
			}
		}
		return uint64(size), 0
	}
	return 0, syscall.EINVAL
}
