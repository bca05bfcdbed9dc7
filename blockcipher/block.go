package blockcipher

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"

	"github.com/kmsfs/kmsfs/internal/secret"
)

// Cipher seals and opens the blocks of one file. It holds the file's
// derived content key (inside an AES-GCM AEAD for Version1 blocks, an
// XAES-256-GCM state for Version2) and record MAC key until Wipe, and its
// file ID. Every seal and open runs under secret.Shield, one per call
// (a run of blocks is one call): AES-GCM holds several round keys of the
// content key in vector registers at once. It is safe for concurrent use, but for Wipe; it never retains
// the slices passed to it.
type Cipher struct {
	aead      cipher.AEAD // Version1; nil after Wipe
	x         *xaes       // Version2
	wiped     bool
	fileID    [IDSize]byte
	layout    Layout
	recordKey [32]byte // the journal record MAC key (RecordMAC)
}

// Layout returns the geometry of the file's volume.
func (c *Cipher) Layout() Layout { return c.layout }

// FileID returns the file ID the blocks are bound to.
func (c *Cipher) FileID() [IDSize]byte { return c.fileID }

const aadSize = IDSize + 8 + 1

// fillAAD writes file ID ‖ uint64 block index ‖ last flag into aad.
func (c *Cipher) fillAAD(aad []byte, blockIdx uint64, last bool) []byte {
	aad = aad[:aadSize]
	copy(aad, c.fileID[:])
	binary.BigEndian.PutUint64(aad[IDSize:], blockIdx)
	aad[aadSize-1] = 0
	if last {
		aad[aadSize-1] = 1
	}
	return aad
}

// SealBlock appends the stored form of one block (nonces ‖ ciphertext ‖
// tag) to dst. plain must hold 1 to BlockSize bytes; last says whether the
// block is the file's final block.
func (c *Cipher) SealBlock(dst, plain []byte, blockIdx uint64, last bool) []byte {
	if len(plain) == 0 || int64(len(plain)) > c.layout.BlockSize {
		panic("blockcipher: internal error: SealBlock of a bad length")
	}
	var nonce [NonceSize]byte
	rand.Read(nonce[:])
	aad := make([]byte, aadSize)
	secret.Shield(func() { dst = c.sealOne(dst, plain, blockIdx, last, nonce[:], aad) })
	return dst
}

// sealOne seals with the given (random) AES-GCM nonce; aad is scratch
// space of aadSize bytes (passed in so that a run allocates it once, not
// per block).
func (c *Cipher) sealOne(dst, plain []byte, blockIdx uint64, last bool, nonce, aad []byte) []byte {
	aad = c.fillAAD(aad, blockIdx, last)
	if c.x != nil {
		return c.x.seal(dst, nonce, plain, aad)
	}
	if c.wiped {
		panic("blockcipher: internal error: seal with a wiped Cipher")
	}
	dst = append(dst, nonce...)
	return c.aead.Seal(dst, nonce, plain, aad)
}

// open authenticates and decrypts one stored block of more than
// Overhead() bytes under the given additional data.
func (c *Cipher) open(dst, stored, aad []byte) ([]byte, error) {
	if c.x != nil {
		return c.x.open(dst, stored, aad)
	}
	if c.wiped {
		panic("blockcipher: internal error: open with a wiped Cipher")
	}
	return c.aead.Open(dst, stored[:NonceSize], stored[NonceSize:], aad)
}

// OpenBlock appends the plaintext of one stored block to dst. A full-size
// stored block of zeros that is not the last block is a hole and reads as
// zeros. last must say whether the block is the file's final block. A block
// that fails authentication returns a *BlockError wrapping ErrAuth and
// leaves dst's contents beyond len(dst) unspecified.
func (c *Cipher) OpenBlock(dst, stored []byte, blockIdx uint64, last bool) (out []byte, err error) {
	aad := make([]byte, aadSize)
	secret.Shield(func() { out, err = c.openOne(dst, stored, blockIdx, last, aad) })
	return out, err
}

func (c *Cipher) openOne(dst, stored []byte, blockIdx uint64, last bool, aad []byte) ([]byte, error) {
	if int64(len(stored)) <= c.layout.Overhead() || int64(len(stored)) > c.layout.StoredBlockSize() {
		return dst, &BlockError{Block: blockIdx, Err: ErrAuth}
	}
	if isZero(stored[:c.layout.Overhead()-TagSize]) {
		// Random nonces are all zeros with probability 2^-96 or less:
		// this is a hole, or damage.
		if !last && int64(len(stored)) == c.layout.StoredBlockSize() && isZero(stored) {
			return append(dst, zeros[:c.layout.BlockSize]...), nil
		}
		return dst, &BlockError{Block: blockIdx, Err: ErrAuth}
	}
	out, err := c.open(dst, stored, c.fillAAD(aad, blockIdx, last))
	if err == nil {
		return out, nil
	}
	if !last {
		// A writer that extends a file re-seals the old final block as a
		// middle block only after writing the new blocks; a crash in
		// between leaves a middle block sealed as final. It is authentic,
		// so accept it (this cannot make a truncated file look whole:
		// the final block is always checked with last = true).
		if out, err = c.open(dst, stored, c.fillAAD(aad, blockIdx, true)); err == nil {
			return out, nil
		}
	}
	return c.openShortened(dst, stored, blockIdx, aad)
}

// OpenBlockExact opens a stored block with exactly the given last flag: no
// leniency for a crash's leftovers, no hole (journal records are checked
// this way). Errors as OpenBlock.
func (c *Cipher) OpenBlockExact(dst, stored []byte, blockIdx uint64, last bool) ([]byte, error) {
	if int64(len(stored)) <= c.layout.Overhead() || int64(len(stored)) > c.layout.StoredBlockSize() {
		return dst, &BlockError{Block: blockIdx, Err: ErrAuth}
	}
	aad := c.fillAAD(make([]byte, aadSize), blockIdx, last)
	var out []byte
	var err error
	secret.Shield(func() { out, err = c.open(dst, stored, aad) })
	if err != nil {
		return dst, &BlockError{Block: blockIdx, Err: ErrAuth}
	}
	return out, nil
}

// openShortened reads a block left by a truncate that crashed between its
// two steps (see File.Truncate), or by an append before it rewrote the old
// final block (File.extend): a block sealed as final for a shorter length,
// followed by zeros up to its extent. It tries the
// few prefixes ending at the last non-zero byte; on success the plaintext
// is zero-padded to the extent, as if the truncate had been followed by an
// extension with zeros. Only reached after ordinary opening failed.
func (c *Cipher) openShortened(dst, stored []byte, blockIdx uint64, aad []byte) ([]byte, error) {
	z := len(stored)
	for z > 0 && stored[z-1] == 0 {
		z--
	}
	if z == len(stored) {
		return dst, &BlockError{Block: blockIdx, Err: ErrAuth}
	}
	aad = c.fillAAD(aad, blockIdx, true)
	// The sealed prefix ends at or after z; its tag may end in zero bytes,
	// so try a few lengths past z (2^-8 per extra byte).
	for n := max(z, int(c.layout.Overhead())+1); n <= min(z+8, len(stored)-1); n++ {
		out, err := c.open(dst, stored[:n], aad)
		if err == nil {
			return append(out, zeros[:len(stored)-n]...), nil
		}
	}
	return dst, &BlockError{Block: blockIdx, Err: ErrAuth}
}

// zeros backs hole reads and padding; untouched, it costs no memory.
var zeros [MaxBlockSize]byte

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// SealRun appends the stored form of a run of consecutive blocks to dst.
// plain starts at block firstIdx; every block but the run's final one is
// full. endsFile says whether the run's final block is the file's final
// block. Nonces are drawn in one batch.
func (c *Cipher) SealRun(dst, plain []byte, firstIdx uint64, endsFile bool) []byte {
	if len(plain) == 0 {
		return dst
	}
	bs := int(c.layout.BlockSize)
	n := (len(plain) + bs - 1) / bs
	start := len(dst)
	ov := int(c.layout.Overhead())
	dst = grow(dst, len(plain)+n*ov)
	out := dst[start:]
	stored := bs + ov
	// One random read for the whole run instead of one per block.
	nonces := make([]byte, n*NonceSize)
	rand.Read(nonces)
	aad := make([]byte, aadSize)
	secret.Shield(func() {
		for i := range n {
			p := plain[i*bs : min((i+1)*bs, len(plain))]
			c.sealOne(out[i*stored:i*stored], p, firstIdx+uint64(i), endsFile && i == n-1, nonces[i*NonceSize:(i+1)*NonceSize], aad)
		}
	})
	return dst
}

// OpenRun appends the plaintext of a run of consecutive stored blocks to
// dst. stored starts at block firstIdx; endsFile says whether the run's
// final block is the file's final block. On failure it returns the
// *BlockError of the lowest failing block and dst unextended.
func (c *Cipher) OpenRun(dst, stored []byte, firstIdx uint64, endsFile bool) ([]byte, error) {
	if len(stored) == 0 {
		return dst, nil
	}
	sbs := int(c.layout.StoredBlockSize())
	bs := int(c.layout.BlockSize)
	n := (len(stored) + sbs - 1) / sbs
	tail := len(stored) - (n-1)*sbs
	if tail <= int(c.layout.Overhead()) {
		return dst, &BlockError{Block: firstIdx + uint64(n-1), Err: formatErr("block", ErrTruncated, "last block has %d bytes", tail)}
	}
	plainLen := len(stored) - n*int(c.layout.Overhead())
	start := len(dst)
	dst = grow(dst, plainLen)
	out := dst[start:]
	aad := make([]byte, aadSize)
	var err error
	secret.Shield(func() {
		for i := range n {
			s := stored[i*sbs : min((i+1)*sbs, len(stored))]
			if _, err = c.openOne(out[i*bs:i*bs], s, firstIdx+uint64(i), endsFile && i == n-1, aad); err != nil {
				return
			}
		}
	})
	if err != nil {
		return dst[:start], err
	}
	return dst, nil
}

// grow extends b by n bytes, reallocating if needed.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}
