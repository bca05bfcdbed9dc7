package fs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
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

// loadKey reads the header of the file open at fd, unwraps its data key
// with one keyring call and checks the header against it. A file without
// a header yields (nil, nil). before, if not nil, runs once a header is
// found, before the keyring call; the function it returns runs after it.
func (r *Root) loadKey(fd int, before func() (after func())) (*fileKey, error) {
	h, err := r.readHeader(fd)
	if err != nil || h == nil {
		return nil, err
	}
	if before != nil {
		defer before()()
	}
	return r.openHeader(h)
}

// openHeader unwraps the data key of h with one keyring call (which a
// prefetch may have made already) and checks h against it: commitment,
// MAC.
func (r *Root) openHeader(h *blockcipher.Header) (*fileKey, error) {
	ctx, cancel := keyCtx()
	defer cancel()
	r.stats.decrypts.Add(1)
	dk, err := r.keyring.Decrypt(ctx, volume.Entries(h), r.vol.FileContext(h.FileID))
	r.outage.noteResult(err)
	if err != nil && unavailable(err) {
		if kept := r.outage.take(h); kept != nil {
			// A file this mount wrote while the key service is down.
			dk, err = kept, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("unwrap data key: %w", err)
	}
	return openFileKey(h, dk, &r.stats.liveKeys)
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

// ensureHeader gives a file that has no header yet (every new file, until
// its first write) one, so it can be written. Caller holds st.content for
// writing. The header is written in one pwrite before any block: a crash
// in between leaves a header-only file, a valid empty file. An exclusive
// flock on the stored file keeps two mounts of one CIPHERDIR from both
// writing a header; the one that finds a header already there takes its
// key instead.
func (f *file) ensureHeader() error {
	st := f.st
	if st.key != nil {
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
		k, err := r.openHeader(h)
		if err != nil {
			return err
		}
		st.key = k
		return nil
	}
	pk, err := r.newFileKey()
	if err != nil {
		return err
	}
	slot, k, err := r.sealNewHeader(pk)
	if err != nil {
		return err
	}
	// No fallocate first: a header cut short by a full disk is cut off
	// again, leaving the empty file this was. On ext4 a fallocate here
	// also cost a block allocation per new file, before delayed
	// allocation could place the file's blocks together.
	if err := (fdStore(f.fd)).writeFull(slot, 0); err != nil {
		k.wipe()
		// Leave no partial header behind.
		unix.Ftruncate(f.fd, 0)
		return err
	}
	st.key = k
	return nil
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
	k, err := f.n.r.loadKey(f.fd, nil)
	if err != nil || k == nil {
		return err
	}
	st.key = k
	return nil
}
