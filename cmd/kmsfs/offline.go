package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/blockfile"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/agekey"
	"github.com/kmsfs/kmsfs/volume"
)

// The offline commands (fsck, cat, export) read an unmounted CIPHERDIR
// with nothing but the keys they are given: the volume's keyrings, built
// as a mount builds them, with the same overrides. They write nothing to
// CIPHERDIR (but fsck --repair) and send no new data key anywhere: only
// wrapped keys to be unwrapped.
//
// The trusted copy of the config (trust.go): a mount refuses a config
// this machine has no copy of unless the volume's files attest it, since
// its keyrings would be sent the keys of new files. An offline command
// sends none, and has to work on a machine that never saw the volume (a
// backup plus one key is enough to restore it), so it does not need a
// copy: without one it uses the config's keyrings as they are, says so on
// stderr, and takes a KMS endpoint only from the host (--kms-endpoint or
// AWS_ENDPOINT_URL_KMS), as a mount does for a config it does not trust
// yet. But a config that differs from the copy this machine has is
// refused, as by a mount: its keyrings would unwrap files that someone
// who can write CIPHERDIR made under keys of their own, and export them
// as the volume's. --trust-config accepts it for one run and, unlike a
// mount's, leaves the copy as it is.

// offlineFlags are the key flags of the offline commands.
type offlineFlags struct {
	localKey, identity string
	endpoint, region   keyedValue
	trustConfig        bool
}

func (o *offlineFlags) define(fl *flag.FlagSet) {
	fl.StringVar(&o.localKey, "local-key", "", "local key `FILE`, replacing the volume's key file path")
	fl.Var(&o.endpoint, "kms-endpoint", "KMS endpoint `URL`, replacing the volume's; KEY=URL for one of several KMS keys (repeat)")
	fl.Var(&o.region, "region", "AWS `region`, replacing the volume's; KEY=REGION for one of several KMS keys (repeat)")
	fl.StringVar(&o.identity, "identity", "", "age identity `FILE` (age-keygen) of a recovery recipient of the volume (init --recipient): unwrap with it too, so a backup and this file are enough")
	fl.BoolVar(&o.trustConfig, "trust-config", false, "use CIPHERDIR/kmsfs.json though it differs from the copy this machine trusts (the copy is not changed)")
}

// offlineBranchTTL is how long an offline command holds a branch key: the
// whole run, so each branch key costs one key service call.
const offlineBranchTTL = 24 * time.Hour

// offlineKeys is the keyring chain an offline command unwraps with.
type offlineKeys struct {
	kr      keyring.Keyring       // what files are unwrapped with
	metrics *keyring.Metrics      // counts the calls that reach the volume's keyrings
	branch  *volume.BranchKeyring // nil for a per-file volume
	trust   trustState            // of the config; trustDiffers only with --trust-config
	// byIdentity counts the keys the recovery identity unwrapped, where
	// the volume's keys said they were gone (counted in metrics too).
	byIdentity atomic.Int64
}

// close wipes the branch keys held.
func (k *offlineKeys) close() {
	if k.branch != nil {
		k.branch.Close()
	}
}

// unwrapKeyring returns the keyring the offline commands unwrap vol's
// files with: the keyrings vol's config names, built as a mount builds
// them (buildKeyring, with the same overrides), under the branch keyring
// in a branch-key volume. It is the one place they get their keys: a key
// of another kind (a recovery identity given on the command line) is
// added here, for all of them.
func unwrapKeyring(ctx context.Context, vol *volume.Volume, o offlineFlags, stderr io.Writer) (*offlineKeys, error) {
	name := filepath.Join(vol.Dir, volume.ConfigName)
	if pending, _ := vol.PendingRewrap(); pending {
		// As a mount: some files are under the new keyrings already.
		return nil, fail(exitVolume, "a kmsfs rewrap of %s was interrupted: its files are wrapped under the old keyrings or the new ones. Finish it first: run the same kmsfs rewrap command again", vol.Dir)
	}
	t, err := configTrust(vol)
	if err != nil {
		return nil, fail(exitVolume, "%s: %v", name, err)
	}
	state := t.state
	if state == trustDiffers && !o.trustConfig {
		old, _ := os.ReadFile(t.differing)
		return nil, fail(exitVolume, "%s differs from the copy of it this machine trusts (%s): %s. Whoever can write CIPHERDIR can add keys of their own to it, so kmsfs does not read the volume with it. If you changed it yourself, pass --trust-config", name, t.differing, configChange(old, vol.Config))
	}
	var id *agekey.Identity
	if o.identity != "" {
		if id, err = loadIdentity(o.identity); err != nil {
			return nil, err
		}
	}
	// Only unwraps: a keyring that cannot be loaded (a key file moved
	// away) is left out, with a warning, as long as another one or the
	// identity may unwrap.
	ov := keyOverrides{region: o.region, endpoint: o.endpoint, localKey: o.localKey, configEndpoint: state == trustTrusted || o.trustConfig,
		skipUnavailable: true, identityGiven: id != nil, log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	volumeKeys, _, err := buildKeyring(ctx, vol.Config, ov)
	if err != nil {
		return nil, err
	}
	k := &offlineKeys{trust: state}
	inner := withIdentity(volumeKeys, id, &k.byIdentity, vol.Config.Keyrings)
	if state == trustNone {
		fmt.Fprintf(stderr, "kmsfs: this machine has no trusted copy of %s%s: unwrapping with the keyrings it names, %s\n", name, trustedWhere(), keyringList(vol.Config.Keyrings))
	}
	k.metrics = keyring.NewMetrics(inner)
	k.kr = k.metrics
	if vol.Config.Branch() {
		if k.branch, err = volume.NewBranchKeyring(vol, k.metrics, offlineBranchTTL); err != nil {
			return nil, fail(exitVolume, "%v", err)
		}
		k.kr = k.branch
	}
	return k, nil
}

// keyServiceFailure reports whether err, from an unwrap, says the key
// service or the key could not be used, so nothing is known about the
// file: the run cannot go on. Other unwrap errors (a blob the key does
// not open, a key the volume does not trust, a header that does not
// verify) are the file's damage.
func keyServiceFailure(err error) bool {
	for _, e := range []error{keyring.ErrAccessDenied, keyring.ErrKeyDisabled, keyring.ErrKeyNotFound,
		keyring.ErrUnreachable, keyring.ErrThrottled, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// plainFile is a stored file opened for offline reading.
type plainFile struct {
	bf      blockfile.File
	f       *os.File // the stored file, for finding its holes
	stored  int64    // stored bytes
	size    int64    // plaintext bytes (of the readable part, if sizeErr)
	sizeErr error    // the stored size is one no writer produces
	// upTo, if not 0, is where read stops: the end of the last block
	// that authenticates, in a file whose final block fails (salvage).
	upTo int64
}

// wipe zeroes the file's keys (its cipher's). Safe on nil and on an empty
// file, which has none.
func (pf *plainFile) wipe() {
	if pf != nil && pf.bf.C != nil {
		pf.bf.C.Wipe()
	}
}

// headerError is a header that cannot be read or does not verify.
type headerError struct{ err error }

func (e *headerError) Error() string { return "header: " + e.err.Error() }
func (e *headerError) Unwrap() error { return e.err }

// openPlain reads the header of f, a stored file of vol, and unwraps its
// key with kr (one call). An empty file (no header) has size 0 and no
// cipher. A damaged header is a *headerError; so is an unwrap that fails,
// unless keyServiceFailure says the fault is the key service's.
func openPlain(ctx context.Context, vol *volume.Volume, kr keyring.Keyring, f *os.File) (*plainFile, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	pf := &plainFile{stored: st.Size()}
	if pf.stored == 0 {
		return pf, nil
	}
	// OpenHeader, as a mount: a header whose rewrite a crash cut short
	// is read through its record.
	h, dk, _, err := vol.OpenHeader(f, pf.stored, func(h *blockcipher.Header) (*keyring.DataKey, error) {
		dk, err := kr.Decrypt(ctx, volume.Entries(h), vol.FileContext(h.FileID))
		if err != nil {
			return nil, fmt.Errorf("unwrap data key: %w", err)
		}
		return dk, nil
	})
	if err != nil && !keyServiceFailure(err) {
		err = &headerError{err}
	}
	if err != nil {
		return nil, err
	}
	if h == nil {
		return nil, &headerError{errors.New("no header")} // not reached: the file is not empty
	}
	c, err := h.Open(dk.Bytes())
	dk.Wipe()
	if err != nil {
		return nil, &headerError{err}
	}
	pf.bf = blockfile.File{C: c, S: f}
	pf.f = f
	pf.size, pf.sizeErr = vol.Layout.PlainSize(pf.stored)
	return pf, nil
}

// finalBlock authenticates pf's final block. The plaintext size is the
// stored file's word until it does: whoever can write CIPHERDIR can put a
// genuine header in front of truncate -s 8T, whose blocks all read as
// holes (zeros) but the final one, which can never be a hole. So cat and
// export call it before they write a byte of the file. It returns the
// *blockcipher.BlockError of a final block that fails, or an I/O error.
func (pf *plainFile) finalBlock() error {
	if pf.size == 0 {
		return nil
	}
	l := pf.bf.C.Layout()
	buf := make([]byte, l.BlockSize)
	_, err := pf.bf.ReadAt(buf, (pf.size-1)/l.BlockSize*l.BlockSize, pf.size)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// finalBlockMessage says that pf's final block failed with err, for cat
// and export; what is not wrapped in a *blockcipher.BlockError is "".
func (pf *plainFile) finalBlockMessage(name string, err error) string {
	var be *blockcipher.BlockError
	if !errors.As(err, &be) {
		return ""
	}
	l := pf.bf.C.Layout()
	off := int64(be.Block) * l.BlockSize
	return fmt.Sprintf("%s: its final block %d (plaintext bytes %d-%d) fails authentication, so its size (%d bytes) is not known to be true: damaged, or tampered with (kmsfs fsck lists its other blocks)",
		name, be.Block, off, off+l.BlockPlainLen(be.Block, pf.size)-1, pf.size)
}

// nextData returns the plaintext offset of the first block at or after
// off (block-aligned) that the stored file holds data for, by SEEK_DATA;
// never past the last block, and off itself where the filesystem cannot
// tell.
func (pf *plainFile) nextData(off int64) int64 {
	l := pf.bf.C.Layout()
	lastOff := (int64(l.BlockCount(pf.size)) - 1) * l.BlockSize
	d, err := unix.Seek(int(pf.f.Fd()), l.BlockToCipherOff(uint64(off/l.BlockSize)), unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return max(off, lastOff) // no data after off
	case err != nil || d < l.DataOff():
		return off
	}
	return min(max(off, (d-l.DataOff())/l.StoredBlockSize()*l.BlockSize), max(off, lastOff))
}

// readChunk is how much plaintext offline reads decrypt at once.
const readChunk = 1 << 20

// read hands the plaintext of pf to out in order, in runs of whole blocks
// (the last may be short). A block that fails authentication goes to bad
// instead, with its plaintext offset and length; bad's error stops the
// read, nil skips the block. Any other error (I/O) stops it too. With
// skipHoles, blocks the stored file has no data for (holes, which read as
// zeros) are not handed to out at all: a sparse file of any size costs
// what its data does. The last block is always read (a hole there is
// damage, not a hole).
func (pf *plainFile) read(skipHoles bool, out func(plainOff int64, p []byte) error, bad func(blockIdx uint64, plainOff, n int64) error) error {
	if pf.size == 0 {
		return nil
	}
	l := pf.bf.C.Layout()
	end := pf.size
	if pf.upTo > 0 {
		end = pf.upTo
	}
	chunk := max(readChunk/l.BlockSize, 1) * l.BlockSize
	buf := make([]byte, min(chunk, (end+l.BlockSize-1)/l.BlockSize*l.BlockSize))
	for off := int64(0); off < end; off += chunk {
		if skipHoles {
			off = pf.nextData(off)
			if off >= end {
				break
			}
		}
		n, err := pf.bf.ReadAt(buf[:min(int64(len(buf)), end-off)], off, pf.size)
		if err == nil || errors.Is(err, io.EOF) {
			if err := out(off, buf[:n]); err != nil {
				return err
			}
			continue
		}
		var be *blockcipher.BlockError
		if !errors.As(err, &be) {
			return err
		}
		// Block by block, to find every bad one.
		for boff := off; boff < min(off+chunk, end); boff += l.BlockSize {
			n, err := pf.bf.ReadAt(buf[:l.BlockSize], boff, pf.size)
			switch {
			case err == nil || errors.Is(err, io.EOF):
				err = out(boff, buf[:n])
			case errors.As(err, &be):
				err = bad(be.Block, boff, l.BlockPlainLen(be.Block, pf.size))
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}
