package blockfile

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// The journal makes a rewrite of a block that keeps older bytes atomic.
//
// A pwrite is not atomic: a SIGKILL (or a full disk) can stop it at any
// page boundary, and a stored block (B+28 or B+40 bytes) always spans two
// pages.
// A block torn that way fails its tag, and with it every byte it held,
// including bytes the write did not touch and that may have been fsynced
// long before. So before kmsfs rewrites such a block in place it writes
// the block's new stored form to a journal record (in the journal area
// between the header and block 0), and erases the record once the block
// is in place. A torn record fails its MAC or its tag and is ignored; a
// torn block is replaced by its record (Settle, or the read path on a
// read-only mount). Blocks a write replaces entirely, and new blocks past
// the old end, are not journaled: if the write is torn they are the blocks
// being written, and only they can fail.
//
// CIPHERDIR is not trusted, so a record counts only if its MAC, under a
// key derived from the file's data key, authenticates its every field and
// its block; and a record is erased whole (zeros over its header and its
// block), not just marked empty, so nothing left in the file can make a
// cleared record count again. Records without a MAC (written by kmsfs
// before journal record version 2) are never used.
//
// Record layout (docs/FORMAT.md, "Journal"):
//
//	0   uint64 block index + 1 (0: empty)
//	8   uint32 L, the stored block's length
//	12  uint32 P, the length to pad to with zeros when put in place (0: L)
//	16  uint8  0x20 (record version 2) | 1 if sealed as the final block
//	17  [16]   MAC over bytes 0..16, the block's nonce and its tag
//	33  [L]    the stored block
const (
	recHeaderSize = 33
	recVersion2   = 0x20
	recLastFlag   = 0x01
	recMACOff     = 17
)

// The record header must fit the slot the layout reserves for it
// (blockcipher.Layout.JournalSlotSize; TestJournalSlotsHoldRecords).
const _ = uint(blockcipher.JournalRecordHeader - recHeaderSize)

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

// encodeRecord writes r's header, MAC included, into b[:recHeaderSize].
func (f File) encodeRecord(b []byte, r journalRec) {
	binary.BigEndian.PutUint64(b, r.idx+1)
	binary.BigEndian.PutUint32(b[8:], uint32(len(r.stored)))
	binary.BigEndian.PutUint32(b[12:], uint32(r.padTo))
	b[16] = recVersion2
	if r.last {
		b[16] |= recLastFlag
	}
	mac := f.recordMAC(b[:recMACOff], r.stored)
	copy(b[recMACOff:], mac[:])
}

// recordMAC authenticates a record's fields and, through the block's
// nonces (12 bytes in a Version1 block, 24 in a Version2 one) and GCM
// tag (which bind its ciphertext), its block.
func (f File) recordMAC(fields, stored []byte) [blockcipher.RecordMACSize]byte {
	return f.C.RecordMAC([]byte("kmsfs journal record v2\x00"), fields,
		stored[:f.C.Layout().Overhead()-blockcipher.TagSize], stored[len(stored)-blockcipher.TagSize:])
}

// writeJournal writes recs to slots 0.. in one write.
func (f File) writeJournal(recs []journalRec) error {
	l := f.C.Layout()
	n := int(l.JournalSlotSize())*(len(recs)-1) + recHeaderSize + len(recs[len(recs)-1].stored)
	bp := getBuf(n)
	defer putBuf(bp)
	b := (*bp)[:n]
	clear(b)
	for i, r := range recs {
		o := i * int(l.JournalSlotSize())
		f.encodeRecord(b[o:], r)
		copy(b[o+recHeaderSize:], r.stored)
	}
	return f.writeStored(b, f.journalOff(0))
}

// clearJournal erases recs, just written to slots 0.., once their blocks
// are in place: zeros over every byte they used, in one write from the
// start of slot 0, so a clear cut short erases the first header first.
// (The pages stay allocated: a journal that does not need new space
// cannot fail for lack of it later.)
func (f File) clearJournal(recs []journalRec) error {
	n := int(f.C.Layout().JournalSlotSize())*(len(recs)-1) + recHeaderSize + len(recs[len(recs)-1].stored)
	return f.writeStored(zeros[:n], f.journalOff(0))
}

// readJournal returns the records that authenticate: MAC, then block at
// its index with its flag. Torn, erased, forged and older-format records
// are left out; ignored counts the slots that held something other than a
// counting record. It needs the stored size only to skip files too short
// to have a journal.
func (f File) readJournal(storedSize int64) (recs []journalRec, ignored int, err error) {
	err = f.scanJournal(storedSize, func(_ int, r journalRec, ok bool) {
		if ok {
			recs = append(recs, r)
		} else {
			ignored++
		}
	})
	return recs, ignored, err
}

// scanJournal calls visit for every slot whose record header holds a
// non-zero byte, with the record and whether it authenticates (a header
// cut short by the end of the file does not).
func (f File) scanJournal(storedSize int64, visit func(slot int, r journalRec, ok bool)) error {
	l := f.C.Layout()
	if storedSize <= l.HeaderSize {
		return nil
	}
	for s := 0; s < blockcipher.JournalSlots; s++ {
		var h [recHeaderSize]byte
		n, err := f.S.ReadAt(h[:], f.journalOff(s))
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if isZero(h[:n]) {
			continue
		}
		if n < len(h) {
			visit(s, journalRec{}, false)
			continue
		}
		r, ok, err := f.parseRecord(s, h)
		if err != nil {
			return err
		}
		visit(s, r, ok)
	}
	return nil
}

// parseRecord checks the record of slot s, whose header is h, and reads
// its block. ok is false for anything that does not authenticate.
func (f File) parseRecord(s int, h [recHeaderSize]byte) (r journalRec, ok bool, err error) {
	l := f.C.Layout()
	idx1 := binary.BigEndian.Uint64(h[:])
	size := int64(binary.BigEndian.Uint32(h[8:]))
	padTo := int(binary.BigEndian.Uint32(h[12:]))
	flags := h[16]
	if idx1 == 0 || flags&^recLastFlag != recVersion2 || size <= l.Overhead() || size > l.StoredBlockSize() ||
		padTo > int(l.StoredBlockSize()) || idx1-1 > uint64(blockcipher.MaxPlainSize/l.BlockSize) {
		return r, false, nil
	}
	stored := make([]byte, size)
	if n, err := f.S.ReadAt(stored, f.journalOff(s)+recHeaderSize); n < len(stored) {
		if err == nil || errors.Is(err, io.EOF) {
			return r, false, nil
		}
		return r, false, err
	}
	mac := f.recordMAC(h[:recMACOff], stored)
	if subtle.ConstantTimeCompare(mac[:], h[recMACOff:]) != 1 {
		return r, false, nil // torn, forged, or of another file
	}
	r = journalRec{idx: idx1 - 1, last: flags&recLastFlag != 0, stored: stored, padTo: padTo}
	if _, err := f.C.OpenBlockExact(nil, stored, r.idx, r.last); err != nil {
		return r, false, nil
	}
	return r, true, nil
}

// rewrite atomically replaces block idx, which holds bytes that must
// survive, by plain sealed with last, padded with zeros to padTo stored
// bytes: journal record, block in place, journal erased.
func (f File) rewrite(idx uint64, plain []byte, last bool, padTo int) error {
	sb := getBuf(max(len(plain)+int(f.C.Layout().Overhead()), padTo))
	defer putBuf(sb)
	stored := f.C.SealBlock(*sb, plain, idx, last)
	*sb = stored
	recs := []journalRec{{idx: idx, last: last, stored: stored, padTo: padTo}}
	if err := f.writeJournal(recs); err != nil {
		return err
	}
	if err := f.putInPlace(recs[0], -1); err != nil {
		return err
	}
	return f.clearJournal(recs)
}

// putInPlace writes a record's block at its place, padded with zeros to
// its padTo but, when storedSize is not -1, not past the end of the stored
// file of storedSize bytes: its padding never makes a file longer. The
// block itself may, where the record finishes a rewrite that grew the
// final block (a truncate growing the file inside it) and was torn in
// place before the file grew (found by FuzzReadJournal).
func (f File) putInPlace(r journalRec, storedSize int64) error {
	at := f.C.Layout().BlockToCipherOff(r.idx)
	padTo := r.padTo
	if storedSize >= 0 {
		padTo = int(min(int64(padTo), max(storedSize-at, 0)))
	}
	b := r.stored
	if padTo > len(b) {
		bp := getBuf(padTo)
		defer putBuf(bp)
		b = append(append((*bp)[:0], b...), zeros[:padTo-len(b)]...)
	}
	return f.writeStored(b, at)
}

// JournalPending reports whether the journal holds anything: a file not
// closed cleanly, which Settle must see to before it is changed. It reads
// the record headers only, and counts any byte in them, as Settle and
// Journal do.
func (f File) JournalPending(storedSize int64) (bool, error) {
	if storedSize <= f.C.Layout().HeaderSize {
		return false, nil
	}
	for s := 0; s < blockcipher.JournalSlots; s++ {
		var h [recHeaderSize]byte
		n, err := f.S.ReadAt(h[:], f.journalOff(s))
		if err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		if !isZero(h[:n]) {
			return true, nil
		}
	}
	return false, nil
}

// JournalSlot is what one slot of the journal holds (File.Journal).
type JournalSlot struct {
	Slot int
	// Valid: the record authenticates (its MAC, and its block at its
	// index): a block rewrite kmsfs began. Otherwise the slot holds
	// bytes no read uses: a record torn on its way in, damage, or a
	// forgery. Settle erases both kinds.
	Valid bool
	Block uint64 // the block a Valid record rewrites
	// Torn: the Valid record's block does not read back in place, so the
	// rewrite was cut short; reads use the record until Settle puts it
	// in place. Otherwise the rewrite finished and the record is left
	// over.
	Torn bool
}

// Journal describes every journal slot that holds something, without
// changing anything: what Settle would finish or erase. A file closed
// cleanly has none.
func (f File) Journal(storedSize int64) ([]JournalSlot, error) {
	size, _ := f.C.Layout().PlainSize(storedSize)
	var out []JournalSlot
	err := f.scanJournal(storedSize, func(s int, r journalRec, ok bool) {
		js := JournalSlot{Slot: s, Valid: ok}
		if ok {
			js.Block = r.idx
			js.Torn = !f.inPlaceOK(r.idx, size)
		}
		out = append(out, js)
	})
	return out, err
}

// HeadLen is how many bytes at the start of a stored file hold its header
// slot and the headers of its journal records: an open that reads them in
// one read learns its header and, with PendingInHead, whether the journal
// holds anything.
func HeadLen(l blockcipher.Layout) int64 {
	return l.HeaderSize + int64(blockcipher.JournalSlots-1)*l.JournalSlotSize() + recHeaderSize
}

// PendingInHead is JournalPending answered from head, the first
// min(HeadLen, stored size) bytes of the stored file.
func PendingInHead(l blockcipher.Layout, head []byte) bool {
	for s := 0; s < blockcipher.JournalSlots; s++ {
		off := min(l.HeaderSize+int64(s)*l.JournalSlotSize(), int64(len(head)))
		end := min(off+recHeaderSize, int64(len(head)))
		if !isZero(head[off:end]) {
			return true
		}
	}
	return false
}

// SettleResult says what Settle did.
type SettleResult struct {
	// Repaired lists the blocks put back from their records: their
	// rewrite had been torn.
	Repaired []uint64
	// Ignored counts records that did not authenticate (torn while being
	// written, damaged, forged, or from a kmsfs before journal record
	// version 2) and were erased unused.
	Ignored int
}

// Settle finishes what a crash left in the journal: a record whose block
// does not authenticate in place (the rewrite was torn) is put in place; a
// record whose block does is dropped (the rewrite either finished or never
// started; both are valid). Then the journal is erased. Call it before the
// first change of a file, under the same lock as WriteAt.
func (f File) Settle(storedSize int64) (SettleResult, error) {
	var res SettleResult
	pending, err := f.JournalPending(storedSize)
	if err != nil || !pending {
		return res, err
	}
	recs, ignored, err := f.readJournal(storedSize)
	if err != nil {
		return res, err
	}
	res.Ignored = ignored
	size, _ := f.C.Layout().PlainSize(storedSize)
	for _, r := range recs {
		if f.inPlaceOK(r.idx, size) {
			continue
		}
		if err := f.putInPlace(r, storedSize); err != nil {
			return res, err
		}
		res.Repaired = append(res.Repaired, r.idx)
	}
	return res, f.erasePending()
}

// erasePending zeroes what every slot holds: its header and as much of a
// block as the slot holds, from the first non-zero byte to the last, so a
// record torn on its way in is erased without writing over the hole that
// may follow it (which on a full disk would need space there is not).
func (f File) erasePending() error {
	l := f.C.Layout()
	bp := getBuf(int(l.JournalSlotSize()))
	defer putBuf(bp)
	for s := 0; s < blockcipher.JournalSlots; s++ {
		b := (*bp)[:l.JournalSlotSize()]
		n, err := f.S.ReadAt(b, f.journalOff(s))
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		b = b[:n]
		lo := 0
		for lo < len(b) && b[lo] == 0 {
			lo++
		}
		hi := len(b)
		for hi > lo && b[hi-1] == 0 {
			hi--
		}
		if lo == hi {
			continue
		}
		if err := f.writeStored(zeros[:hi-lo], f.journalOff(s)+int64(lo)); err != nil {
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
	recs, _, err := f.readJournal(storedSize)
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
