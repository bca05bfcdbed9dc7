package blockfile

import (
	"slices"
	"testing"
)

// TestJournalDescribesWhatSettleDoes: an overwrite inside a block is
// journaled (record, block in place, record erased). Killed after the
// record, with the block torn in place, Journal names the block as torn;
// killed after the block, as left over; a record header written over with
// garbage, as not valid. Settle then finishes each case and Journal finds
// nothing; JournalPending agrees with Journal throughout.
func TestJournalDescribesWhatSettleDoes(t *testing.T) {
	const bs = 512
	for _, c := range []struct {
		name  string
		allow int // writes that land: record, then block in place, then erase
		tear  int
		want  []JournalSlot
	}{
		{"torn block", 1, 100, []JournalSlot{{Slot: 0, Valid: true, Block: 1, Torn: true}}},
		{"finished block", 2, 0, []JournalSlot{{Slot: 0, Valid: true, Block: 1}}},
		{"torn record", 0, 20, []JournalSlot{{Slot: 0}}},
		{"clean", 3, 0, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, m := newTestFile(t, bs)
			want := randBytes(3 * bs)
			if _, err := f.WriteAt(want, 0, 0); err != nil {
				t.Fatal(err)
			}
			size := plainSize(t, f, m)
			cs := &crashStore{MemStore: m, allow: c.allow, tear: c.tear}
			cf := File{C: f.C, S: cs}
			if _, err := cf.WriteAt(randBytes(10), bs+5, size); (err == nil) != (c.allow >= 3) {
				t.Fatalf("the overwrite, %d writes allowed: %v", c.allow, err)
			}
			got, err := f.Journal(m.Size())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("Journal = %+v, want %+v", got, c.want)
			}
			if pending, _ := f.JournalPending(m.Size()); pending != (len(got) > 0) {
				t.Fatalf("JournalPending = %v with %d slots in use", pending, len(got))
			}
			if _, err := f.Settle(m.Size()); err != nil {
				t.Fatal(err)
			}
			if got, err := f.Journal(m.Size()); err != nil || len(got) != 0 {
				t.Fatalf("after Settle: Journal = %+v, %v", got, err)
			}
			if _, err := f.ReadAt(make([]byte, size), 0, size); err != nil {
				t.Fatalf("after Settle: %v", err)
			}
		})
	}
}
