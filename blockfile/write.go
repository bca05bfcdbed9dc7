package blockfile

import (
	"fmt"
	"io"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// reserve preallocates the stored extents of the given blocks of a file
// of (new) plaintext size size, and the journal area, before anything is
// written: a full disk then fails the change before it touches a byte.
// Blocks not listed (holes being skipped) stay unallocated.
func (f File) reserve(size int64, journal bool, blocks ...[2]uint64) error {
	p, ok := f.S.(Preallocator)
	if !ok {
		return nil
	}
	l := f.C.Layout()
	if journal {
		if err := p.Preallocate(l.HeaderSize, l.JournalSize()); err != nil {
			return err
		}
	}
	for _, b := range blocks {
		from, to := b[0], b[1] // inclusive
		start := l.BlockToCipherOff(from)
		end := l.BlockToCipherOff(to) + max(l.BlockPlainLen(to, size), 1) + l.Overhead()
		if to < l.BlockCount(size)-1 {
			end = l.BlockToCipherOff(to + 1)
		}
		if err := p.Preallocate(start, end-start); err != nil {
			return err
		}
	}
	return nil
}

func (f File) writeStored(b []byte, off int64) error {
	n, err := f.S.WriteAt(b, off)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// sealAt seals plain as block idx and writes it, padded with zeros to pad
// stored bytes when pad is larger.
func (f File) sealAt(plain []byte, idx uint64, last bool, pad int) error {
	sb := getBuf(max(len(plain)+int(f.C.Layout().Overhead()), pad))
	defer putBuf(sb)
	out := f.C.SealBlock(*sb, plain, idx, last)
	if len(out) < pad {
		out = append(out, zeros[:pad-len(out)]...)
	}
	*sb = out
	return f.writeStored(out, f.C.Layout().BlockToCipherOff(idx))
}

// WriteAt writes p at plaintext offset off into a file of size plaintext
// bytes and returns the new size. Writing past the end leaves a hole:
// blocks that are never written stay sparse and read as zeros.
//
// A write that starts in or past the final block F and extends the file
// is done by extend. One that starts before F and extends it takes these
// steps, each leaving a readable file if the process dies after it (and,
// through the journal, if it dies during it):
//
//	if F is partial: F zero-padded to a full block, still sealed final
//	  (journaled);
//	the new blocks past the old end, the last sealed final;
//	the blocks of the old file the write covers, F now sealed as a middle
//	  block (partial first and last blocks journaled).
func (f File) WriteAt(p []byte, off, size int64) (int64, error) {
	if off < 0 || off > blockcipher.MaxPlainSize-int64(len(p)) {
		return size, fmt.Errorf("blockfile: write at %d+%d: %w", off, len(p), ErrOutOfRange)
	}
	if len(p) == 0 {
		return size, nil
	}
	l := f.C.Layout()
	bs := l.BlockSize
	end := off + int64(len(p))
	newSize := max(size, end)
	oldLast := f.lastBlock(size)
	first, count := l.Span(off, int64(len(p)))
	last := first + count - 1
	if end > size && oldLast >= 0 && first >= uint64(oldLast) {
		// Every write of an appending writer (cp, dd, tar, a log).
		return f.extend(p, off, size)
	}
	if end > size && oldLast >= 0 {
		// A write that starts before the final block and extends the
		// file. Reserve the space it needs before changing anything,
		// so a full disk refuses it cleanly. (Overwriting allocated
		// blocks needs no new space; a journal record that does not
		// fit fails before its block is touched; a file with no block
		// yet needs no reservation: a write cut short is undone by
		// cutting the file back, see writeRun.)
		if err := f.reserve(newSize, true, [2]uint64{first, last}); err != nil {
			return size, err
		}
	}
	if end <= size || int64(last) == oldLast {
		// Within the old blocks (perhaps growing the final one).
		return newSize, f.writeRun(p, off, first, last, size, newSize)
	}

	// Extending past the old final block F = oldLast.
	if oldLast >= 0 && l.BlockPlainLen(uint64(oldLast), size) < bs {
		pb := getBuf(int(bs))
		b, err := f.readBlock((*pb)[:0], uint64(oldLast), size)
		if err == nil {
			b = append(b, zeros[:bs-int64(len(b))]...)
			*pb = b
			err = f.rewrite(uint64(oldLast), b, true, 0)
		}
		putBuf(pb)
		if err != nil {
			return size, err
		}
		size = l.BlockToPlainOff(uint64(oldLast) + 1)
	}
	// The new blocks, past the old end.
	newFirst := first
	if oldLast >= 0 {
		newFirst = max(first, uint64(oldLast)+1)
	}
	newOff := max(off, l.BlockToPlainOff(newFirst))
	if err := f.writeRun(p[newOff-off:], newOff, newFirst, last, size, newSize); err != nil {
		return size, err
	}
	if oldLast < 0 {
		return newSize, nil
	}
	// The old blocks the write covers, F now a middle block.
	return newSize, f.writeRun(p[:newOff-off], off, first, uint64(oldLast), size, newSize)
}

// extend writes p at off into a file of size plaintext bytes that has a
// final block F, where the write starts in or past F and ends past the old
// end. Unless ReserveAppends is set it reserves no space (fallocate),
// which on ext4 would allocate every append's blocks at once, scattering a
// file written in pieces over many extents that writeback cannot merge.
// A full disk still fails it before any old byte changes: every step that
// can need new space either lies past the old end or comes before F is
// touched, and is undone by cutting the file back:
//
//  1. the new blocks past F, the last sealed final; a full disk cuts them
//     off again (writeRun);
//  2. zeros from the old end to the end of F's new extent, so that F can
//     be rewritten in place without new space (a page-allocating or
//     delayed-allocation filesystem takes the space at this write); a
//     crash after it leaves F as "sealed final ‖ zeros", which reads as F
//     zero-padded (blockcipher.Cipher.openShortened; if F was full there are no zeros
//     and it reads as a middle block sealed as final);
//  3. F with the write's bytes, sealed as a middle block (or as final if
//     the write ends in F), through the journal if it keeps old bytes. A
//     journal record that does not fit (its page may be a hole) cuts the
//     file back; nothing of the old file has changed by then.
func (f File) extend(p []byte, off, size int64) (int64, error) {
	l := f.C.Layout()
	end := off + int64(len(p))
	oldEnd := l.CipherSize(size)
	fi := uint64(f.lastBlock(size))
	fStart := l.BlockToPlainOff(fi)
	first, count := l.Span(off, int64(len(p)))
	last := first + count - 1
	fLen := l.BlockPlainLen(fi, end) // F's plaintext length afterwards
	cut := func(err error) (int64, error) {
		f.S.Truncate(oldEnd)
		return size, err
	}

	// F's new plaintext: its old bytes, zeros to its new length, and the
	// write's bytes that fall in it. Read before anything changes.
	pb := getBuf(int(fLen))
	defer putBuf(pb)
	b, err := f.readBlock((*pb)[:0], fi, size)
	if err != nil {
		return size, err
	}
	b = append(b, zeros[:fLen-int64(len(b))]...)
	*pb = b
	if first == fi {
		copy(b[off-fStart:], p)
	}

	if f.ReserveAppends {
		blocks := [][2]uint64{{fi, fi}}
		if last > fi {
			blocks = append(blocks, [2]uint64{max(first, fi+1), last})
		}
		if err := f.reserve(end, true, blocks...); err != nil {
			return size, err
		}
	}
	if last > fi {
		newFirst := max(first, fi+1)
		newOff := max(off, l.BlockToPlainOff(newFirst))
		if err := f.writeRun(p[newOff-off:], newOff, newFirst, last, size, end); err != nil {
			return size, err // cut back by writeRun
		}
	}
	if fEnd := l.BlockToCipherOff(fi) + fLen + l.Overhead(); fEnd > oldEnd {
		if err := f.writeStored(zeros[:fEnd-oldEnd], oldEnd); err != nil {
			return cut(err)
		}
	}

	sb := getBuf(int(fLen + l.Overhead()))
	defer putBuf(sb)
	rec := journalRec{idx: fi, last: last == fi, stored: f.C.SealBlock(*sb, b, fi, last == fi)}
	*sb = rec.stored
	if first == fi && off == fStart {
		// The write replaces all of F's old bytes: if this write is
		// torn, only F fails, which the write replaces entirely.
		return end, f.putInPlace(rec, -1)
	}
	if err := f.writeJournal([]journalRec{rec}); err != nil {
		return cut(err)
	}
	if err := f.putInPlace(rec, -1); err != nil {
		return end, err
	}
	return end, f.clearJournal([]journalRec{rec})
}

// writeRun writes p at off, covering exactly blocks first..last, into a
// file of size plaintext bytes that becomes newSize bytes. Blocks that keep
// bytes of their old contents outside [off, off+len(p)) are journaled;
// blocks the write replaces entirely are not.
func (f File) writeRun(p []byte, off int64, first, last uint64, size, newSize int64) error {
	if len(p) == 0 {
		return nil
	}
	l := f.C.Layout()
	bs := l.BlockSize
	end := off + int64(len(p))
	newLast := f.lastBlock(newSize)
	runPlain := min(l.BlockToPlainOff(last+1), newSize) - l.BlockToPlainOff(first)
	count := last - first + 1
	sb := getBuf(int(runPlain + int64(count)*l.Overhead()))
	defer putBuf(sb)
	stored := *sb
	var recs []journalRec
	i := first
	for i <= last {
		bstart := l.BlockToPlainOff(i)
		blen := l.BlockPlainLen(i, newSize)
		lo, hi := max(off, bstart)-bstart, min(end, bstart+blen)-bstart
		if lo == 0 && hi == blen {
			// Whole blocks: extend to the longest fully covered run.
			j := i
			for j < last && l.BlockPlainLen(j+1, newSize) <= end-l.BlockToPlainOff(j+1) {
				j++
			}
			stored = f.C.SealRun(stored, p[bstart-off:min(end, l.BlockToPlainOff(j)+l.BlockPlainLen(j, newSize))-off], i, int64(j) == newLast)
			i = j + 1
			continue
		}
		// Partial block: merge with the old contents (zeros past the old
		// end).
		pb := getBuf(int(bs))
		merged, err := f.readBlock((*pb)[:0], i, size)
		if err != nil {
			putBuf(pb)
			return err
		}
		oldLen := int64(len(merged))
		if int64(len(merged)) < blen {
			merged = append(merged, zeros[:blen-int64(len(merged))]...)
		}
		merged = merged[:blen]
		copy(merged[lo:hi], p[bstart+lo-off:])
		at := len(stored)
		stored = f.C.SealBlock(stored, merged, i, int64(i) == newLast)
		if oldLen > 0 && (lo > 0 || hi < oldLen) {
			recs = append(recs, journalRec{idx: i, last: int64(i) == newLast, stored: stored[at:]})
		}
		*pb = merged
		putBuf(pb)
		i++
	}
	*sb = stored
	if len(recs) > 0 {
		if err := f.writeJournal(recs); err != nil {
			return err
		}
	}
	at := l.BlockToCipherOff(first)
	n, err := f.S.WriteAt(stored, at)
	if err == nil && n != len(stored) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if oldEnd := l.CipherSize(size); at >= oldEnd && size > 0 || size == 0 {
			// Only new blocks past the old end were being written (a
			// full disk, say): cut them off again.
			f.S.Truncate(min(oldEnd, at))
			return err
		}
		f.reHole(recs, at, n, first, last, size)
		return err
	}
	if len(recs) > 0 {
		return f.clearJournal(recs)
	}
	return nil
}

// reHole undoes the part of a torn in-place run (n of its bytes written at
// cipher offset at) that lies in a middle block the write replaces
// entirely and no journal record covers. On a filesystem that allocates
// on first write, a write into allocated blocks needs no new space, so a
// full disk can stop the run only in a hole: zeros over what was written
// of that block put the hole back, reading as the zeros it held. (Torn by
// anything else, the block was being replaced entirely and may fail.)
func (f File) reHole(recs []journalRec, at int64, n int, first, last uint64, size int64) {
	l := f.C.Layout()
	if n <= 0 {
		return
	}
	t := first + uint64(int64(n)/l.StoredBlockSize())
	if t > last || int64(t) >= f.lastBlock(size) {
		return
	}
	for _, r := range recs {
		if r.idx == t {
			return
		}
	}
	start := l.BlockToCipherOff(t)
	if end := at + int64(n); end > start {
		f.S.WriteAt(zeros[:end-start], start)
	}
}
