package blockcipher

import "math/bits"

// Block framing (docs/FORMAT.md, "Stored blocks"). A file's header
// version says which framing its blocks have:
//
//   - Version1: nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16), under the
//     file's content key.
//   - Version2: key nonce (12) ‖ nonce (12) ‖ ciphertext ‖ tag (16): the
//     block is sealed with AES-256-GCM under the key XAES-256-GCM derives
//     from the content key and the key nonce (C2SP XAES-256-GCM), so one
//     content key is good for far more writes (FORMAT.md, "Usage limits").
const (
	NonceSize    = 12 // the AES-GCM nonce; also the key nonce of Version2
	TagSize      = 16
	Overhead1    = NonceSize + TagSize
	Overhead2    = 2*NonceSize + TagSize
	MaxOverhead  = Overhead2
	minOverhead  = Overhead1
	xNonceOffset = NonceSize // where a Version2 block's AES-GCM nonce starts
)

// Layout is a volume's geometry: the header slot size and the plaintext
// block size. All offset math between the plaintext view and the stored
// (cipher) file lives here, so both directions stay consistent. Plain
// offsets and sizes are "plain…", stored ones "cipher…".
//
// A stored file is either empty (no header: plaintext size 0) or a header
// slot of HeaderSize bytes, a journal area of JournalSize() bytes (sparse
// unless a rewrite is in flight), and blocks of BlockSize+Overhead()
// bytes, the last of which may be shorter (at least 1 plaintext byte).
type Layout struct {
	HeaderSize int64
	BlockSize  int64
	Version    uint16 // the block framing: Version1 or Version2
}

// Overhead is what a stored block adds to its plaintext: nonces and tag.
func (l Layout) Overhead() int64 {
	if l.Version == Version1 {
		return Overhead1
	}
	return Overhead2
}

// JournalSlots is the number of block records the journal area holds: a
// write rewrites at most two blocks that keep older bytes (its first and
// its last).
const JournalSlots = 2

// JournalRecordHeader is the most a journal record puts before its block
// (blockfile's record header).
const JournalRecordHeader = 33

// JournalSlotSize is the size of one journal record slot: a record header
// and a stored block, rounded up to 16 bytes. Version1 slots were sized
// for a 24-byte header, B+64 bytes, which leaves the 33 of today's header
// before a block of B+28; Version2 slots are B+80 bytes.
func (l Layout) JournalSlotSize() int64 {
	head := int64(JournalRecordHeader)
	if l.Version == Version1 {
		head = 24
	}
	return (head + l.BlockSize + l.Overhead() + 15) / 16 * 16
}

// JournalSize is the size of the journal area after the header slot.
func (l Layout) JournalSize() int64 { return JournalSlots * l.JournalSlotSize() }

// DataOff is where block 0 starts in the stored file.
func (l Layout) DataOff() int64 { return l.HeaderSize + l.JournalSize() }

// MaxPlainSize bounds plaintext sizes and offsets so that no cipher offset
// overflows an int64 whatever the geometry.
const MaxPlainSize = 1 << 60

// NewLayout checks the geometry: block size a power of two from
// MinBlockSize to MaxBlockSize, header size from MinHeaderSize to
// MaxHeaderSize, version Version1 or Version2.
func NewLayout(headerSize, blockSize int, version uint16) (Layout, error) {
	if version != Version1 && version != Version2 {
		return Layout{}, formatErr("version", ErrUnsupportedVersion, "%d, this kmsfs reads versions %d and %d", version, Version1, Version2)
	}
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || bits.OnesCount(uint(blockSize)) != 1 {
		return Layout{}, formatErr("block size", ErrMalformed, "%d, want a power of two from %d to %d", blockSize, MinBlockSize, MaxBlockSize)
	}
	if headerSize < MinHeaderSize || headerSize > MaxHeaderSize {
		return Layout{}, formatErr("header size", ErrMalformed, "%d, want %d to %d", headerSize, MinHeaderSize, MaxHeaderSize)
	}
	return Layout{HeaderSize: int64(headerSize), BlockSize: int64(blockSize), Version: version}, nil
}

// StoredBlockSize is the stored size of a full block.
func (l Layout) StoredBlockSize() int64 { return l.BlockSize + l.Overhead() }

// PlainSize returns the plaintext size of a stored file of cipherSize bytes.
// It needs no read and no key. A size that no writer produces (a partial
// header, or a last block too short to hold a byte) is reported with
// ErrTruncated together with the size of the readable part.
func (l Layout) PlainSize(cipherSize int64) (int64, error) {
	if cipherSize == 0 {
		return 0, nil
	}
	if cipherSize < l.HeaderSize {
		return 0, formatErr("slot", ErrTruncated, "file has %d bytes, the header alone has %d", cipherSize, l.HeaderSize)
	}
	if cipherSize <= l.DataOff() {
		// The header, maybe with a journal record, and no block.
		return 0, nil
	}
	payload := cipherSize - l.DataOff()
	full, rem := payload/l.StoredBlockSize(), payload%l.StoredBlockSize()
	plain := full * l.BlockSize
	switch {
	case rem == 0:
		return plain, nil
	case rem <= l.Overhead():
		return plain, &BlockError{Block: uint64(full), Err: formatErr("block", ErrTruncated, "last block has %d bytes", rem)}
	default:
		return plain + rem - l.Overhead(), nil
	}
}

// StrayTail returns how many bytes at the end of a stored file of
// cipherSize bytes belong to no readable block: the 1 to Overhead() bytes
// past the last whole block that PlainSize reports as ErrTruncated. No
// writer leaves them; a crash during an append, its write torn at a page
// boundary, can. 0 if there are none, or no block at all.
func (l Layout) StrayTail(cipherSize int64) int64 {
	if cipherSize <= l.DataOff() {
		return 0
	}
	if rem := (cipherSize - l.DataOff()) % l.StoredBlockSize(); rem <= l.Overhead() {
		return rem
	}
	return 0
}

// CipherSize returns the stored size of a file holding plainSize bytes,
// header included (a file with a header and no data has HeaderSize bytes).
func (l Layout) CipherSize(plainSize int64) int64 {
	if plainSize == 0 {
		return l.HeaderSize
	}
	full, rem := plainSize/l.BlockSize, plainSize%l.BlockSize
	c := l.DataOff() + full*l.StoredBlockSize()
	if rem > 0 {
		c += rem + l.Overhead()
	}
	return c
}

// PlainOffToBlock returns the index of the block holding plainOff.
func (l Layout) PlainOffToBlock(plainOff int64) uint64 { return uint64(plainOff / l.BlockSize) }

// BlockToPlainOff returns the plaintext offset where block blockIdx starts.
func (l Layout) BlockToPlainOff(blockIdx uint64) int64 { return int64(blockIdx) * l.BlockSize }

// BlockToCipherOff returns the stored offset where block blockIdx starts.
func (l Layout) BlockToCipherOff(blockIdx uint64) int64 {
	return l.DataOff() + int64(blockIdx)*l.StoredBlockSize()
}

// CipherOffToBlock returns the block whose stored bytes hold cipherOff
// (0 for offsets before block 0).
func (l Layout) CipherOffToBlock(cipherOff int64) uint64 {
	if cipherOff < l.DataOff() {
		return 0
	}
	return uint64((cipherOff - l.DataOff()) / l.StoredBlockSize())
}

// BlockCount returns the number of blocks of a plaintext of plainSize bytes.
func (l Layout) BlockCount(plainSize int64) uint64 {
	return uint64((plainSize + l.BlockSize - 1) / l.BlockSize)
}

// Span returns the blocks that plaintext bytes [plainOff, plainOff+length)
// touch: the first index and the count (0 when length is 0).
func (l Layout) Span(plainOff, length int64) (first uint64, count uint64) {
	if length <= 0 {
		return l.PlainOffToBlock(plainOff), 0
	}
	first = l.PlainOffToBlock(plainOff)
	last := l.PlainOffToBlock(plainOff + length - 1)
	return first, last - first + 1
}

// BlockPlainLen returns the plaintext length of block blockIdx in a file of
// plainSize bytes (0 if the block is past the end).
func (l Layout) BlockPlainLen(blockIdx uint64, plainSize int64) int64 {
	start := l.BlockToPlainOff(blockIdx)
	if start >= plainSize {
		return 0
	}
	return min(l.BlockSize, plainSize-start)
}
