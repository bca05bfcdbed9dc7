package volume

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// Header rewrites (docs/FORMAT.md, "Header rewrite records"). kmsfs
// rewrap gives a file's header new wrapped keys; the header is one slot at
// offset 0, and a pwrite cut short there (a killed process, a power loss)
// would leave a slot that is neither the old header nor the new one, and
// the file unreadable. So the new slot is first stored whole as a record,
// CIPHERDIR/.kmsfs/rewrap/<file ID>, then written in place, then the
// record is removed. A reader whose slot does not verify uses the record
// of the file's ID, if it verifies: the old and the new header have the
// same volume ID, file ID and commitment, so a torn slot still names the
// file, and the data key, which the rewrite keeps, opens either.

// RewrapStore is the directory below CIPHERDIR of header rewrite records
// and of the marker of an unfinished rewrap.
const RewrapStore = StoreName + "/rewrap"

// Unwrapper unwraps the data key of a header (a keyring's Decrypt of its
// entries under its context). The caller of OpenHeader owns the key.
type Unwrapper func(h *blockcipher.Header) (*keyring.DataKey, error)

// OpenHeader reads the header of a stored file of v, storedSize bytes,
// through r, unwraps its data key with unwrap and verifies the header
// against it (commitment, MAC). If the slot does not parse, unwrap or
// verify and a header rewrite record of the file does, the record's
// header is returned with fromRecord set: a rewrite was cut short. A file
// of 0 bytes has no header: all nil. Otherwise the error is the slot's,
// or the record's if it has one that fails. The caller wipes the key.
func (v *Volume) OpenHeader(r io.ReaderAt, storedSize int64, unwrap Unwrapper) (h *blockcipher.Header, dk *keyring.DataKey, fromRecord bool, err error) {
	h, err = v.ReadHeader(r, storedSize)
	if h == nil && err == nil {
		return nil, nil, false, nil
	}
	if err == nil {
		if dk, err = openWith(h, unwrap); err == nil {
			return h, dk, false, nil
		}
	}
	id, ok := v.slotFileID(r)
	if !ok {
		return nil, nil, false, err
	}
	rec, rerr := v.readRecord(id)
	if rec == nil {
		if rerr != nil {
			err = fmt.Errorf("%w (and its header rewrite record: %v)", err, rerr)
		}
		return nil, nil, false, err
	}
	if dk, rerr = openWith(rec, unwrap); rerr != nil {
		return nil, nil, false, fmt.Errorf("header rewrite record: %w", rerr)
	}
	return rec, dk, true, nil
}

func openWith(h *blockcipher.Header, unwrap Unwrapper) (*keyring.DataKey, error) {
	dk, err := unwrap(h)
	if err != nil {
		return nil, err
	}
	if err := h.Verify(dk.Bytes()); err != nil {
		dk.Wipe()
		return nil, err
	}
	return dk, nil
}

// slotFileID reads the file ID from the first bytes of a slot, if they
// are a header's of this volume. The bytes up to the commitment are the
// same in the old and the new header of a rewrite, so even a torn slot
// has them.
func (v *Volume) slotFileID(r io.ReaderAt) ([blockcipher.IDSize]byte, bool) {
	var id [blockcipher.IDSize]byte
	b := make([]byte, 48)
	if n, _ := r.ReadAt(b, 0); n != len(b) {
		return id, false
	}
	if string(b[:len(blockcipher.Magic)]) != blockcipher.Magic || !bytes.Equal(b[16:32], v.ID[:]) {
		return id, false
	}
	copy(id[:], b[32:48])
	return id, true
}

// readRecord reads the header rewrite record of file id: a header slot of
// v naming that file. No record: (nil, nil).
func (v *Volume) readRecord(id [blockcipher.IDSize]byte) (*blockcipher.Header, error) {
	dfd, err := v.openStoreDir(RewrapStore, false)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	f, err := OpenFile(dfd, hex.EncodeToString(id[:]))
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != v.Layout.HeaderSize {
		return nil, fmt.Errorf("record of %d bytes, want %d: %w", st.Size(), v.Layout.HeaderSize, blockcipher.ErrHeaderAuth)
	}
	h, err := v.readHeader(f, st.Size(), false)
	if err != nil {
		return nil, err
	}
	if h.FileID != id {
		return nil, fmt.Errorf("record of file %x names file %x: %w", id, h.FileID, blockcipher.ErrHeaderAuth)
	}
	return h, nil
}

// hasRecord reports whether file id has a header rewrite record.
func (v *Volume) hasRecord(id [blockcipher.IDSize]byte) bool {
	dfd, err := v.openStoreDir(RewrapStore, false)
	if err != nil {
		return false
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	return unix.Fstatat(dfd, hex.EncodeToString(id[:]), &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// slotWriter is the stored file a rewrite writes: an *os.File.
type slotWriter interface {
	io.WriterAt
	Sync() error
}

// testOnlyCrash, when a test sets it, is asked before each step of a
// rewrite (0: store the record, 1: write the slot, 2: remove the record)
// how many bytes of it to do before the process "dies": all (-1), or n of
// the slot (step 1; other steps are whole or not done).
var testOnlyCrash func(step int) int

// errCrash is what a rewrite the test hook stopped returns.
var errCrash = errors.New("volume: crash (test)")

// RewriteHeader writes slot, the sealed new header of the file f (file ID
// id) in place, crash-safe: (1) the record, created whole (a temporary
// file, fsync, link to its name, fsync of the directory); (2) the slot in
// one write, fsync; (3) the record removed. Killed at any point, the file
// opens with the old header or the new one (OpenHeader), and running the
// rewrite again finishes it.
func (v *Volume) RewriteHeader(f slotWriter, id [blockcipher.IDSize]byte, slot []byte) error {
	if int64(len(slot)) != v.Layout.HeaderSize {
		return fmt.Errorf("volume: internal error: slot of %d bytes", len(slot))
	}
	if crashAt(0) == 0 {
		return errCrash
	}
	if err := v.putRecord(id, slot); err != nil {
		return fmt.Errorf("store the header rewrite record: %w", err)
	}
	if n := crashAt(1); n >= 0 {
		f.WriteAt(slot[:min(n, len(slot))], 0)
		return errCrash
	}
	if _, err := f.WriteAt(slot, 0); err != nil {
		return fmt.Errorf("write the header: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write the header: %w", err)
	}
	if crashAt(2) == 0 {
		return errCrash
	}
	return v.dropRecord(id)
}

func crashAt(step int) int {
	if testOnlyCrash == nil {
		return -1
	}
	return testOnlyCrash(step)
}

// putRecord stores slot as the record of file id, replacing an older one.
func (v *Volume) putRecord(id [blockcipher.IDSize]byte, slot []byte) error {
	dfd, err := v.openStoreDir(RewrapStore, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	name := hex.EncodeToString(id[:])
	if err := writeWhole(dfd, name, slot, true); err != nil {
		return err
	}
	return unix.Fsync(dfd)
}

// dropRecord removes the record of file id, if any.
func (v *Volume) dropRecord(id [blockcipher.IDSize]byte) error {
	dfd, err := v.openStoreDir(RewrapStore, false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, hex.EncodeToString(id[:]), 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove the header rewrite record: %w", err)
	}
	return nil
}

// writeWhole makes name in directory dfd hold b, whole or not at all: a
// temporary file beside it, written and synced, then renamed over name
// (replace) or linked to it (no replace: fails if name exists).
func writeWhole(dfd int, name string, b []byte, replace bool) error {
	var r [8]byte
	rand.Read(r[:])
	tmp := TempPrefix + name + "-" + hex.EncodeToString(r[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_CREAT|unix.O_TRUNC|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if replace {
			err = unix.Renameat(dfd, tmp, dfd, name)
		} else {
			err = unix.Linkat(dfd, tmp, dfd, name, 0)
		}
	}
	unix.Unlinkat(dfd, tmp, 0)
	return err
}

// rewrapMarker is the marker of an unfinished rewrap in RewrapStore: the
// keyrings it is rewrapping to, as JSON. While it exists the volume's
// files may be wrapped under the config's keyrings or these, and a mount
// refuses the volume (kmsfs rewrap, run again, finishes the job).
const rewrapMarker = "target.json"

// StartRewrap records that a rewrap to specs is under way.
func (v *Volume) StartRewrap(specs []KeyringSpec) error {
	b, err := json.Marshal(specs)
	if err != nil {
		return err
	}
	dfd, err := v.openStoreDir(RewrapStore, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := writeWhole(dfd, rewrapMarker, b, true); err != nil {
		return fmt.Errorf("write %s/%s: %w", RewrapStore, rewrapMarker, err)
	}
	return unix.Fsync(dfd)
}

// PendingRewrap reports whether a rewrap was started and not finished,
// and the keyrings it named. CIPHERDIR is not trusted: the keyrings are
// for messages and for comparing with the operator's flags, never to
// reach a key service. An unreadable marker still reports true.
func (v *Volume) PendingRewrap() (bool, []KeyringSpec) {
	dfd, err := v.openStoreDir(RewrapStore, false)
	if err != nil {
		return false, nil
	}
	defer unix.Close(dfd)
	f, err := OpenFile(dfd, rewrapMarker)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return true, nil
	}
	defer f.Close()
	var specs []KeyringSpec
	if err := json.NewDecoder(io.LimitReader(f, maxConfigSize)).Decode(&specs); err != nil {
		return true, nil
	}
	return true, specs
}

// EndRewrap removes the marker, once the config names the new keyrings.
func (v *Volume) EndRewrap() error {
	dfd, err := v.openStoreDir(RewrapStore, false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, rewrapMarker, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	removeTemps(dfd)
	if err := unix.Fsync(dfd); err != nil {
		return err
	}
	// The store goes too once it is empty (best effort: a record left
	// by a crash keeps it, and is still read).
	if sfd, err := v.openStoreDir(StoreName, false); err == nil {
		unix.Unlinkat(sfd, "rewrap", unix.AT_REMOVEDIR)
		unix.Close(sfd)
	}
	return nil
}

// removeTemps removes what writeWhole left in directory dfd when its
// process was killed before the rename: temporary files, never read.
// Best effort: a name that is not a file stays.
func removeTemps(dfd int) {
	fd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), RewrapStore)
	defer d.Close()
	names, _ := d.Readdirnames(4096)
	for _, name := range names {
		if strings.HasPrefix(name, TempPrefix) {
			unix.Unlinkat(dfd, name, 0)
		}
	}
}
