package blockfile

import (
	"fmt"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// Truncate changes a file of size plaintext bytes to newSize bytes.
// Growing leaves a hole; shrinking into a block re-seals that block as the
// final one. The header stays: a truncate to 0 leaves a header-only file.
func (f File) Truncate(size, newSize int64) error {
	if newSize < 0 || newSize > blockcipher.MaxPlainSize {
		return fmt.Errorf("blockfile: truncate to %d: %w", newSize, ErrOutOfRange)
	}
	l := f.C.Layout()
	switch {
	case newSize == size:
		return nil
	case newSize == 0:
		return f.S.Truncate(l.HeaderSize)
	case newSize > size:
		return f.grow(size, newSize)
	}
	// Shrink. Re-seal the new final block (journaled), then cut the stored
	// file. The re-sealed block is written padded with zeros over its old
	// extent, so that until the cut the file keeps its old size and reads
	// the truncated block zero-extended (openShortened).
	newLast := uint64(f.lastBlock(newSize))
	pb := getBuf(int(l.BlockSize))
	defer putBuf(pb)
	b, err := f.readBlock((*pb)[:0], newLast, size)
	if err != nil {
		return err
	}
	*pb = b
	b = b[:l.BlockPlainLen(newLast, newSize)]
	oldExtent := int(l.BlockPlainLen(newLast, size) + l.Overhead())
	if err := f.rewrite(newLast, b, true, oldExtent); err != nil {
		return err
	}
	return f.S.Truncate(l.CipherSize(newSize))
}

func (f File) grow(size, newSize int64) error {
	l := f.C.Layout()
	bs := l.BlockSize
	oldLast, newLast := f.lastBlock(size), f.lastBlock(newSize)
	reserve := [][2]uint64{{uint64(newLast), uint64(newLast)}}
	if oldLast >= 0 && oldLast != newLast {
		reserve = append(reserve, [2]uint64{uint64(oldLast), uint64(oldLast)})
	}
	if err := f.reserve(newSize, oldLast >= 0, reserve...); err != nil {
		return err
	}
	pb := getBuf(int(bs))
	defer putBuf(pb)
	var b []byte
	if oldLast >= 0 {
		var err error
		if b, err = f.readBlock((*pb)[:0], uint64(oldLast), size); err != nil {
			return err
		}
		*pb = b
	}
	if oldLast == newLast {
		// Growing inside the final block.
		b = append(b, zeros[:l.BlockPlainLen(uint64(newLast), newSize)-int64(len(b))]...)
		*pb = b
		return f.rewrite(uint64(newLast), b, true, 0)
	}
	if oldLast >= 0 && int64(len(b)) < bs {
		b = append(b, zeros[:bs-int64(len(b))]...)
		*pb = b
		if err := f.rewrite(uint64(oldLast), b, true, 0); err != nil {
			return err
		}
	}
	if err := f.sealAt(zeros[:l.BlockPlainLen(uint64(newLast), newSize)], uint64(newLast), true, 0); err != nil {
		return err
	}
	if oldLast >= 0 {
		return f.rewrite(uint64(oldLast), b, false, 0)
	}
	return nil
}
