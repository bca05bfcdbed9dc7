package blockfile

import (
	"encoding/binary"
	"errors"
	"io"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// The journal makes a rewrite of a block that keeps older bytes atomic.
//
// A pwrite is not atomic: a SIGKILL (or a full disk) can stop it at any
// page boundary, and a stored block (B+28 bytes) always spans two pages.
// A block torn that way fails its tag, and with it every byte it held,
// including bytes the write did not touch and that may have been fsynced
// long before. So before kmsfs rewrites such a block in place it writes
// the block's new stored form to a journal record (in the journal area
// between the header and block 0), and clears the record once the block
// is in place. A torn record fails its own tag and is ignored; a torn
// block is replaced by its record (Settle, or the read path on a read-only
// mount). Blocks a write replaces entirely, and new blocks past the old
// end, are not journaled: if the write is torn they are the blocks being
// written, and only they can fail.
//
// Record layout (docs/FORMAT.md, "Journal"): uint64 block index + 1 (0:
// empty) ‖ uint32 stored length ‖ uint32 length to pad to with zeros when
// put in place ‖ uint8 last ‖ 7 zero bytes ‖ the stored block.

// journalRec is one record: the new stored form of block idx.
type journalRec struct {
	idx    uint64
	last   bool
	stored []byte // nonce ‖ ciphertext ‖ tag
	padTo  int    // write zeros after stored up to this length (shrink)
}

func (f File) journalOff(slot int) int64 {
	return f.C.Layout().HeaderSize + int64(slot)*f.C.Layout().JournalSlotSize()
}

// writeJournal writes recs to slots 0.. in one write.
func (f File) writeJournal(recs []journalRec) error {
	l := f.C.Layout()
	n := int(l.JournalSlotSize())*(len(recs)-1) + blockcipher.JournalRecordHeader + len(recs[len(recs)-1].stored)
	bp := getBuf(n)
	defer putBuf(bp)
	b := (*bp)[:n]
	clear(b)
	for i, r := range recs {
		o := i * int(l.JournalSlotSize())
		binary.BigEndian.PutUint64(b[o:], r.idx+1)
		binary.BigEndian.PutUint32(b[o+8:], uint32(len(r.stored)))
		binary.BigEndian.PutUint32(b[o+12:], uint32(r.padTo))
		if r.last {
			b[o+16] = 1
		}
		copy(b[o+blockcipher.JournalRecordHeader:], r.stored)
	}
	return f.writeStored(b, f.journalOff(0))
}

// clearJournal empties the journal after its blocks are in place by
// zeroing the record headers. (Punching the records' pages back out would
// save their disk space but costs more per write on tmpfs and ext4, and a
// journal that stays allocated cannot fail for lack of space later.)
func (f File) clearJournal(slots int) error {
	var zero [blockcipher.JournalRecordHeader]byte
	for s := 0; s < slots; s++ {
		if err := f.writeStored(zero[:], f.journalOff(s)); err != nil {
			return err
		}
	}
	return nil
}

// readJournal returns the records whose block authenticates: torn or
// stale-looking records are left out. It needs the stored size only to
// skip files too short to have a journal.
func (f File) readJournal(storedSize int64) ([]journalRec, error) {
	l := f.C.Layout()
	if storedSize <= l.HeaderSize {
		return nil, nil
	}
	var recs []journalRec
	for s := 0; s < blockcipher.JournalSlots; s++ {
		var h [blockcipher.JournalRecordHeader]byte
		n, err := f.S.ReadAt(h[:], f.journalOff(s))
		if n < len(h) {
			if err == nil || errors.Is(err, io.EOF) {
				continue
			}
			return nil, err
		}
		idx1 := binary.BigEndian.Uint64(h[:])
		if idx1 == 0 {
			continue
		}
		size := int64(binary.BigEndian.Uint32(h[8:]))
		padTo := int(binary.BigEndian.Uint32(h[12:]))
		if size <= blockcipher.Overhead || size > l.StoredBlockSize() || padTo > int(l.StoredBlockSize()) || idx1-1 > uint64(blockcipher.MaxPlainSize/l.BlockSize) {
			continue
		}
		stored := make([]byte, size)
		if n, err := f.S.ReadAt(stored, f.journalOff(s)+blockcipher.JournalRecordHeader); n < len(stored) {
			if err == nil || errors.Is(err, io.EOF) {
				continue
			}
			return nil, err
		}
		r := journalRec{idx: idx1 - 1, last: h[16] == 1, stored: stored, padTo: padTo}
		if _, err := f.C.OpenBlockExact(nil, stored, r.idx, r.last); err != nil {
			continue // torn while being written: the block was not touched
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// rewrite atomically replaces block idx, which holds bytes that must
// survive, by plain sealed with last, padded with zeros to padTo stored
// bytes: journal record, block in place, journal cleared.
func (f File) rewrite(idx uint64, plain []byte, last bool, padTo int) error {
	sb := getBuf(max(len(plain)+blockcipher.Overhead, padTo))
	defer putBuf(sb)
	stored := f.C.SealBlock(*sb, plain, idx, last)
	*sb = stored
	if err := f.writeJournal([]journalRec{{idx: idx, last: last, stored: stored, padTo: padTo}}); err != nil {
		return err
	}
	if err := f.putInPlace(journalRec{idx: idx, stored: stored, padTo: padTo}); err != nil {
		return err
	}
	return f.clearJournal(1)
}

// putInPlace writes a record's block at its place.
func (f File) putInPlace(r journalRec) error {
	b := r.stored
	if r.padTo > len(b) {
		bp := getBuf(r.padTo)
		defer putBuf(bp)
		b = append(append((*bp)[:0], b...), zeros[:r.padTo-len(b)]...)
	}
	return f.writeStored(b, f.C.Layout().BlockToCipherOff(r.idx))
}

// JournalPending reports whether the journal holds anything: a file not
// closed cleanly, which Settle must see to before it is changed. It reads
// the record headers only.
func (f File) JournalPending(storedSize int64) (bool, error) {
	if storedSize <= f.C.Layout().HeaderSize {
		return false, nil
	}
	for s := 0; s < blockcipher.JournalSlots; s++ {
		var h [8]byte
		n, err := f.S.ReadAt(h[:], f.journalOff(s))
		if n < len(h) {
			if err == nil || errors.Is(err, io.EOF) {
				continue
			}
			return false, err
		}
		if binary.BigEndian.Uint64(h[:]) != 0 {
			return true, nil
		}
	}
	return false, nil
}

// Settle finishes what a crash left in the journal: a record whose block
// does not authenticate in place (the rewrite was torn) is put in place; a
// record whose block does is dropped (the rewrite either finished or never
// started; both are valid). Then the journal is cleared. It reports
// whether it changed a block. Call it before the first change of a file,
// under the same lock as WriteAt.
func (f File) Settle(storedSize int64) (bool, error) {
	pending, err := f.JournalPending(storedSize)
	if err != nil || !pending {
		return false, err
	}
	recs, err := f.readJournal(storedSize)
	if err != nil {
		return false, err
	}
	size, _ := f.C.Layout().PlainSize(storedSize)
	changed := false
	for _, r := range recs {
		if f.inPlaceOK(r.idx, size) {
			continue
		}
		if err := f.putInPlace(r); err != nil {
			return changed, err
		}
		changed = true
	}
	return changed, f.clearPending()
}

// clearPending zeroes the header of every slot that holds one. A slot
// that reads as zeros is left alone: it may be a hole, and writing zeros
// there would need space that a full disk does not have.
func (f File) clearPending() error {
	for s := 0; s < blockcipher.JournalSlots; s++ {
		var h [blockcipher.JournalRecordHeader]byte
		n, err := f.S.ReadAt(h[:], f.journalOff(s))
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if isZero(h[:n]) {
			continue
		}
		if err := f.writeStored(zeros[:n], f.journalOff(s)); err != nil {
			return err
		}
	}
	return nil
}

// inPlaceOK reports whether block idx of a file of size plaintext bytes
// reads back (a block past the end counts as fine: nothing to repair).
func (f File) inPlaceOK(idx uint64, size int64) bool {
	if f.C.Layout().BlockPlainLen(idx, size) == 0 {
		return true
	}
	bp := getBuf(int(f.C.Layout().BlockSize))
	defer putBuf(bp)
	_, err := f.readBlock((*bp)[:0], idx, size)
	return err == nil
}

// journalFor returns the journal record of block idx, if one
// authenticates: the read path's repair on a read-only mount.
func (f File) journalFor(idx uint64, storedSize int64) (journalRec, bool) {
	recs, err := f.readJournal(storedSize)
	if err != nil {
		return journalRec{}, false
	}
	for _, r := range recs {
		if r.idx == idx {
			return r, true
		}
	}
	return journalRec{}, false
}
