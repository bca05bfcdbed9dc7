package blockfile

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// Whoever can write CIPHERDIR can rearrange a file's own bytes: cut it,
// copy any aligned chunk of it over another, or write back the header of
// a journal record it saw cleared. TestOwnBytesGiveTruthOrError checks,
// over files with a history of overwrites, shrinks, extends, appends and
// grows, that every such manipulation leaves a file that reads as its
// true bytes, fails (EIO), or is empty: on a read-only mount (reads
// consult the journal) and on a writable one (Settle first).
//
// Chunks are B bytes aligned to B: a stored block is B+40 bytes, so no
// one chunk can zero a whole stored block, which would read as a hole
// (docs/THREAT_MODEL.md says so).
func TestOwnBytesGiveTruthOrError(t *testing.T) {
	const bs = 512
	rng := rand.New(rand.NewPCG(11, 13))
	cases := 0
	for h := range 24 {
		f, m, want := fileWithHistory(t, rng, bs)
		stored := m.Bytes()
		check := func(what string, tampered []byte) {
			t.Helper()
			cases++
			checkTruthOrError(t, f.C, tampered, want, fmt.Sprintf("history %d: %s", h, what))
		}
		for c := 0; c < len(stored); c++ {
			check(fmt.Sprintf("cut at %d", c), stored[:c])
		}
		for src := 0; src+bs <= len(stored); src += bs {
			for dst := 0; dst+bs <= len(stored); dst += bs {
				if src == dst {
					continue
				}
				b := bytes.Clone(stored)
				copy(b[dst:dst+bs], stored[src:src+bs])
				check(fmt.Sprintf("chunk %d over %d", src, dst), b)
			}
		}
		for _, b := range rearmed(f.C.Layout(), stored) {
			check("re-armed journal record", b)
		}
	}
	t.Logf("%d manipulations checked", cases)
}

// fileWithHistory writes a file through a random history of changes and
// returns it with its true plaintext.
func fileWithHistory(t *testing.T, rng *rand.Rand, bs int64) (File, *MemStore, []byte) {
	return fileWithHistoryV(t, rng, blockcipher.Version2, bs)
}

func fileWithHistoryV(t *testing.T, rng *rand.Rand, version uint16, bs int64) (File, *MemStore, []byte) {
	f, m := newTestFileV(t, version, int(bs))
	var want model
	size := int64(0)
	for range 12 {
		var err error
		switch op := rng.IntN(5); {
		case op == 0 || size == 0: // append
			p := randBytes(1 + rng.IntN(int(2*bs)))
			size, err = f.WriteAt(p, size, size)
			want.write(p, int64(len(want)))
		case op == 1: // overwrite inside
			off := rng.Int64N(size)
			p := randBytes(1 + rng.IntN(int(min(size-off, 2*bs))))
			size, err = f.WriteAt(p, off, size)
			want.write(p, off)
		case op == 2: // extend from inside
			off := rng.Int64N(size)
			p := randBytes(int(size-off) + 1 + rng.IntN(int(bs)))
			size, err = f.WriteAt(p, off, size)
			want.write(p, off)
		case op == 3: // shrink
			to := rng.Int64N(size)
			err = f.Truncate(size, to)
			size = to
			want.truncate(to)
		default: // grow
			to := size + 1 + rng.Int64N(2*bs)
			err = f.Truncate(size, to)
			size = to
			want.truncate(to)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if size == 0 {
		p := randBytes(int(bs) + 3)
		if size, _ = f.WriteAt(p, 0, 0); size == 0 {
			t.Fatal("write failed")
		}
		want.write(p, 0)
	}
	return f, m, want
}

// rearmed returns copies of stored in which a journal record header is
// written back into a slot, in the format of this kmsfs with a MAC it
// cannot compute and in the format of a kmsfs without MACs, for every
// block and flag; with that block damaged in place, so the record would
// be used, and also with the file cut after that block.
func rearmed(l blockcipher.Layout, stored []byte) [][]byte {
	var out [][]byte
	blocks := (int64(len(stored)) - l.DataOff() + l.StoredBlockSize() - 1) / l.StoredBlockSize()
	for slot := range int64(blockcipher.JournalSlots) {
		at := l.HeaderSize + slot*l.JournalSlotSize()
		for idx := range blocks {
			for _, last := range []bool{false, true} {
				for _, format := range []int{1, 2} {
					b := bytes.Clone(stored)
					h := b[at : at+recHeaderSize]
					binary.BigEndian.PutUint64(h, uint64(idx)+1)
					binary.BigEndian.PutUint32(h[8:], uint32(l.StoredBlockSize()))
					binary.BigEndian.PutUint32(h[12:], 0)
					h[16] = 0
					if last {
						h[16] = 1
					}
					if format == 2 {
						h[16] |= recVersion2
						copy(h[recMACOff:], bytes.Repeat([]byte{0x5a}, blockcipher.RecordMACSize))
					}
					blk := l.BlockToCipherOff(uint64(idx))
					b[blk+20] ^= 1
					out = append(out, b)
					if end := blk + l.StoredBlockSize(); end < int64(len(b)) {
						out = append(out, b[:end])
					}
				}
			}
		}
	}
	return out
}

// checkTruthOrError reads tampered as a read-only mount would (through the
// journal) and as a writable one would (after Settle): each read must
// fail, or give exactly want, or find an empty file.
func checkTruthOrError(t *testing.T, c *blockcipher.Cipher, tampered, want []byte, what string) {
	t.Helper()
	for _, settle := range []bool{false, true} {
		m := NewMemStore(tampered)
		f := File{C: c, S: m}
		if settle {
			if _, err := f.Settle(m.Size()); err != nil {
				continue // a refusal is fine
			}
		}
		size, err := c.Layout().PlainSize(m.Size())
		if err != nil && size == 0 {
			continue
		}
		if size == 0 && err == nil {
			continue // an empty file
		}
		got := make([]byte, size)
		n, rerr := f.ReadAt(got, 0, size)
		if rerr != nil && n < len(got) || err != nil {
			continue // EIO
		}
		if rerr == nil && bytes.Equal(got, want) {
			continue
		}
		t.Fatalf("%s (settled %v): read %d bytes without an error, but not the true %d bytes", what, settle, size, len(want))
	}
}

// TestReadAtProbeIsReadAt: a read that learns the size from where the
// stored file ends gives what a read told the size gives (the same bytes,
// io.EOF, or an error), on intact files, files cut anywhere, padded with
// 1 to 30 bytes, with a block tampered with, and with re-armed journal
// records. Where it read nothing it says so, and the caller reads with
// the size.
func TestReadAtProbeIsReadAt(t *testing.T) {
	const bs = 512
	rng := rand.New(rand.NewPCG(17, 19))
	cases := 0
	for i := range 4 {
		version := []uint16{blockcipher.Version1, blockcipher.Version2}[i%2]
		f, m, _ := fileWithHistoryV(t, rng, version, bs)
		stored := m.Bytes()
		var variants [][]byte
		variants = append(variants, stored)
		for c := 0; c < len(stored); c += 1 + rng.IntN(40) {
			variants = append(variants, stored[:c])
		}
		for pad := 1; pad <= int(f.C.Layout().Overhead())+2; pad++ {
			variants = append(variants, append(bytes.Clone(stored), randBytes(pad)...))
			variants = append(variants, append(bytes.Clone(stored), make([]byte, pad)...))
		}
		for i := 0; i < 8; i++ {
			b := bytes.Clone(stored)
			b[f.C.Layout().DataOff()+rng.Int64N(int64(len(b))-f.C.Layout().DataOff())] ^= 1
			variants = append(variants, b)
		}
		variants = append(variants, rearmed(f.C.Layout(), stored)...)
		for _, v := range variants {
			size, _ := f.C.Layout().PlainSize(int64(len(v)))
			offs := []int64{0, 1, bs - 1, bs, bs + 1, size - bs - 1, size - bs, size - 1, size, size + 1, size + bs, rng.Int64N(size + 1)}
			lens := []int{1, bs - 1, bs, bs + 1, 3*bs + 7, 128 << 10}
			for _, off := range offs {
				if off < 0 {
					continue
				}
				for _, n := range lens {
					cases++
					checkProbe(t, File{C: f.C, S: NewMemStore(v)}, int64(len(v)), off, n)
				}
			}
		}
	}
	t.Logf("%d reads compared", cases)
}

func checkProbe(t *testing.T, f File, stored, off int64, n int) {
	t.Helper()
	sized := func(p []byte) (int, error) {
		size, err := f.C.Layout().PlainSize(stored)
		if err != nil && off >= size {
			return 0, err
		}
		return f.ReadAt(p, off, size)
	}
	want := make([]byte, n)
	wn, werr := sized(want)
	got := make([]byte, n)
	gn, gerr := f.ReadAtProbe(got, off)
	if gerr == ErrSizeUnknown {
		if s, _ := f.C.Layout().PlainSize(stored); off < s {
			t.Fatalf("stored %d, read %d at %d: ErrSizeUnknown inside the file", stored, n, off)
		}
		gn, gerr = sized(got)
	}
	class := func(err error) string {
		switch {
		case err == nil:
			return "nil"
		case err == io.EOF:
			return "EOF"
		}
		return "error"
	}
	if gn != wn || class(gerr) != class(werr) || !bytes.Equal(got[:gn], want[:wn]) {
		t.Fatalf("stored %d, read %d at %d: probe %d bytes, %v; sized %d bytes, %v", stored, n, off, gn, gerr, wn, werr)
	}
}
