package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// kindCodes are the codes a wrapped key entry stores for each keyring
// kind (docs/FORMAT.md, "Header slot"). This table is the only place that
// knows both.
var kindCodes = map[keyring.Kind]uint8{
	keyring.KindAWSKMS: 1,
	keyring.KindLocal:  2,
	keyring.KindBranch: 3,
	keyring.KindAge:    4,
}

// KindOf returns the keyring kind stored as code.
func KindOf(code uint8) (keyring.Kind, bool) {
	for k, c := range kindCodes {
		if c == code {
			return k, true
		}
	}
	return "", false
}

// Entries returns the wrapped keys of a header read by ReadHeader or
// ReadAnyHeader, for a keyring's Decrypt.
func Entries(h *blockcipher.Header) []keyring.WrappedKey {
	out := make([]keyring.WrappedKey, len(h.Keys))
	for i, k := range h.Keys {
		kind, _ := KindOf(k.Kind) // checked when read
		out[i] = keyring.WrappedKey{Kind: kind, KeyID: k.KeyID, Blob: k.Blob}
	}
	return out
}

// NewHeader returns the (unsealed) header of a new file of v with the
// given file ID and wrapped copies of its data key.
func (v *Volume) NewHeader(fileID [blockcipher.IDSize]byte, wrapped []keyring.WrappedKey) (*blockcipher.Header, error) {
	h := &blockcipher.Header{
		Version:    v.Layout.Version,
		HeaderSize: int(v.Layout.HeaderSize),
		BlockSize:  int(v.Layout.BlockSize),
		VolumeID:   v.ID,
		FileID:     fileID,
	}
	if err := setEntries(h, wrapped); err != nil {
		return nil, err
	}
	return h, nil
}

func setEntries(h *blockcipher.Header, wrapped []keyring.WrappedKey) error {
	h.Keys = h.Keys[:0]
	for _, w := range wrapped {
		code, ok := kindCodes[w.Kind]
		if !ok {
			return fmt.Errorf("volume: a keyring of kind %q cannot be stored in a header", w.Kind)
		}
		h.Keys = append(h.Keys, blockcipher.KeyEntry{Kind: code, KeyID: w.KeyID, Blob: w.Blob})
	}
	return nil
}

// HeaderUsedSize is the number of bytes a header with these wrapped keys
// uses before its padding: what must fit a volume's header_size.
func HeaderUsedSize(wrapped []keyring.WrappedKey) (int, error) {
	var h blockcipher.Header
	if err := setEntries(&h, wrapped); err != nil {
		return 0, err
	}
	return h.UsedSize(), nil
}

// HeaderSizeFor sizes a volume's header slot from real wrapped keys (what
// init's round trip returned): their used size plus 256 bytes of headroom
// (KMS blobs vary a little between calls and key rotations), rounded up to
// a multiple of 256, at least 512 (docs/FORMAT.md, "Choosing
// header_size").
func HeaderSizeFor(wrapped []keyring.WrappedKey) (int, error) {
	var h blockcipher.Header
	if err := setEntries(&h, wrapped); err != nil {
		return 0, err
	}
	size := max((h.UsedSize()+256+255)/256*256, 512)
	if size > blockcipher.MaxHeaderSize {
		return 0, fmt.Errorf("volume: wrapped keys need a %d-byte header, more than the %d a volume may have: use fewer keys", size, blockcipher.MaxHeaderSize)
	}
	return size, nil
}

// ReadHeader reads the header of a stored file of v, storedSize bytes
// long, through r, and checks its structure and that it names v's volume
// ID and geometry (a mismatch wraps blockcipher.ErrHeaderAuth). A file of
// 0 bytes has no header yet: (nil, nil). Authenticity is checked by
// blockcipher.Header.Open once the data key is known.
func (v *Volume) ReadHeader(r io.ReaderAt, storedSize int64) (*blockcipher.Header, error) {
	return v.readHeader(r, storedSize, false)
}

// readHeader is ReadHeader of a file (branchKey false) or of a branch key
// file (true): a file's header has no flag and wraps its key under the
// volume's keyrings or, in key mode "branch", under a branch key; a
// branch key file's has FlagBranchKey and wraps under keyrings only.
func (v *Volume) readHeader(r io.ReaderAt, storedSize int64, branchKey bool) (*blockcipher.Header, error) {
	if storedSize == 0 {
		return nil, nil
	}
	if storedSize < v.Layout.HeaderSize {
		return nil, fmt.Errorf("header: %w (file has %d bytes, the volume's header has %d)", blockcipher.ErrTruncated, storedSize, v.Layout.HeaderSize)
	}
	h, err := readSlot(r, int(v.Layout.HeaderSize))
	if err != nil {
		return nil, err
	}
	if h.VolumeID != v.ID {
		return nil, fmt.Errorf("header belongs to volume %x, not to this volume: %w", h.VolumeID, blockcipher.ErrHeaderAuth)
	}
	if int64(h.BlockSize) != v.Layout.BlockSize || int64(h.HeaderSize) != v.Layout.HeaderSize {
		return nil, fmt.Errorf("header declares block size %d and header size %d, the volume %d and %d: %w",
			h.BlockSize, h.HeaderSize, v.Layout.BlockSize, v.Layout.HeaderSize, blockcipher.ErrHeaderAuth)
	}
	if h.Version != v.Layout.Version {
		return nil, fmt.Errorf("header has version %d, the volume's files version %d: %w", h.Version, v.Layout.Version, blockcipher.ErrHeaderAuth)
	}
	if branchKey != (h.Flags&blockcipher.FlagBranchKey != 0) {
		return nil, fmt.Errorf("header flags %#04x where a %s was expected: %w", h.Flags, map[bool]string{true: "branch key", false: "file"}[branchKey], blockcipher.ErrHeaderAuth)
	}
	for _, k := range h.Keys {
		if k.Kind == kindCodes[keyring.KindBranch] && (branchKey || !v.Config.Branch()) {
			return nil, fmt.Errorf("a wrapped key of kind branch in a %s: %w", map[bool]string{true: "branch key file", false: "volume without branch keys"}[branchKey], blockcipher.ErrHeaderAuth)
		}
	}
	return h, nil
}

// ReadAnyHeader reads the header of a stored file of any volume, without
// its config: the header's first bytes say its size (kmsfs inspect). A
// file of 0 bytes has no header: (nil, nil).
func ReadAnyHeader(r io.ReaderAt, storedSize int64) (*blockcipher.Header, error) {
	if storedSize == 0 {
		return nil, nil
	}
	prefix := make([]byte, min(storedSize, blockcipher.PrefixSize))
	if err := readFull(r, prefix); err != nil {
		return nil, err
	}
	l, err := blockcipher.ParsePrefix(prefix)
	if err != nil {
		return nil, err
	}
	hs := int(l.HeaderSize)
	if storedSize < int64(hs) {
		return nil, fmt.Errorf("header truncated: %d of %d bytes: %w", storedSize, hs, blockcipher.ErrTruncated)
	}
	return readSlot(r, hs)
}

// readSlot reads and parses a header slot of size bytes, refusing kind
// codes no keyring has.
func readSlot(r io.ReaderAt, size int) (*blockcipher.Header, error) {
	slot := make([]byte, size)
	if err := readFull(r, slot); err != nil {
		return nil, err
	}
	h, err := blockcipher.ParseHeader(slot)
	if err != nil {
		if l, perr := blockcipher.ParsePrefix(slot[:min(len(slot), blockcipher.PrefixSize)]); perr == nil && int(l.HeaderSize) != size {
			// Read with this volume's header size, the slot says
			// another: a file of another volume, more likely than
			// a cut one.
			return nil, fmt.Errorf("it declares a header of %d bytes, this volume's are %d: a file of another volume, or damaged: %w", l.HeaderSize, size, err)
		}
		return nil, err
	}
	for i, k := range h.Keys {
		if _, ok := KindOf(k.Kind); !ok {
			return nil, &blockcipher.FormatError{Field: "wrapped key " + strconv.Itoa(i+1) + " kind", Err: blockcipher.ErrMalformed, Msg: "unknown kind code " + strconv.Itoa(int(k.Kind))}
		}
	}
	return h, nil
}

// readFull reads len(b) bytes at offset 0; a short file is ErrTruncated.
func readFull(r io.ReaderAt, b []byte) error {
	n, err := r.ReadAt(b, 0)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("header: %w (%d of %d bytes)", blockcipher.ErrTruncated, n, len(b))
	}
	return err
}

// Unwrap unwraps the data key of h, a header of v (ReadHeader), with kr
// (one keyring call), checks h against it (key commitment, MAC), and
// returns the Cipher of the file's blocks. The key itself is wiped before
// Unwrap returns. A keyring failure wraps the keyring's sentinel error; a
// header its key does not verify wraps blockcipher.ErrHeaderAuth.
func (v *Volume) Unwrap(ctx context.Context, kr keyring.Keyring, h *blockcipher.Header) (*blockcipher.Cipher, error) {
	dk, err := kr.Decrypt(ctx, Entries(h), v.FileContext(h.FileID))
	if err != nil {
		return nil, fmt.Errorf("unwrap data key: %w", err)
	}
	defer dk.Wipe()
	return h.Open(dk.Bytes())
}
