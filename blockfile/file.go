package blockfile

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// Store is the stored (cipher) form of one file: its header slot followed by
// its blocks. *os.File satisfies it.
type Store interface {
	io.ReaderAt
	io.WriterAt
	Truncate(cipherSize int64) error
}

// Preallocator is implemented by stores that can reserve space before a
// write (fallocate with FALLOC_FL_KEEP_SIZE), so that a full disk fails the
// write before any stored byte changes rather than half-way through.
type Preallocator interface {
	Preallocate(cipherOff, length int64) error
}

// File reads and writes the plaintext of one stored file at any offset and
// length. It keeps no state: the caller passes the current plaintext size
// (from the stored size, blockcipher.Layout.PlainSize) and must serialise calls that
// change the file (WriteAt, Truncate) against each other and against ReadAt
// on the same file, e.g. with a per-inode lock. The header must already be
// in the store.
//
// Every change is ordered so that a process killed between any two of its
// stored writes leaves a file that reads back without authentication errors
// (old bytes, new bytes, or zeros in the part being extended or truncated);
// docs/FORMAT.md, "Crash consistency", lists the steps. A change that
// fails part-way (a full disk, say) is treated the same way: call Settle
// before the next change, since a block it rewrote may read only through
// its journal record, which the next change would overwrite.
type File struct {
	C *blockcipher.Cipher
	S Store

	// ReserveAppends makes an append reserve its space (Preallocator)
	// before it changes anything, as every other extension does. Set it
	// unless the store is known to rewrite allocated bytes in place
	// without needing new space (ext4, XFS, tmpfs): on a copy-on-write
	// filesystem (btrfs, ZFS) an append's in-place rewrite of the final
	// block can run out of space half-way. See extend.
	ReserveAppends bool
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 256<<10); return &b }}

func getBuf(n int) *[]byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, 0, n)
	}
	*bp = (*bp)[:0]
	return bp
}

func putBuf(bp *[]byte) {
	if cap(*bp) <= 4<<20 {
		bufPool.Put(bp)
	}
}

// lastBlock returns the index of the final block of a plaintext of size
// bytes, or -1 for an empty plaintext.
func (f File) lastBlock(size int64) int64 {
	return int64(f.C.Layout().BlockCount(size)) - 1
}

// readStored reads exactly len(b) stored bytes at off; a short read means
// the stored file is shorter than its size promised (blockcipher.ErrTruncated).
func (f File) readStored(b []byte, off int64, blockIdx uint64) error {
	n, err := f.S.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return &blockcipher.BlockError{Block: blockIdx, Err: &blockcipher.FormatError{Field: "block", Err: blockcipher.ErrTruncated, Msg: "stored file ends early"}}
	}
	return err
}

// readBlock appends the plaintext of block idx of a plaintext of size bytes
// to dst (nothing if the block is past the end), from its place.
func (f File) readBlock(dst []byte, idx uint64, size int64) ([]byte, error) {
	l := f.C.Layout()
	plen := l.BlockPlainLen(idx, size)
	if plen == 0 {
		return dst, nil
	}
	sb := getBuf(int(plen + l.Overhead()))
	defer putBuf(sb)
	stored := (*sb)[:plen+l.Overhead()]
	if err := f.readStored(stored, l.BlockToCipherOff(idx), idx); err != nil {
		return dst, err
	}
	return f.C.OpenBlock(dst, stored, idx, int64(idx) == f.lastBlock(size))
}

// ReadAt reads up to len(p) plaintext bytes at off from a file of size
// plaintext bytes. It returns io.EOF at or past the end, like io.ReaderAt.
// A block that fails authentication fails the whole read with a
// *blockcipher.BlockError wrapping blockcipher.ErrAuth; no byte of it reaches p. (A block torn by
// a crash is read from its journal record, which Settle would have put in
// place on a writable mount.)
func (f File) ReadAt(p []byte, off, size int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blockfile: read at %d: %w", off, ErrOutOfRange)
	}
	if off >= size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	if n == 0 {
		return 0, nil
	}
	l := f.C.Layout()
	first, count := l.Span(off, int64(n))
	last := first + count - 1
	cipherOff := l.BlockToCipherOff(first)
	cipherEnd := min(l.BlockToCipherOff(last+1), l.CipherSize(size))
	sb := getBuf(int(cipherEnd - cipherOff))
	defer putBuf(sb)
	stored := (*sb)[:cipherEnd-cipherOff]
	if err := f.readStored(stored, cipherOff, first); err != nil {
		return 0, err
	}
	return f.openRun(p[:n], off, size, first, last, stored, len(p))
}

// ErrSizeUnknown: ReadAtProbe read nothing (the read starts at or past
// the end of the stored file), so it cannot tell the size: call ReadAt
// with the size instead.
var ErrSizeUnknown = errors.New("blockfile: read past the stored file; its size is needed")

// probeLen is how many stored bytes past the blocks ReadAtProbe asks for:
// a block of at least Overhead()+1 bytes holds plaintext, so the blocks
// before it are whole middle blocks. (One byte would not do: a file cut at
// a block boundary and padded with 1 to Overhead() bytes would pass for an
// intact one.)
func probeLen(l blockcipher.Layout) int64 { return l.Overhead() + 1 }

// ReadAtProbe is ReadAt for a caller that does not know the size: in the
// same one read of the stored blocks under [off, off+len(p)) it asks for
// probeLen bytes more. If they are there, the blocks it read are middle
// blocks, whole; if the read ends early, the stored file ends there, and
// its size follows. The result is ReadAt's for that size: the same bytes,
// io.EOF at or past the end, and for a stored size no writer produces
// (its last 1 to Overhead() bytes), reads inside the readable part served and
// those at or past its end failed. A read that finds no stored byte at
// all returns ErrSizeUnknown. Like ReadAt, it must not run concurrently
// with a change of the file.
func (f File) ReadAtProbe(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blockfile: read at %d: %w", off, ErrOutOfRange)
	}
	if len(p) == 0 {
		return 0, nil
	}
	l := f.C.Layout()
	first, count := l.Span(off, int64(len(p)))
	last := first + count - 1
	cipherOff := l.BlockToCipherOff(first)
	want := l.BlockToCipherOff(last+1) - cipherOff + probeLen(l)
	sb := getBuf(int(want))
	defer putBuf(sb)
	buf := (*sb)[:want]
	got, err := f.S.ReadAt(buf, cipherOff)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	if int64(got) == want {
		// Plaintext follows block last: a size past it serves.
		return f.openRun(p, off, l.BlockToPlainOff(last+1)+1, first, last, buf[:want-probeLen(l)], len(p))
	}
	if got == 0 {
		return 0, ErrSizeUnknown
	}
	size, serr := l.PlainSize(cipherOff + int64(got))
	if off >= size {
		if serr != nil {
			return 0, serr
		}
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	first, count = l.Span(off, int64(n))
	last = first + count - 1
	cipherEnd := min(l.BlockToCipherOff(last+1), l.CipherSize(size))
	return f.openRun(p[:n], off, size, first, last, buf[:cipherEnd-cipherOff], len(p))
}

// openRun decrypts stored, the stored blocks first..last of a file of
// size plaintext bytes, into p (n bytes at off; asked is the length the
// caller asked for, for io.EOF), patching a block that fails from its
// journal record where one fits.
func (f File) openRun(p []byte, off, size int64, first, last uint64, stored []byte, asked int) (int, error) {
	l := f.C.Layout()
	n := len(p)
	endsFile := int64(last) == f.lastBlock(size)
	runStart := l.BlockToPlainOff(first)
	aligned := runStart == off && (n%int(l.BlockSize) == 0 || off+int64(n) == size)
	var plain []byte
	var pb *[]byte
	if aligned {
		plain = p[:0] // decrypt straight into p
	} else {
		pb = getBuf(len(stored))
		defer putBuf(pb)
		plain = (*pb)[:0]
	}
	for tries := 0; ; tries++ {
		out, err := f.C.OpenRun(plain, stored, first, endsFile)
		if err == nil {
			plain = out
			break
		}
		var be *blockcipher.BlockError
		if tries >= blockcipher.JournalSlots || !errors.As(err, &be) {
			return 0, err
		}
		if !f.patchFromJournal(stored, first, be.Block, size) {
			return 0, err
		}
	}
	if !aligned {
		copy(p[:n], plain[off-runStart:])
	}
	if n < asked {
		return n, io.EOF
	}
	return n, nil
}

// patchFromJournal replaces failing block idx in a run of stored blocks by
// its journal record, if one authenticates and fits the block's place: a
// record of the block's stored length, or that of a shrink torn in place,
// the block re-sealed as final at its new length with zeros over the rest
// of its old extent (docs/FORMAT.md, "Shortened final block").
func (f File) patchFromJournal(stored []byte, first, idx uint64, size int64) bool {
	l := f.C.Layout()
	r, ok := f.journalFor(idx, l.CipherSize(size))
	if !ok {
		return false
	}
	want := int(l.BlockPlainLen(idx, size) + l.Overhead())
	at := int(idx-first) * int(l.StoredBlockSize())
	switch {
	case len(r.stored) == want:
		copy(stored[at:], r.stored)
	case r.padTo == want && len(r.stored) < want && r.last:
		copy(stored[at:], r.stored)
		clear(stored[at+len(r.stored) : at+want])
	default:
		return false
	}
	return true
}

// ErrOutOfRange: an offset or size below 0 or past
// blockcipher.MaxPlainSize, the largest plaintext a file may hold.
var ErrOutOfRange = errors.New("offset or size out of range")

// zeros backs hole reads and padding; untouched, it costs no memory.
var zeros [blockcipher.MaxBlockSize]byte

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
