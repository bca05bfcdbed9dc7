package blockcipher

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"strconv"
	"unicode/utf8"
)

// Format constants (docs/FORMAT.md, "File header").
const (
	// Header versions, which are also the framing of the file's blocks
	// (Layout): this package reads and writes both. A volume's config
	// says which its new files get.
	Version1 = 1 // blocks under the content key, 12-byte nonces
	Version2 = 2 // blocks under XAES-256-GCM keys derived from it

	Magic = "KMSFS\x00"

	IDSize         = 16 // volume ID and file ID
	CommitmentSize = 32
	MACSize        = 32

	// fixedSize is the header prefix before the wrapped key entries:
	// magic(6) version(2) header size(4) block size(4) volume ID(16)
	// file ID(16) commitment(32) flags(2) key count(1).
	fixedSize = 6 + 2 + 4 + 4 + IDSize + IDSize + CommitmentSize + 2 + 1

	// PrefixSize bytes at the start of a header are enough to learn the
	// header and block size (ParsePrefix).
	PrefixSize = 16

	MinHeaderSize = 256
	MaxHeaderSize = 256 << 10

	MaxKeys      = 16
	MaxKeyIDLen  = 2048
	MaxBlobLen   = 6144 // the largest CiphertextBlob AWS KMS documents
	entryFixed   = 1 + 2 + 2
	MinBlockSize = 512
	MaxBlockSize = 1 << 20
)

// KeyEntry is one wrapped copy of the file's data key.
type KeyEntry struct {
	Kind  uint8  // which keyring wrapped it: a code the volume assigns (never 0)
	KeyID string // resolved key ARN, or a local key's fingerprint
	Blob  []byte // the wrapped key (KMS CiphertextBlob)
}

// Header is a decoded file header. Fields map one to one to docs/FORMAT.md.
type Header struct {
	Version    uint16
	HeaderSize int // size of the header slot in bytes, fixed per volume
	BlockSize  int // plaintext bytes per block, fixed per volume
	VolumeID   [IDSize]byte
	FileID     [IDSize]byte // the branch ID in a branch key file
	Commitment [CommitmentSize]byte
	Flags      uint16 // 0, FlagBranchKey, or that and FlagBranchReadOnly
	Keys       []KeyEntry
	MAC        [MACSize]byte
}

// FlagBranchKey marks the header of a branch key file: its entries wrap a
// branch key, its "file ID" is the branch ID, and no block follows it
// (docs/FORMAT.md, "Branch keys"). FlagBranchReadOnly, only beside it,
// says the entries wrap the key under its read-only context: a key that
// a rewrap carried over, which unwraps the files that name it and wraps
// no new one. They are the only flags defined.
const (
	FlagBranchKey      = 0x0001
	FlagBranchReadOnly = 0x0002
)

// validFlags reports whether f is a combination of flags a header can have.
func validFlags(f uint16) bool {
	return f == 0 || f == FlagBranchKey || f == FlagBranchKey|FlagBranchReadOnly
}

// NewID returns a random 128-bit ID for a volume or a file.
func NewID() [IDSize]byte {
	var id [IDSize]byte
	rand.Read(id[:])
	return id
}

// Layout returns the volume geometry the header declares.
func (h *Header) Layout() (Layout, error) { return NewLayout(h.HeaderSize, h.BlockSize, h.Version) }

// UsedSize is the number of header bytes before the zero padding.
func (h *Header) UsedSize() int {
	n := fixedSize + MACSize
	for _, k := range h.Keys {
		n += entryFixed + len(k.KeyID) + len(k.Blob)
	}
	return n
}

// Marshal encodes h into a slot of h.HeaderSize bytes, including the stored
// Commitment and MAC as they are. It fails with a *FormatError when a field
// is out of range or the entries do not fit the slot.
func (h *Header) Marshal() ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, h.HeaderSize)
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint32(b, uint32(h.HeaderSize))
	b = binary.BigEndian.AppendUint32(b, uint32(h.BlockSize))
	b = append(b, h.VolumeID[:]...)
	b = append(b, h.FileID[:]...)
	b = append(b, h.Commitment[:]...)
	b = binary.BigEndian.AppendUint16(b, h.Flags)
	b = append(b, byte(len(h.Keys)))
	for _, k := range h.Keys {
		b = append(b, k.Kind)
		b = binary.BigEndian.AppendUint16(b, uint16(len(k.KeyID)))
		b = append(b, k.KeyID...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(k.Blob)))
		b = append(b, k.Blob...)
	}
	b = b[:h.HeaderSize-MACSize] // zero padding: b's capacity is zeroed
	b = append(b, h.MAC[:]...)
	return b, nil
}

func (h *Header) validate() error {
	if _, err := NewLayout(h.HeaderSize, h.BlockSize, h.Version); err != nil {
		return err
	}
	if !validFlags(h.Flags) {
		return formatErr("flags", ErrUnsupportedVersion, "unknown flags %#04x", h.Flags)
	}
	if len(h.Keys) == 0 || len(h.Keys) > MaxKeys {
		return formatErr("key count", ErrMalformed, "%d wrapped keys, want 1 to %d", len(h.Keys), MaxKeys)
	}
	for i, k := range h.Keys {
		if k.Kind == 0 {
			return formatErr(entryField(i, "kind"), ErrMalformed, "kind code 0")
		}
		if err := checkKeyID(i, k.KeyID); err != nil {
			return err
		}
		if len(k.Blob) == 0 || len(k.Blob) > MaxBlobLen {
			return formatErr(entryField(i, "blob"), ErrMalformed, "%d bytes, want 1 to %d", len(k.Blob), MaxBlobLen)
		}
	}
	if used := h.UsedSize(); used > h.HeaderSize {
		return formatErr("wrapped keys", ErrMalformed, "need %d bytes, the volume's header slot holds %d", used, h.HeaderSize)
	}
	return nil
}

func checkKeyID(i int, id string) error {
	if len(id) == 0 || len(id) > MaxKeyIDLen || !utf8.ValidString(id) {
		return formatErr(entryField(i, "key ID"), ErrMalformed, "%d bytes, want 1 to %d of UTF-8", len(id), MaxKeyIDLen)
	}
	return nil
}

func entryField(i int, name string) string {
	return "wrapped key " + strconv.Itoa(i+1) + " " + name
}

// ParsePrefix reads the layout (version, header and block size) from the
// first PrefixSize bytes of a file, so a reader without the volume config
// (kmsfs inspect) knows how many bytes the whole header has.
func ParsePrefix(b []byte) (Layout, error) {
	if len(b) < len(Magic) || string(b[:len(Magic)]) != Magic {
		if len(b) < len(Magic) && string(b) == Magic[:len(b)] {
			return Layout{}, formatErr("magic", ErrTruncated, "%d bytes", len(b))
		}
		return Layout{}, formatErr("magic", ErrBadMagic, "")
	}
	if len(b) < PrefixSize {
		return Layout{}, formatErr("prefix", ErrTruncated, "%d bytes", len(b))
	}
	v := binary.BigEndian.Uint16(b[6:])
	hs := binary.BigEndian.Uint32(b[8:])
	bs := binary.BigEndian.Uint32(b[12:])
	return NewLayout(int(hs), int(bs), v)
}

// ParseHeader decodes a complete header slot. It checks structure only:
// magic, version, sizes, entry bounds, zero padding, and that b is exactly
// the declared header size. Authenticity is checked by Open once the data
// key is known. It never panics; every rejection is a *FormatError.
func ParseHeader(b []byte) (*Header, error) {
	l, err := ParsePrefix(b)
	if err != nil {
		return nil, err
	}
	hs, bs := int(l.HeaderSize), int(l.BlockSize)
	if len(b) < hs {
		return nil, formatErr("slot", ErrTruncated, "%d of %d bytes", len(b), hs)
	}
	if len(b) > hs {
		return nil, formatErr("slot", ErrMalformed, "%d bytes of trailing data", len(b)-hs)
	}
	h := &Header{Version: l.Version, HeaderSize: hs, BlockSize: bs}
	copy(h.VolumeID[:], b[16:32])
	copy(h.FileID[:], b[32:48])
	copy(h.Commitment[:], b[48:80])
	h.Flags = binary.BigEndian.Uint16(b[80:])
	if !validFlags(h.Flags) {
		return nil, formatErr("flags", ErrUnsupportedVersion, "unknown flags %#04x", h.Flags)
	}
	n := int(b[82])
	if n == 0 || n > MaxKeys {
		return nil, formatErr("key count", ErrMalformed, "%d wrapped keys, want 1 to %d", n, MaxKeys)
	}
	body := b[:hs-MACSize]
	p := fixedSize
	h.Keys = make([]KeyEntry, 0, n)
	for i := 0; i < n; i++ {
		if len(body)-p < entryFixed {
			return nil, formatErr(entryField(i, "entry"), ErrMalformed, "runs past the header slot")
		}
		kind := body[p]
		if kind == 0 {
			return nil, formatErr(entryField(i, "kind"), ErrMalformed, "kind code 0")
		}
		idLen := int(binary.BigEndian.Uint16(body[p+1:]))
		p += 3
		if idLen > len(body)-p-2 {
			return nil, formatErr(entryField(i, "key ID"), ErrMalformed, "runs past the header slot")
		}
		id := string(body[p : p+idLen])
		if err := checkKeyID(i, id); err != nil {
			return nil, err
		}
		p += idLen
		blobLen := int(binary.BigEndian.Uint16(body[p:]))
		p += 2
		if blobLen == 0 || blobLen > MaxBlobLen {
			return nil, formatErr(entryField(i, "blob"), ErrMalformed, "%d bytes, want 1 to %d", blobLen, MaxBlobLen)
		}
		if blobLen > len(body)-p {
			return nil, formatErr(entryField(i, "blob"), ErrMalformed, "runs past the header slot")
		}
		h.Keys = append(h.Keys, KeyEntry{Kind: kind, KeyID: id, Blob: bytes.Clone(body[p : p+blobLen])})
		p += blobLen
	}
	for _, c := range body[p:] {
		if c != 0 {
			return nil, formatErr("padding", ErrMalformed, "non-zero bytes after the wrapped keys")
		}
	}
	copy(h.MAC[:], b[hs-MACSize:])
	return h, nil
}
