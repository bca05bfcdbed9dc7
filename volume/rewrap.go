package volume

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// Rewrap is what kmsfs rewrap asks of a file or branch key file: whether
// its entries are already the target's (Done, with no key service call),
// how to unwrap its data key (Unwrap), and its new entries (Entries, which
// may keep old blobs and make calls of its own). The data key never
// changes, so neither do the blocks nor the commitment; the header MAC is
// recomputed with the key.
type Rewrap struct {
	Done    func(entries []keyring.WrappedKey) bool
	Unwrap  Unwrapper
	Entries func(h *blockcipher.Header, dk *keyring.DataKey) ([]keyring.WrappedKey, error)
}

// RewrapOutcome says what RewrapFile did.
type RewrapOutcome int

const (
	RewrapNone     RewrapOutcome = iota // Done already: nothing read beyond the header
	RewrapEmpty                         // no header: an empty file
	RewrapSame                          // unwrapped, and the new entries are the old ones
	RewrapRewrote                       // a new header was written
	RewrapFinished                      // an interrupted rewrite was finished from its record
)

// rewriteLocks serialises rewrites of one file ID in this process: copies
// of a cipher file share their ID, and with it the record's name.
var rewriteLocks sync.Map // [IDSize]byte → *sync.Mutex

func lockID(id [blockcipher.IDSize]byte) func() {
	m, _ := rewriteLocks.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// RewrapFile gives the stored file at rel (slash-separated, below
// CIPHERDIR; root is a descriptor of CIPHERDIR) the entries rw says, with
// RewriteHeader. The file is opened beneath root without following a
// symlink, must be a regular file, and is held under an exclusive flock
// (which a mount's first write of a header takes too). A file whose slot
// is torn is finished from its record.
func (v *Volume) RewrapFile(root int, rel string, rw Rewrap) (RewrapOutcome, error) {
	f, err := openBeneath(root, rel, unix.O_RDWR)
	if err != nil {
		return RewrapNone, err
	}
	defer f.Close()
	if err := flock(f); err != nil {
		return RewrapNone, err
	}
	st, err := f.Stat()
	if err != nil {
		return RewrapNone, err
	}
	if st.Size() == 0 {
		return RewrapEmpty, nil
	}
	if h, err := v.ReadHeader(f, st.Size()); err == nil && rw.Done(Entries(h)) && !v.hasRecord(h.FileID) {
		return RewrapNone, nil
	}
	h, dk, fromRecord, err := v.OpenHeader(f, st.Size(), rw.Unwrap)
	if err != nil {
		return RewrapNone, err
	}
	defer dk.Wipe()
	defer lockID(h.FileID)()
	nh, slot, err := v.resealed(h, dk, rw)
	if err != nil {
		return RewrapNone, err
	}
	if !fromRecord && sameEntries(h, nh) {
		return RewrapSame, v.dropRecord(h.FileID)
	}
	if err := v.RewriteHeader(f, h.FileID, slot); err != nil {
		return RewrapNone, err
	}
	if fromRecord && sameEntries(h, nh) {
		return RewrapFinished, nil
	}
	return RewrapRewrote, nil
}

// resealed returns h with rw's entries, sealed with dk.
func (v *Volume) resealed(h *blockcipher.Header, dk *keyring.DataKey, rw Rewrap) (*blockcipher.Header, []byte, error) {
	wrapped, err := rw.Entries(h, dk)
	if err != nil {
		return nil, nil, err
	}
	nh := *h
	nh.Keys = nil
	if err := setEntries(&nh, wrapped); err != nil {
		return nil, nil, err
	}
	slot, c, err := nh.Seal(dk.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("seal the new header: %w", err)
	}
	c.Wipe() // only the header changes; the blocks are not read here
	return &nh, slot, nil
}

func sameEntries(a, b *blockcipher.Header) bool {
	if len(a.Keys) != len(b.Keys) {
		return false
	}
	for i := range a.Keys {
		x, y := a.Keys[i], b.Keys[i]
		if x.Kind != y.Kind || x.KeyID != y.KeyID || !bytes.Equal(x.Blob, y.Blob) {
			return false
		}
	}
	return true
}

// RewrapBranch gives the key file of branch id the entries rw says. A
// branch key file is one slot and nothing else, so it is replaced whole
// (a temporary file in the store, fsync, rename over it), needing no
// record. It reports whether it wrote.
//
// The key it writes is read-only (FlagBranchReadOnly): rw.Entries gets
// the header with that flag, and so wraps under the read-only context
// (BranchKeyContext), and, for a key that was not read-only yet, with no
// entries, so that none is kept or moved under the writable context. A
// rewrap cannot tell a branch key planted for a recovery recipient from a
// genuine one; so carried over, neither wraps a new file again.
func (v *Volume) RewrapBranch(id [blockcipher.IDSize]byte, rw Rewrap) (bool, error) {
	h, err := v.ReadBranch(id)
	if err != nil {
		return false, err
	}
	// Done only once read-only too: a key file under the new keyrings
	// already, but writable (the key the last rewrap made, or one a
	// kmsfs before read-only keys carried over), is rewritten read-only
	// like any other (found by review).
	if ReadOnlyBranch(h) && rw.Done(Entries(h)) {
		return false, nil
	}
	dk, err := openWith(h, rw.Unwrap)
	if err != nil {
		return false, fmt.Errorf("branch key %x: %w", id, err)
	}
	defer dk.Wipe()
	ro := *h
	if !ReadOnlyBranch(h) {
		ro.Flags |= blockcipher.FlagBranchReadOnly
		ro.Keys = nil
	}
	nh, slot, err := v.resealed(&ro, dk, rw)
	if err != nil {
		return false, fmt.Errorf("branch key %x: %w", id, err)
	}
	if sameEntries(h, nh) {
		return false, nil
	}
	dfd, err := v.openStore(false)
	if err != nil {
		return false, err
	}
	defer unix.Close(dfd)
	if err := writeWhole(dfd, fmt.Sprintf("%x", id[:]), slot, true); err != nil {
		return false, fmt.Errorf("write branch key %x: %w", id, err)
	}
	return true, unix.Fsync(dfd)
}

// openBeneath opens rel below root with flags (O_RDONLY or O_RDWR),
// resolving no symlink and never leaving root, without blocking, and
// only if it is a regular file.
func openBeneath(root int, rel string, flags int) (*os.File, error) {
	return openRegularAt(root, rel, unix.RESOLVE_BENEATH|unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_MAGICLINKS, flags)
}

func flock(f *os.File) error {
	if err := LockExclusive(int(f.Fd()), flockWait); err != nil {
		return fmt.Errorf("%w: find the holder with fuser, then run again", err)
	}
	return nil
}

// LockExclusive takes an exclusive flock on fd, polling rather than
// blocking: whoever can read CIPHERDIR can hold a shared flock on a
// stored file for as long as they like, and a blocking flock would hold
// the caller (unkillable, in a mount's FUSE request) as long. It gives up
// after wait. A filesystem without flock (ENOLCK) needs none.
func LockExclusive(fd int, wait time.Duration) error {
	pause := time.Millisecond
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil, errors.Is(err, unix.ENOLCK):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			return err
		case time.Now().After(deadline):
			return fmt.Errorf("locked (flock) by another process for %v", wait)
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// flockWait bounds how long a rewrap waits for another holder of a
// stored file's flock (a mount writing its header holds it for one key
// service call).
var flockWait = 30 * time.Second
