package blockfile

import (
	"errors"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// How far Authentic looks before it gives up: blocks that are not holes
// tried, and stored bytes read. A crash during an append leaves at most
// the new blocks of one write failing at the end of a file (FORMAT.md,
// "Crash consistency"); a file whose last thousand written blocks all fail
// is damaged or not this key's file.
const (
	authenticTries = 1024
	authenticScan  = 64 << 20
)

// Authentic reports whether some block of a file of size plaintext bytes
// authenticates under f's key at its own index, looking from the final
// block back, and which. A hole (a block of zeros) does not count, and
// neither does a journal record: only a block sealed under the key for
// that very place. It gives up, reporting false, after authenticTries
// blocks that are not holes or authenticScan stored bytes.
//
// A writer uses it before writing under a key it found in a header whose
// final block fails: the tail torn by a crash during an append fails, the
// blocks before it do not; behind a header put in front of another
// file's garbage, none does.
func (f File) Authentic(size int64) (idx uint64, ok bool, err error) {
	l := f.C.Layout()
	last := f.lastBlock(size)
	sb := getBuf(int(l.StoredBlockSize()))
	defer putBuf(sb)
	pb := getBuf(int(l.BlockSize))
	defer putBuf(pb)
	tries, scanned := 0, int64(0)
	for i := last; i >= 0 && tries < authenticTries && scanned < authenticScan; i-- {
		idx := uint64(i)
		stored := (*sb)[:l.BlockPlainLen(idx, size)+l.Overhead()]
		scanned += int64(len(stored))
		if err := f.readStored(stored, l.BlockToCipherOff(idx), idx); err != nil {
			var be *blockcipher.BlockError
			if errors.As(err, &be) {
				continue // cut short: not this block
			}
			return 0, false, err
		}
		if isZero(stored) {
			continue
		}
		tries++
		out, err := f.C.OpenBlock((*pb)[:0], stored, idx, i == last)
		clear(out)
		if err == nil {
			return idx, true, nil
		}
	}
	return 0, false, nil
}
