package blockfile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// FuzzReadJournal feeds arbitrary bytes to the journal reader and to
// Settle, as a file whose bytes after its header anyone who can write
// CIPHERDIR chose: neither may panic, and every record the reader returns
// must authenticate (MAC, then its block at its index).
func FuzzReadJournal(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(journalVectorDirs[blockcipher.Version2], "*"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		_, file := splitVector(f, b)
		f.Add(file[512:min(len(file), 512+10000)])
	}
	h := testHeader(f, 512, 4096)
	h.FileID = [blockcipher.IDSize]byte{1}
	slot, c, err := h.Seal(bytes.Repeat([]byte{0x6a}, blockcipher.DataKeySize))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, rest []byte) {
		m := NewMemStore(append(bytes.Clone(slot), rest...))
		jf := File{C: c, S: m}
		recs, _, err := jf.readJournal(m.Size())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if _, err := c.OpenBlockExact(nil, r.stored, r.idx, r.last); err != nil {
				t.Fatalf("readJournal returned a record whose block does not authenticate: %v", err)
			}
		}
		// Settle makes a file longer only by a record's own sealed block,
		// finishing the rewrite it records (a truncate growing the file
		// inside its final block, torn in place): never by padding, and
		// never past the end of a record that authenticates.
		size, longest := m.Size(), m.Size()
		for _, r := range recs {
			longest = max(longest, c.Layout().BlockToCipherOff(r.idx)+int64(len(r.stored)))
		}
		if _, err := jf.Settle(size); err != nil {
			t.Fatal(err)
		}
		if m.Size() > longest {
			t.Fatalf("Settle made the file longer than its records reach: %d to %d bytes (records to %d)", size, m.Size(), longest)
		}
		if pending, _ := jf.JournalPending(m.Size()); pending {
			t.Fatal("the journal is still pending after Settle")
		}
		// Whatever the bytes, Authentic names only a block that is not
		// a hole and that opens under the key at its own index.
		plain, err := c.Layout().PlainSize(m.Size())
		if err != nil || plain == 0 {
			return
		}
		idx, ok, err := jf.Authentic(plain)
		if err != nil || !ok {
			return
		}
		l := c.Layout()
		stored := m.Bytes()[l.BlockToCipherOff(idx):][:l.BlockPlainLen(idx, plain)+l.Overhead()]
		if isZero(stored) {
			t.Fatalf("Authentic named block %d, a hole", idx)
		}
		last := int64(idx) == int64(l.BlockCount(plain))-1
		if _, err := c.OpenBlock(nil, stored, idx, last); err != nil {
			t.Fatalf("Authentic named block %d, which fails: %v", idx, err)
		}
	})
}
