package fs

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// fileState is the open-file state of one regular-file inode, shared by all
// its handles (and by a truncate through a path while it runs).
type fileState struct {
	// content serialises changes of the stored file: held for writing by
	// write, truncate, fallocate and header creation; for reading by read
	// and lseek. It guards cipher and dk once load has finished.
	content sync.RWMutex

	// Guarded by node.mu:
	users   int      // handles plus handle-less operations using the state
	loaded  bool     // cipher/dk are final (cipher nil: no header yet)
	loading *keyLoad // the unwrap in flight, shared by concurrent openers
	cipher  *blockcipher.Cipher
	dk      *keyring.DataKey

	// unsettled is set when a change failed part-way (a full disk, say):
	// a block it rewrote may read only through its journal record, so the
	// next change settles the journal first. Guarded by content.
	unsettled bool
}

// keyLoad is one unwrap of a file's data key that concurrent first opens
// wait for instead of calling the keyring again.
type keyLoad struct {
	done chan struct{}
	err  error // set before done is closed
}

// testOnlyBeforeWipe, when set by a test, sees a data key's bytes just
// before they are wiped, to check afterwards that they were zeroed.
var testOnlyBeforeWipe func(b []byte)

// acquire registers a user of n's file state, creating it if needed. With
// wantKey it also makes sure the data key is unwrapped: the first user
// reads the header through fd and calls the keyring; concurrent users wait
// for that one call and share its result or error.
func (n *node) acquire(fd int, wantKey bool) (*fileState, error) {
	n.mu.Lock()
	st := n.st
	if st == nil {
		st = &fileState{}
		n.st = st
	}
	st.users++
	for wantKey && !st.loaded {
		if l := st.loading; l != nil {
			n.mu.Unlock()
			<-l.done
			if l.err != nil {
				n.release(st)
				return nil, l.err
			}
			n.mu.Lock()
			continue
		}
		l := &keyLoad{done: make(chan struct{})}
		st.loading = l
		n.mu.Unlock()
		c, dk, err := n.r.loadKey(fd)
		if err == nil && c != nil {
			restore := noatime(fd)
			st.content.Lock()
			if serr := n.r.settle(fd, c, n.relPath); serr != nil {
				// A full disk, say. The file stays readable (reads
				// consult the journal) and the next change settles
				// first, so the open need not fail.
				n.r.log.Warn("could not finish an interrupted write: reads use its journal record, the next change retries", "path", n.relPath(), "err", serr)
				st.unsettled = true
			}
			st.content.Unlock()
			restore()
		}
		n.mu.Lock()
		st.loading = nil
		if err == nil {
			st.cipher, st.dk, st.loaded = c, dk, true
		}
		l.err = err
		close(l.done)
		if err != nil {
			n.mu.Unlock()
			n.release(st)
			return nil, err
		}
	}
	n.mu.Unlock()
	return st, nil
}

// release drops one user; the last one wipes the data key.
func (n *node) release(st *fileState) {
	n.mu.Lock()
	st.users--
	last := st.users == 0
	if last && n.st == st {
		n.st = nil
		n.dropUnnamedLocked()
	}
	n.mu.Unlock()
	if last {
		st.content.Lock()
		st.wipe(n.r)
		st.content.Unlock()
	}
}

// wipe zeroes the data key and drops the cipher. Caller holds content for
// writing or is the state's last user.
func (st *fileState) wipe(r *Root) {
	if st.dk != nil {
		if testOnlyBeforeWipe != nil {
			testOnlyBeforeWipe(st.dk.Bytes())
		}
		st.dk.Wipe()
		st.dk = nil
		r.stats.liveKeys.Add(-1)
	}
	st.cipher = nil
}

// readHeader reads and parses the header of the stored file open at fd. A
// file with no bytes has no header yet: (nil, nil).
func (r *Root) readHeader(fd int) (*blockcipher.Header, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Size == 0 {
		return nil, nil
	}
	defer noatime(fd)()
	if st.Size < r.layout.HeaderSize {
		return nil, fmt.Errorf("header: %w (file has %d bytes, the volume's header has %d)", blockcipher.ErrTruncated, st.Size, r.layout.HeaderSize)
	}
	slot := make([]byte, r.layout.HeaderSize)
	if _, err := (fdStore(fd)).ReadAt(slot, 0); err != nil {
		return nil, err
	}
	h, err := blockcipher.ParseHeader(slot)
	if err != nil {
		return nil, err
	}
	if h.VolumeID != r.volumeID {
		return nil, fmt.Errorf("header belongs to volume %s, not to this volume: %w", hex.EncodeToString(h.VolumeID[:]), blockcipher.ErrHeaderAuth)
	}
	if int64(h.BlockSize) != r.layout.BlockSize || int64(h.HeaderSize) != r.layout.HeaderSize {
		return nil, fmt.Errorf("header declares block size %d and header size %d, the volume %d and %d: %w",
			h.BlockSize, h.HeaderSize, r.layout.BlockSize, r.layout.HeaderSize, blockcipher.ErrHeaderAuth)
	}
	return h, nil
}

// loadKey reads the header of the file open at fd, unwraps its data key
// with one keyring call and checks the header against it. A file without
// a header yields (nil, nil, nil).
func (r *Root) loadKey(fd int) (*blockcipher.Cipher, *keyring.DataKey, error) {
	h, err := r.readHeader(fd)
	if err != nil || h == nil {
		return nil, nil, err
	}
	return r.openHeader(h)
}

// openHeader unwraps the data key of h (from the prefetcher if it has it,
// else with one keyring call) and checks h against it: commitment, MAC.
func (r *Root) openHeader(h *blockcipher.Header) (*blockcipher.Cipher, *keyring.DataKey, error) {
	var dk *keyring.DataKey
	if r.prefetch != nil {
		dk = r.prefetch.take(h.FileID)
	}
	if dk == nil {
		ctx, cancel := r.keyCtx()
		defer cancel()
		r.stats.decrypts.Add(1)
		var err error
		if dk, err = r.opts.Keyring.Decrypt(ctx, keyEntries(h), r.fileContext(h.FileID)); err != nil {
			return nil, nil, fmt.Errorf("unwrap data key: %w", err)
		}
	}
	c, err := h.Open(dk.Bytes())
	if err != nil {
		dk.Wipe()
		return nil, nil, err
	}
	r.stats.liveKeys.Add(1)
	return c, dk, nil
}

// newFileKey returns a data key for a new file: from the pool when one is
// ready (or about to be), else from one GenerateDataKey call.
func (r *Root) newFileKey() (*pooledKey, error) {
	if r.pool != nil {
		if k := r.pool.take(poolWait); k != nil {
			return k, nil
		}
	}
	ctx, cancel := r.keyCtx()
	defer cancel()
	return r.generateKey(ctx)
}

// sealNewHeader builds and seals the header of a new file. On success the
// key is owned by the returned state fields; on failure it is wiped.
func (r *Root) sealNewHeader(k *pooledKey) ([]byte, *blockcipher.Cipher, error) {
	h := &blockcipher.Header{
		Version:    blockcipher.Version,
		HeaderSize: int(r.layout.HeaderSize),
		BlockSize:  int(r.layout.BlockSize),
		VolumeID:   r.volumeID,
		FileID:     k.fileID,
	}
	for _, w := range k.wrapped {
		h.Keys = append(h.Keys, blockcipher.KeyEntry{Kind: string(w.Kind), KeyID: w.KeyID, Blob: w.Blob})
	}
	slot, c, err := h.Seal(k.dk.Bytes())
	if err != nil {
		k.dk.Wipe()
		return nil, nil, fmt.Errorf("seal header: %w", err)
	}
	return slot, c, nil
}

// ensureHeader gives a file that has no header yet (every new file, until
// its first write) one, so it can be written. Caller holds st.content for
// writing. The header is written in one pwrite before any block: a crash
// in between leaves a header-only file, a valid empty file. An exclusive
// flock on the stored file keeps two mounts of one CIPHERDIR from both
// writing a header; the one that finds a header already there takes its
// key instead.
func (f *file) ensureHeader() error {
	st := f.st
	if st.cipher != nil {
		return nil
	}
	r := f.n.r
	if err := retryEINTR(func() error { return unix.Flock(f.fd, unix.LOCK_EX) }); err != nil && !errors.Is(err, unix.ENOLCK) {
		return err
	}
	defer unix.Flock(f.fd, unix.LOCK_UN)
	h, err := r.readHeader(f.fd)
	if err != nil {
		return err
	}
	if h != nil {
		c, dk, err := r.openHeader(h)
		if err != nil {
			return err
		}
		st.cipher, st.dk = c, dk
		return nil
	}
	k, err := r.newFileKey()
	if err != nil {
		return err
	}
	slot, c, err := r.sealNewHeader(k)
	if err != nil {
		return err
	}
	// No fallocate first: a header cut short by a full disk is cut off
	// again, leaving the empty file this was. On ext4 a fallocate here
	// also cost a block allocation per new file, before delayed
	// allocation could place the file's blocks together.
	if err := (fdStore(f.fd)).writeFull(slot, 0); err != nil {
		k.dk.Wipe()
		// Leave no partial header behind.
		unix.Ftruncate(f.fd, 0)
		return err
	}
	st.cipher, st.dk = c, k.dk
	r.stats.liveKeys.Add(1)
	return nil
}

// ensureKey loads the key of a file that was empty when this mount opened
// it and has since been given a header by another mount. Caller holds no
// content lock.
func (f *file) ensureKey() error {
	st := f.st
	st.content.Lock()
	defer st.content.Unlock()
	if st.cipher != nil {
		return nil
	}
	h, err := f.n.r.readHeader(f.fd)
	if err != nil || h == nil {
		return err
	}
	c, dk, err := f.n.r.openHeader(h)
	if err != nil {
		return err
	}
	st.cipher, st.dk = c, dk
	return nil
}

// fdStore is a stored file open at a descriptor: the blockcipher.Store of
// an open file.
type fdStore int

var (
	_ blockcipher.Store        = fdStore(0)
	_ blockcipher.Preallocator = fdStore(0)
)

func (s fdStore) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pread(int(s), p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

func (s fdStore) WriteAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pwrite(int(s), p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

func (s fdStore) writeFull(p []byte, off int64) error {
	_, err := s.WriteAt(p, off)
	return err
}

func (s fdStore) Truncate(size int64) error {
	return retryEINTR(func() error { return unix.Ftruncate(int(s), size) })
}

// Preallocate reserves the stored range before it is written, so a full
// disk fails the write before any stored byte changes (as gocryptfs does).
// Filesystems without fallocate skip it.
func (s fdStore) Preallocate(off, length int64) error {
	err := retryEINTR(func() error { return unix.Fallocate(int(s), unix.FALLOC_FL_KEEP_SIZE, off, length) })
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		return nil
	}
	return err
}

func (s fdStore) size() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(s), &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// settle finishes a block rewrite that a crash interrupted (the journal,
// blockcipher/journal.go), before anything reads or changes the file. It
// costs two small reads on a clean file. The descriptor may be read-only:
// a repair reopens the file for writing. A read-only mount leaves the
// journal alone; its reads consult it.
func (r *Root) settle(fd int, c *blockcipher.Cipher, path func() string) error {
	stored, err := fdStore(fd).size()
	if err != nil {
		return err
	}
	pending, err := blockcipher.File{C: c, S: fdStore(fd)}.JournalPending(stored)
	if err != nil || !pending || r.opts.ReadOnly {
		return err
	}
	wfd, err := openat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("reopen to finish an interrupted write: %w", err)
	}
	defer unix.Close(wfd)
	changed, err := blockcipher.File{C: c, S: fdStore(wfd)}.Settle(stored)
	if err != nil {
		return fmt.Errorf("finish an interrupted write: %w", err)
	}
	r.log.Info("finished an interrupted write", "path", path(), "repaired", changed)
	return nil
}

// noatime sets O_NOATIME on fd until the returned func is called: reading
// a header or the journal is kmsfs's business, not an access the user
// made, and must not move the file's atime. (O_NOATIME needs ownership or
// CAP_FOWNER; without it the atime may move.)
func noatime(fd int) (restore func()) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NOATIME != 0 {
		return func() {}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NOATIME); err != nil {
		return func() {}
	}
	return func() { unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl) }
}
