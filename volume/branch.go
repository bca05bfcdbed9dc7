package volume

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// Branch keys (docs/FORMAT.md, "Branch keys"). A volume in key mode
// "branch" keeps its branch keys in CIPHERDIR/.kmsfs/branch/, one file
// each, named by the branch ID in hex. A branch key file is a header slot
// of the volume's size with the flag blockcipher.FlagBranchKey, whose
// "file ID" is the branch ID and whose entries wrap the branch key under
// every keyring of the volume, with the context {kmsfs:volume,
// kmsfs:branch}; its commitment and MAC bind them as a file header's do.
// A branch ID is the branch key's creation time (uint64 Unix nanoseconds)
// followed by 8 random bytes, so the MAC and the key service both
// authenticate when it was made.
//
// The store is read like everything in CIPHERDIR: hostile. Each name is
// opened without following a symlink or blocking, beneath the store only,
// and a key file counts only once the volume's keyrings unwrap it and it
// verifies (BranchKeyring).

// ErrBranchKeyGone: the branch key file a header names is not in the
// store (removed, moved, or replaced by a symlink).
var ErrBranchKeyGone = errors.New("the branch key file is gone or replaced")

// BranchStore is the path of the branch key store below CIPHERDIR.
const BranchStore = StoreName + "/branch"

// maxBranchKeys bounds the branch key files a volume may hold: at one key
// a day, more than a century of them.
const maxBranchKeys = 65536

// NewBranchID returns a fresh branch ID made at now.
func NewBranchID(now time.Time) [blockcipher.IDSize]byte {
	var id [blockcipher.IDSize]byte
	binary.BigEndian.PutUint64(id[:8], uint64(now.UnixNano()))
	rand.Read(id[8:])
	return id
}

// BranchCreated returns when the branch key id was made.
func BranchCreated(id [blockcipher.IDSize]byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(id[:8])))
}

// BranchContext is the encryption context of branch key id of v.
func (v *Volume) BranchContext(id [blockcipher.IDSize]byte) keyring.EncryptionContext {
	return keyring.BranchContext(v.IDHex, hex.EncodeToString(id[:]))
}

// BranchKeyContext is the encryption context the entries of branch key
// file h are wrapped under: the read-only one if its flags say so. The
// flags are only a hint (whoever knows the branch key can reseal the
// header with others): an entry opens under its own context only.
func (v *Volume) BranchKeyContext(h *blockcipher.Header) keyring.EncryptionContext {
	return BranchKeyContextOf(v.IDHex, h)
}

// BranchKeyContextOf is BranchKeyContext for the volume whose ID is
// volumeID (lowercase hex), for a reader without its config (inspect).
func BranchKeyContextOf(volumeID string, h *blockcipher.Header) keyring.EncryptionContext {
	if ReadOnlyBranch(h) {
		return keyring.ReadOnlyBranchContext(volumeID, hex.EncodeToString(h.FileID[:]))
	}
	return keyring.BranchContext(volumeID, hex.EncodeToString(h.FileID[:]))
}

// ReadOnlyBranch reports whether branch key file h says its key was
// carried over by a rewrap, to read the files under it only.
func ReadOnlyBranch(h *blockcipher.Header) bool {
	return h.Flags&blockcipher.FlagBranchReadOnly != 0
}

// NewBranchHeader returns the (unsealed) header of a branch key file of
// v: branch ID id, and the branch key's wrapped copies.
func (v *Volume) NewBranchHeader(id [blockcipher.IDSize]byte, wrapped []keyring.WrappedKey) (*blockcipher.Header, error) {
	h, err := v.NewHeader(id, wrapped)
	if err != nil {
		return nil, err
	}
	h.Flags = blockcipher.FlagBranchKey
	return h, nil
}

// BranchIDs lists the branch IDs of v's store, newest first. Names that
// are not branch IDs are ignored; a volume with no store has none.
func (v *Volume) BranchIDs() ([][blockcipher.IDSize]byte, error) {
	fd, err := v.openStore(false)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), BranchStore)
	defer d.Close()
	names, err := d.Readdirnames(maxBranchKeys + 1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("list %s: %w", BranchStore, err)
	}
	if len(names) > maxBranchKeys {
		// Listing part of them would leave keys out unseen (a rewrap
		// would not rewrap them).
		return nil, fmt.Errorf("%s holds more than %d files, more than a volume makes: remove those that are not branch keys", BranchStore, maxBranchKeys)
	}
	var ids [][blockcipher.IDSize]byte
	for _, n := range names {
		if id, ok := parseBranchName(n); ok {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b [blockcipher.IDSize]byte) int { return -slices.Compare(a[:], b[:]) })
	return ids, nil
}

// parseBranchName returns the branch ID that n names, if it names one:
// 32 lowercase hex digits whose date (the first 8 bytes) is one a branch
// key can have. No branch key is made at or past 2^63 ns (the year 2262):
// such an ID would sort as the newest (IDs compare as bytes) while
// BranchCreated dates it before 1970, and Rotate and activeBranch, which
// walk the store newest first by date, would stop at it (found by
// review: a name alone in the store then kept Rotate from out-dating a
// branch key a recovery carried over).
func parseBranchName(n string) ([blockcipher.IDSize]byte, bool) {
	var id [blockcipher.IDSize]byte
	b, err := hex.DecodeString(n)
	if err != nil || len(b) != blockcipher.IDSize || hex.EncodeToString(b) != n || b[0]&0x80 != 0 {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// ReadBranch reads and parses the key file of branch id: a header of v
// with the branch key flag naming id. Its authenticity is checked once the
// branch key is unwrapped (blockcipher.Header.Verify).
func (v *Volume) ReadBranch(id [blockcipher.IDSize]byte) (*blockcipher.Header, error) {
	dfd, err := v.openStore(false)
	if err != nil {
		return nil, fmt.Errorf("branch key %x: %w", id, err)
	}
	defer unix.Close(dfd)
	f, err := OpenFile(dfd, hex.EncodeToString(id[:]))
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		// Not an errno for the reader of a file under it: the volume is
		// damaged (EIO, and a warning naming it), not the file missing.
		return nil, fmt.Errorf("branch key %x: %v: %w", id, err, ErrBranchKeyGone)
	}
	if err != nil {
		return nil, fmt.Errorf("branch key %x: %w", id, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != v.Layout.HeaderSize {
		return nil, fmt.Errorf("branch key %x: file of %d bytes, want %d: %w", id, st.Size(), v.Layout.HeaderSize, blockcipher.ErrHeaderAuth)
	}
	h, err := v.readHeader(f, st.Size(), true)
	if err != nil {
		return nil, fmt.Errorf("branch key %x: %w", id, err)
	}
	if h.FileID != id {
		return nil, fmt.Errorf("branch key file %x names branch %x: %w", id, h.FileID, blockcipher.ErrHeaderAuth)
	}
	return h, nil
}

// WriteBranch stores slot, the sealed header of branch key id, whole or
// not at all: a temporary file in the store, fsync, then link(2) to its
// name, which fails rather than replace an existing key file.
func (v *Volume) WriteBranch(id [blockcipher.IDSize]byte, slot []byte) error {
	dfd, err := v.openStore(true)
	if err != nil {
		return fmt.Errorf("open %s: %w", BranchStore, err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, ".", unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("create a branch key file: %w", err)
	}
	f := os.NewFile(uintptr(fd), "branch key")
	defer f.Close()
	if _, err := f.Write(slot); err != nil {
		return fmt.Errorf("write branch key %x: %w", id, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write branch key %x: %w", id, err)
	}
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), dfd, hex.EncodeToString(id[:]), unix.AT_SYMLINK_FOLLOW); err != nil {
		return fmt.Errorf("store branch key %x: %w", id, err)
	}
	return unix.Fsync(dfd)
}

// openStore opens the branch key store as a directory, beneath CIPHERDIR
// and following no symlink; with create it makes the store first.
func (v *Volume) openStore(create bool) (int, error) {
	return v.openStoreDir(BranchStore, create)
}

// openStoreDir opens dir, a directory of kmsfs's own store (StoreName or
// below it), beneath CIPHERDIR and following no symlink; with create it
// makes it (and StoreName) first.
func (v *Volume) openStoreDir(dir string, create bool) (int, error) {
	root, err := unix.Open(v.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	if create {
		if err := mkdirsBeneath(root, dir); err != nil {
			return -1, err
		}
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(root, dir, &how)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, fmt.Errorf("%s in CIPHERDIR is a symlink or not a directory, where kmsfs keeps its own files: remove it", dir)
	}
	return fd, err
}

// mkdirsBeneath makes each directory of the slash-separated path dir
// below root, one at a time, each made in the one before it as opened with
// no symlink followed: a symlink in CIPHERDIR where a directory of the
// store belongs cannot make kmsfs create anything outside CIPHERDIR.
func mkdirsBeneath(root int, dir string) error {
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	at := root
	defer func() {
		if at != root {
			unix.Close(at)
		}
	}()
	parts := strings.Split(dir, "/")
	for i, name := range parts {
		// mkdirat follows no symlink in its last component: a symlink
		// there is EEXIST, then refused by the open.
		if err := unix.Mkdirat(at, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		next, err := unix.Openat2(at, name, &how)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return fmt.Errorf("%s in CIPHERDIR is a symlink or not a directory, where kmsfs keeps its own files: remove it", strings.Join(parts[:i+1], "/"))
			}
			return err
		}
		if at != root {
			unix.Close(at)
		}
		at = next
	}
	return nil
}

// StoreStrays lists, as paths relative to CIPHERDIR, what in the key
// store (.kmsfs) is not a branch key file of v: in a volume without branch
// keys, everything there; otherwise names beside branch/, and names in
// branch/ that are not branch IDs or not regular files. A store that is
// not a directory (a symlink, say) is listed itself. A mount ignores all
// of these; kmsfs fsck reports them. A volume with no store has none.
func (v *Volume) StoreStrays() ([]string, error) {
	root, err := unix.Open(v.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	top, err := listBeneath(root, StoreName)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, nil
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		return []string{StoreName}, nil
	case err != nil:
		return nil, err
	}
	var strays []string
	for _, e := range top {
		switch {
		case e.Name() == "branch" && v.Config.Branch():
		case StoreName+"/"+e.Name() == RewrapStore && e.IsDir():
			// kmsfs rewrap's records and marker (rewrite.go).
		default:
			strays = append(strays, StoreName+"/"+e.Name())
		}
	}
	if !v.Config.Branch() || !slices.ContainsFunc(top, func(e fs.DirEntry) bool { return e.Name() == "branch" }) {
		return strays, nil
	}
	keys, err := listBeneath(root, BranchStore)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return append(strays, BranchStore), nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range keys {
		if _, isID := parseBranchName(e.Name()); !isID || !e.Type().IsRegular() {
			strays = append(strays, BranchStore+"/"+e.Name())
		}
	}
	return strays, nil
}

// listBeneath lists the directory dir below root, following no symlink,
// names in lexical order (at most maxBranchKeys+1 of them).
func listBeneath(root int, dir string) ([]fs.DirEntry, error) {
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(root, dir, &how)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), dir)
	defer d.Close()
	ents, err := d.ReadDir(maxBranchKeys + 1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return ents, nil
}
