package fs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/blockfile"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// readHeader reads and parses the header of the stored file open at fd. A
// file with no bytes has no header yet: (nil, nil).
func (r *Root) readHeader(fd int) (*blockcipher.Header, error) {
	size, err := fdStore(fd).size()
	if err != nil || size == 0 {
		return nil, err
	}
	defer noatime(fd)()
	return r.vol.ReadHeader(fdStore(fd), size)
}

// headMax bounds the one read of loadKeyHead: the header and both journal
// record heads lie within it for blocks of up to 32 KiB.
const headMax = 64 << 10

var headBufs = sync.Pool{New: func() any { return new([]byte) }}

// loadKeyHead is loadKey for a file openBacking opened, stored bytes long
// then (0: no header, nothing read). One pread gives the header together
// with the heads of the journal's records, where there were an fstat and
// three preads (header, two record heads); pending reports whether the
// journal may hold a record, for settle to look at (true when the record
// heads lie too far out to be read with the header). fd must be
// openBacking's, whose reads do not move the file's atime where the
// daemon may say so.
func (r *Root) loadKeyHead(fd int, stored int64, obj [2]uint64, before func() (after func())) (k *fileKey, pending bool, err error) {
	if stored == 0 {
		return nil, false, nil
	}
	n := blockfile.HeadLen(r.layout)
	if n > headMax {
		k, err := r.loadKey(fd, obj, before)
		return k, true, err
	}
	bp := headBufs.Get().(*[]byte)
	defer headBufs.Put(bp)
	if int64(cap(*bp)) < n {
		*bp = make([]byte, n)
	}
	head := (*bp)[:n]
	got, err := r.store(fd).ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return nil, false, err
	}
	// A file shorter than n is read whole; one that another mount
	// changed since the open is read as it is now.
	head = head[:got]
	if k, err = r.openStored(bytes.NewReader(head), int64(got), obj, before); err != nil || k == nil {
		return nil, false, err
	}
	return k, blockfile.PendingInHead(r.layout, head), nil
}

// loadKey reads the header of the file open at fd, unwraps its data key
// with one keyring call and checks the header against it. A file without
// a header yields (nil, nil). before, if not nil, runs once a header is
// found, before the keyring call; the function it returns runs after it.
// A header that a kmsfs rewrap left torn
// is read from its rewrite record (volume.OpenHeader), at the cost of a
// second keyring call if the torn slot's was made.
func (r *Root) loadKey(fd int, obj [2]uint64, before func() (after func())) (*fileKey, error) {
	size, err := fdStore(fd).size()
	if err != nil || size == 0 {
		return nil, err
	}
	defer noatime(fd)()
	return r.openStored(fdStore(fd), size, obj, before)
}

// openStored is loadKey of the stored file read through ra, size bytes
// long; obj is its node's objectID.
func (r *Root) openStored(ra io.ReaderAt, size int64, obj [2]uint64, before func() (after func())) (*fileKey, error) {
	own := false
	unwrap := func(h *blockcipher.Header) (*keyring.DataKey, error) {
		if before != nil {
			after := before()
			before = nil
			defer after()
		}
		dk, keptFor, kept, err := r.unwrap(h)
		// Only the very file it was kept for takes a kept key back as
		// its own: a copy of that file's header elsewhere (anyone who
		// can write CIPHERDIR can make one) gets it as a key found in a
		// header, checked as any other (ensureHeader).
		own = kept && keptFor == obj
		return dk, err
	}
	h, dk, fromRecord, err := r.vol.OpenHeader(ra, size, unwrap)
	if err != nil || h == nil {
		return nil, err
	}
	if fromRecord {
		r.log.Info("reading a header through the record of an interrupted kmsfs rewrap: run kmsfs rewrap again to finish it", "file_id", fmt.Sprintf("%x", h.FileID))
	}
	k, err := openFileKey(h, dk, &r.stats.liveKeys)
	if err != nil {
		return nil, err
	}
	k.h = h
	if own {
		// This mount made the key, and kept it through the outage
		// (outage.go): it stays its own, and is kept again at the
		// last close.
		k.made, k.own = true, true
	}
	return k, nil
}

// unwrap unwraps the data key of h with one keyring call (which a
// prefetch may have made already); kept says the key service could not
// answer and the key is the one this mount kept for h's file, the
// object keptFor (outage.go). The keyring below notes how the service
// answered (noting).
func (r *Root) unwrap(h *blockcipher.Header) (dk *keyring.DataKey, keptFor [2]uint64, kept bool, err error) {
	ctx, cancel := keyCtx()
	defer cancel()
	r.stats.decrypts.Add(1)
	dk, err = r.keyring.Decrypt(ctx, volume.Entries(h), r.vol.FileContext(h.FileID))
	if err != nil && unavailable(err) {
		if k, obj := r.outage.take(h); k != nil {
			// A file this mount wrote while the key service is down.
			return k, obj, true, nil
		}
	}
	if err != nil {
		return nil, keptFor, false, fmt.Errorf("unwrap data key: %w", err)
	}
	return dk, keptFor, false, nil
}

// newFileKey returns a data key for a new file: from the pool when one is
// ready (or about to be), else from one GenerateDataKey call.
func (r *Root) newFileKey() (*pooledKey, error) {
	if r.pool != nil {
		if k := r.pool.take(poolWait); k != nil {
			return k, nil
		}
	}
	ctx, cancel := keyCtx()
	defer cancel()
	return r.generateKey(ctx)
}

// sealNewHeader builds and seals the header of a new file with k, and
// returns the slot to write and the file's key. On failure k is wiped.
func (r *Root) sealNewHeader(k *pooledKey) ([]byte, *fileKey, error) {
	h, err := r.vol.NewHeader(k.fileID, k.wrapped)
	if err != nil {
		k.dk.Wipe()
		return nil, nil, err
	}
	slot, fk, err := sealFileKey(h, k.dk, &r.stats.liveKeys)
	if err != nil {
		return nil, nil, fmt.Errorf("seal header: %w", err)
	}
	fk.made, fk.h = true, h
	return slot, fk, nil
}

// ensureHeader makes sure a file about to change has a header of its own,
// and returns the stored size and a func to call once the change is done.
// Caller holds st.content for writing.
//
// A file with no content (no block, or none readable: a header alone, or
// 0 bytes) gets a new header, with a new file ID and data key, and never
// goes on under a header it was found with: whoever can write CIPHERDIR
// could have put another file's header there, and the file's new blocks,
// sealed under that file's ID and key, would then authenticate in the
// other file too. The same holds after a truncate to 0 (O_TRUNC): the
// file starts over. Only while the key service cannot give a new key
// does an emptied file go on under its own key, so that a file truncated
// and written again during an outage, as log rotation does, keeps
// working: a key this mount made, or, when the service is unreachable
// (not merely throttling, which anyone with access to the account can
// cause), one under which it saw the file hold blocks.
//
// The header is written in one pwrite before any block: a crash in
// between leaves a header-only file, a valid empty file. An exclusive
// flock on the stored file, held until the change is done, keeps two
// mounts of one CIPHERDIR from both writing a header: the second finds
// the first's blocks and takes its key.
func (f *file) ensureHeader() (stored int64, done func(), err error) {
	st := f.st
	r := f.n.r
	noop := func() {}
	if stored, err = fdStore(f.fd).size(); err != nil {
		return -1, nil, err
	}
	if st.key != nil {
		if !r.noContent(stored) {
			if err := f.proveOwn(stored); err != nil {
				return -1, nil, err
			}
			return stored, noop, nil
		}
		if st.key.made && !st.restart && r.headerOf(f.fd, stored, st.key) {
			// A header alone, the one this mount wrote.
			return stored, noop, nil
		}
	}
	if err := lockHeader(f.fd); err != nil {
		return -1, nil, err
	}
	keep := false
	defer func() {
		if !keep {
			unix.Flock(f.fd, unix.LOCK_UN)
		}
	}()
	if stored, keep, err = f.ensureHeaderLocked(); err != nil {
		keep = false
		return -1, nil, err
	}
	if !keep {
		return stored, noop, nil
	}
	return stored, func() { unix.Flock(f.fd, unix.LOCK_UN) }, nil
}

// ensureHeaderLocked is ensureHeader's work under the stored file's
// flock; keep says to hold the flock until the change is done (a new
// header, or an emptied file going on under its own key).
func (f *file) ensureHeaderLocked() (stored int64, keep bool, err error) {
	st := f.st
	r := f.n.r
	if stored, err = fdStore(f.fd).size(); err != nil {
		return -1, false, err
	}
	if !r.noContent(stored) {
		// Another mount wrote the file since it was opened here (or
		// since this mount found it empty).
		if st.key == nil {
			if st.key, err = r.loadKey(f.fd, f.n.objectID(), nil); err != nil {
				return -1, false, err
			}
		}
		if st.key != nil {
			if err := f.proveOwn(stored); err != nil {
				return -1, false, err
			}
		}
		return stored, false, nil
	}
	pk, err := r.newFileKey()
	if err != nil {
		if unavailable(err) && st.key != nil && (st.key.made || st.key.own && errors.Is(err, keyring.ErrUnreachable)) && r.headerOf(f.fd, stored, st.key) {
			r.log.Info("the key service cannot give a new key: an emptied file goes on under its own", "path", f.n.relPath(), "err", err.Error())
			st.restart = false
			return stored, true, nil
		}
		return -1, false, err
	}
	// Start over: drop the header found here, and its key.
	st.key.wipe()
	st.key = nil
	slot, nk, err := r.sealNewHeader(pk)
	if err != nil {
		return -1, false, err
	}
	if stored > 0 {
		if err := fdStore(f.fd).Truncate(0); err != nil {
			nk.wipe()
			return -1, false, err
		}
	}
	// No fallocate first: a header cut short by a full disk is cut off
	// again, leaving the empty file this was. On ext4 a fallocate here
	// also cost a block allocation per new file, before delayed
	// allocation could place the file's blocks together.
	if err := (fdStore(f.fd)).writeFull(slot, 0); err != nil {
		nk.wipe()
		// Leave no partial header behind.
		unix.Ftruncate(f.fd, 0)
		return -1, false, err
	}
	nk.own = true
	st.key, st.restart = nk, false
	return int64(len(slot)), true, nil
}

// proveOwn makes sure the key of a file with content, found in its
// header, is the file's own before the file is written under it: its
// final block must authenticate (once per open state). Whoever can write
// CIPHERDIR could otherwise put another file's header in front of a
// block of garbage, and whole blocks written over it, never read, would
// be sealed under the other file's ID and key. Passing takes the other
// file's blocks themselves: a copy of that file (THREAT_MODEL.md).
//
// If the final block fails but one before it passes, the key is the
// file's, and its tail is marked bad (fileKey.badTail): a tail torn by a
// crash during an append and a file cut at a block boundary look alike,
// and a write sealing the final block anew would make the cut read as
// whole. Stray bytes past the last whole block (change cuts them off)
// are not looked at.
func (f *file) proveOwn(stored int64) error {
	k := f.st.key
	if k.own {
		return nil
	}
	l := f.n.r.layout
	bf, size, err := f.blocksOf(stored - l.StrayTail(stored))
	if err != nil {
		return err
	}
	var b [1]byte
	if _, err := bf.ReadAt(b[:], size-1, size); err != nil {
		if !errors.Is(err, blockcipher.ErrAuth) {
			return err
		}
		// A crash during an append leaves a tail that fails: the
		// blocks before it still authenticate (blockfile.Authentic).
		idx, ok, aerr := bf.Authentic(size)
		if aerr != nil {
			return aerr
		}
		if !ok {
			return fmt.Errorf("its final block does not authenticate under its header, nor does any block before it, so nothing is written under that key (truncate it to 0 to start it over): %w", err)
		}
		k.badTail = l.BlockToPlainOff(l.PlainOffToBlock(size - 1))
		f.n.r.log.Info("the file's final block fails authentication (a crash during an append, or a cut, leaves that), but an earlier one authenticates: it takes writes before its final block, and a truncate to at most bad_tail bytes writes it whole again", "path", f.n.relPath(), "block", idx, "bad_tail", k.badTail)
	}
	k.own = true
	return nil
}

// noContent reports whether a stored file of stored bytes holds no
// readable block: 0 bytes, a header alone (with or without a journal
// record), or a cut inside block 0's overhead or the header.
func (r *Root) noContent(stored int64) bool {
	plain, _ := r.layout.PlainSize(stored)
	return plain == 0
}

// headerOf reports whether the stored file still begins with k's header
// (k.h, the very one: its file ID and MAC), for an emptied file going on
// under its own key.
func (r *Root) headerOf(fd int, stored int64, k *fileKey) bool {
	if stored < r.layout.HeaderSize || k.h == nil {
		return false
	}
	h, err := r.vol.ReadHeader(fdStore(fd), stored)
	return err == nil && h != nil && h.FileID == k.h.FileID && h.MAC == k.h.MAC
}

// ensureKey loads the key of a file that was empty when this mount opened
// it and has since been given a header by another mount. Caller holds no
// content lock.
func (f *file) ensureKey() error {
	st := f.st
	st.content.Lock()
	defer st.content.Unlock()
	if st.key != nil {
		return nil
	}
	k, err := f.n.r.loadKey(f.fd, f.n.objectID(), nil)
	if err != nil || k == nil {
		return err
	}
	st.key = k
	return nil
}

// headerLockWait bounds how long ensureHeader waits for another holder of
// the stored file's flock: another mount writing the header holds it for
// one key service call at most.
var headerLockWait = 10 * time.Second

// lockHeader takes the exclusive flock ensureHeader writes a header under,
// giving up after headerLockWait (EIO, with a warning naming the file)
// rather than waiting for good on a reader of CIPHERDIR who holds a shared
// one (volume.LockExclusive).
func lockHeader(fd int) error {
	if err := volume.LockExclusive(fd, headerLockWait); err != nil {
		return fmt.Errorf("the stored file has no header yet, and kmsfs writes one only under an exclusive lock: %w", err)
	}
	return nil
}
