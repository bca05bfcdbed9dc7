package blockfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/blockcipher"
)

// model applies the same operations to a plain byte slice.
type model []byte

func (m *model) write(p []byte, off int64) {
	if len(p) == 0 {
		return // a zero-length pwrite does not extend a file
	}
	if end := off + int64(len(p)); end > int64(len(*m)) {
		*m = append(*m, make([]byte, end-int64(len(*m)))...)
	}
	copy((*m)[off:], p)
}

func (m *model) truncate(n int64) {
	if n <= int64(len(*m)) {
		*m = (*m)[:n]
	} else {
		*m = append(*m, make([]byte, n-int64(len(*m)))...)
	}
}

func checkWhole(t *testing.T, f File, m *MemStore, want []byte) {
	t.Helper()
	size := plainSize(t, f, m)
	if size != int64(len(want)) {
		t.Fatalf("plain size %d, want %d", size, len(want))
	}
	got := make([]byte, size+10)
	n, err := f.ReadAt(got, 0, size)
	if err != io.EOF && !(err == nil && size == 0) {
		t.Fatalf("ReadAt whole file: n=%d err=%v", n, err)
	}
	if !bytes.Equal(got[:n], want) {
		t.Fatalf("contents differ (size %d)", size)
	}
}

// TestWriteReadEdges writes at every offset/length near block edges into
// files of every size near block edges, and reads back at the same edges.
func TestWriteReadEdges(t *testing.T) {
	const bs = 512
	edges := []int64{0, 1, bs - 1, bs, bs + 1, 2*bs - 1, 2 * bs, 3*bs + 7}
	lengths := []int{0, 1, bs - 1, bs, bs + 1, 3 * bs, 3*bs + 5}
	for _, initial := range []int64{0, 1, bs - 1, bs, bs + 1, 2 * bs} {
		for _, off := range edges {
			for _, n := range lengths {
				name := fmt.Sprintf("size%d/off%d/len%d", initial, off, n)
				f, m := newTestFile(t, bs)
				var want model
				init := randBytes(int(initial))
				if _, err := f.WriteAt(init, 0, 0); err != nil {
					t.Fatal(err)
				}
				want.write(init, 0)
				p := randBytes(n)
				size, err := f.WriteAt(p, off, plainSize(t, f, m))
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				want.write(p, off)
				if size != int64(len(want)) {
					t.Fatalf("%s: WriteAt returned size %d, want %d", name, size, len(want))
				}
				checkWhole(t, f, m, want)
				for _, roff := range edges {
					for _, rn := range lengths {
						buf := make([]byte, rn)
						got, err := f.ReadAt(buf, roff, size)
						wantN := max(0, min(int64(rn), size-roff))
						if int64(got) != wantN || (err != nil && err != io.EOF) {
							t.Fatalf("%s: ReadAt(%d, %d) = %d, %v; want %d", name, roff, rn, got, err, wantN)
						}
						if wantN > 0 && !bytes.Equal(buf[:got], want[roff:roff+wantN]) {
							t.Fatalf("%s: ReadAt(%d, %d) content differs", name, roff, rn)
						}
					}
				}
			}
		}
	}
}

func TestTruncateEdges(t *testing.T) {
	const bs = 512
	sizes := []int64{0, 1, bs - 1, bs, bs + 1, 2*bs - 1, 2 * bs, 2*bs + 1, 5*bs + 3}
	for _, from := range sizes {
		for _, to := range sizes {
			f, m := newTestFile(t, bs)
			var want model
			p := randBytes(int(from))
			f.WriteAt(p, 0, 0)
			want.write(p, 0)
			if err := f.Truncate(from, to); err != nil {
				t.Fatalf("%d→%d: %v", from, to, err)
			}
			want.truncate(to)
			checkWhole(t, f, m, want)
			if to > 0 && m.Size() != f.C.Layout().CipherSize(to) {
				t.Fatalf("%d→%d: stored size %d", from, to, m.Size())
			}
		}
	}
}

func TestHolesStaySparse(t *testing.T) {
	const bs = 4096
	f, m := newTestFile(t, bs)
	if _, err := f.WriteAt([]byte("end"), 10*bs, 0); err != nil {
		t.Fatal(err)
	}
	stored := m.Bytes()
	l := f.C.Layout()
	for i := uint64(0); i < 10; i++ {
		off := l.BlockToCipherOff(i)
		if !isZero(stored[off : off+l.StoredBlockSize()]) {
			t.Fatalf("block %d of the hole was written", i)
		}
	}
	want := append(make([]byte, 10*bs), "end"...)
	checkWhole(t, f, m, want)
	// Truncating up leaves a hole too.
	if err := f.Truncate(10*bs+3, 20*bs+1); err != nil {
		t.Fatal(err)
	}
	stored = m.Bytes()
	for i := uint64(11); i < 20; i++ {
		off := l.BlockToCipherOff(i)
		if !isZero(stored[off : off+l.StoredBlockSize()]) {
			t.Fatalf("block %d of the grown hole was written", i)
		}
	}
	checkWhole(t, f, m, append(want, make([]byte, 10*bs-2)...))
}

// TestRandomOps checks thousands of seeded random writes, truncates and
// reads against the model.
func TestRandomOps(t *testing.T) {
	for _, tc := range []struct {
		bs int
		v  uint16
	}{{512, blockcipher.Version1}, {4096, blockcipher.Version1}, {512, blockcipher.Version2}, {4096, blockcipher.Version2}} {
		bs := tc.bs
		rng := rand.New(rand.NewPCG(uint64(bs), 42))
		f, m := newTestFileV(t, tc.v, bs)
		var want model
		for op := 0; op < 3000; op++ {
			size := int64(len(want))
			switch r := rng.IntN(10); {
			case r < 6:
				off := rng.Int64N(size + 3*int64(bs) + 1)
				p := randBytes(rng.IntN(4*bs + 1))
				got, err := f.WriteAt(p, off, size)
				if err != nil {
					t.Fatal(err)
				}
				want.write(p, off)
				if got != int64(len(want)) {
					t.Fatalf("op %d: size %d, want %d", op, got, len(want))
				}
			case r < 8:
				to := rng.Int64N(size*2 + int64(bs) + 1)
				if err := f.Truncate(size, to); err != nil {
					t.Fatal(err)
				}
				want.truncate(to)
			default:
				off := rng.Int64N(size + 1)
				buf := make([]byte, rng.IntN(3*bs+1))
				n, err := f.ReadAt(buf, off, size)
				if err != nil && err != io.EOF {
					t.Fatalf("op %d: read: %v", op, err)
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					t.Fatalf("op %d: read at %d+%d differs", op, off, len(buf))
				}
			}
			if op%200 == 0 {
				checkWhole(t, f, m, want)
			}
		}
		checkWhole(t, f, m, want)
	}
}

// crashStore applies the first `allow` mutations, then applies only the
// first `tear` bytes of the next write (a pwrite cut short at any byte, as
// SIGKILL or a full disk can do), and fails everything after: the state a
// killed process leaves behind.
type crashStore struct {
	*MemStore
	allow int
	tear  int
}

var errCrashed = errors.New("crashed")

func (c *crashStore) WriteAt(p []byte, off int64) (int, error) {
	if c.allow < 0 {
		return 0, errCrashed
	}
	if c.allow == 0 {
		c.allow = -1
		n := min(c.tear, len(p))
		c.MemStore.WriteAt(p[:n], off)
		return n, errCrashed
	}
	c.allow--
	return c.MemStore.WriteAt(p, off)
}

func (c *crashStore) Truncate(n int64) error {
	if c.allow <= 0 {
		c.allow = -1
		return errCrashed
	}
	c.allow--
	return c.MemStore.Truncate(n)
}

// TestCrashAtEveryStep interrupts writes and truncates after every prefix
// of their stored mutations, tearing the interrupted write at several
// bytes, then settles the journal (as the next open does) and checks
// every block: it reads with each byte old, new, or zero, and bytes the
// operation does not change are intact; only a block the operation
// replaces entirely, or a new block past the old end, may fail.
func TestCrashAtEveryStep(t *testing.T) {
	const bs = 512
	rng := rand.New(rand.NewPCG(7, 7))
	type op struct {
		name   string
		run    func(f File, size int64) error
		next   func(m *model)
		lo, hi int64 // the plaintext range the operation writes
	}
	torn, settled := 0, 0
	for trial := 0; trial < 400; trial++ {
		f, m := newTestFile(t, bs)
		initial := randBytes(rng.IntN(6 * bs))
		f.WriteAt(initial, 0, 0)
		old := model(bytes.Clone(initial))
		var o op
		if rng.IntN(2) == 0 {
			off := rng.Int64N(int64(len(initial)) + 3*bs)
			p := randBytes(1 + rng.IntN(3*bs))
			o = op{fmt.Sprintf("write %d+%d", off, len(p)),
				func(f File, size int64) error { _, err := f.WriteAt(p, off, size); return err },
				func(m *model) { m.write(p, off) }, off, off + int64(len(p))}
		} else {
			to := rng.Int64N(int64(len(initial)) + 3*bs)
			o = op{fmt.Sprintf("truncate to %d", to),
				func(f File, size int64) error { return f.Truncate(size, to) },
				func(m *model) { m.truncate(to) }, min(to, int64(len(initial))), max(to, int64(len(initial)))}
		}
		newM := model(bytes.Clone(old))
		o.next(&newM)
		snapshot := m.Bytes()
		// A block may fail after a crash only if the operation replaces
		// all its old bytes, or it lies past the old end.
		mayFail := func(idx int64) bool {
			start, end := idx*bs, (idx+1)*bs
			if start >= int64(len(old)) {
				return true
			}
			oldEnd := min(end, int64(len(old)))
			return strings.HasPrefix(o.name, "write") && o.lo <= start && o.hi >= oldEnd
		}
		for allow := 0; ; allow++ {
			done := false
			for _, tear := range []int{0, 1, 13, 300, 600, 4000, 1 << 30} {
				cs := &crashStore{MemStore: NewMemStore(snapshot), allow: allow, tear: tear}
				err := o.run(File{C: f.C, S: cs}, int64(len(old)))
				if err == nil {
					if !bytes.Equal(checkSettled(t, f, cs.MemStore, mayFail, old, newM, o.name), newM) {
						t.Fatalf("trial %d %s: completed but content differs", trial, o.name)
					}
					done = true
					break
				}
				torn++
				checkSettled(t, f, cs.MemStore, mayFail, old, newM, fmt.Sprintf("trial %d %s, crash after %d steps tearing at %d", trial, o.name, allow, tear))
				settled++
			}
			if done {
				break
			}
		}
	}
	t.Logf("%d interrupted operations settled and checked", settled)
}

// checkSettled settles the journal of a crashed store and checks each
// block, returning what the file reads.
func checkSettled(t *testing.T, f File, m *MemStore, mayFail func(int64) bool, old, newM []byte, what string) []byte {
	t.Helper()
	// First as a read-only mount, or one whose settle failed, reads it:
	// through the journal, without settling. Only one more block may fail
	// then: the old final block, when the change lengthened it in place
	// (a grow, or an extension padding it to a full block) and that was
	// torn. Its record is longer, and nothing authenticates the length a
	// reader would have to cut it to, so a reader cannot use it without
	// also accepting a cut inside a block (docs/FORMAT.md, "Journal").
	oldFinal := int64(len(old)-1) / 512
	mayFailRO := func(idx int64) bool {
		return mayFail(idx) || len(newM) > len(old) && len(old)%512 != 0 && idx == oldFinal
	}
	ro := NewMemStore(m.Bytes())
	checkReads(t, File{C: f.C, S: ro}, ro, mayFailRO, old, newM, what+", read before settling")
	sf := File{C: f.C, S: m}
	if _, err := sf.Settle(m.Size()); err != nil {
		t.Fatalf("%s: settle: %v", what, err)
	}
	if pending, _ := sf.JournalPending(m.Size()); pending {
		t.Fatalf("%s: the journal is not empty after Settle", what)
	}
	got := checkReads(t, sf, m, mayFail, old, newM, what)
	// A writer goes on under the file's key after the crash (Authentic)
	// as long as a block of the old file that the change keeps is left.
	size, _ := sf.C.Layout().PlainSize(m.Size())
	for idx := int64(0); idx*512 < min(size, int64(len(old))); idx++ {
		if !mayFail(idx) {
			if _, ok, err := sf.Authentic(size); !ok || err != nil {
				t.Fatalf("%s: no block authenticates (%v), though block %d keeps old bytes", what, err, idx)
			}
			break
		}
	}
	return got
}

// checkReads reads every block of sf and checks it as checkSettled says.
func checkReads(t *testing.T, sf File, m *MemStore, mayFail func(int64) bool, old, newM []byte, what string) []byte {
	t.Helper()
	size, serr := sf.C.Layout().PlainSize(m.Size())
	got := make([]byte, size)
	for idx := int64(0); idx*512 < size; idx++ {
		start := idx * 512
		n := min(int64(512), size-start)
		if _, err := sf.ReadAt(got[start:start+n], start, size); err != nil {
			if !mayFail(idx) {
				t.Fatalf("%s: block %d fails (%v) though it holds bytes the operation keeps", what, idx, err)
			}
			copy(got[start:start+n], make([]byte, n))
			continue
		}
	}
	if serr != nil && !mayFail(int64(size)/512) {
		t.Fatalf("%s: stored size %d invalid (%v) outside the range being written", what, m.Size(), serr)
	}
	at := func(b []byte, i int) byte {
		if i < len(b) {
			return b[i]
		}
		return 0
	}
	for i, c := range got {
		ov, nv := at(old, i), at(newM, i)
		if ov == nv && c != ov && !mayFail(int64(i)/512) {
			t.Fatalf("%s: byte %d, which the operation does not change, changed", what, i)
		}
		if c != ov && c != nv && c != 0 {
			t.Fatalf("%s: byte %d is neither old, new nor zero", what, i)
		}
	}
	return got
}

// fullStore refuses a random share of preallocations, as a full disk
// would; writes themselves never fail.
type fullStore struct {
	*MemStore
	rng *rand.Rand
}

var errNoSpace = errors.New("no space left on device")

func (s *fullStore) Preallocate(off, length int64) error {
	if s.rng.IntN(3) == 0 {
		return errNoSpace
	}
	return nil
}

// TestFullDiskChangesNothing: a write or truncate refused for lack of space
// leaves every stored byte as it was.
// With ReserveAppends, appends reserve too (a copy-on-write backing
// filesystem); without it they need no reservation (TestAppendOnFullDiskIsUndone,
// TestNearlyFullDiskKeepsPlaintext).
func TestFullDiskChangesNothing(t *testing.T) {
	for _, reserveAppends := range []bool{false, true} {
		t.Run(fmt.Sprintf("ReserveAppends=%v", reserveAppends), func(t *testing.T) {
			testFullDiskChangesNothing(t, reserveAppends)
		})
	}
}

func testFullDiskChangesNothing(t *testing.T, reserveAppends bool) {
	const bs = 512
	rng := rand.New(rand.NewPCG(3, 3))
	f, m := newTestFile(t, bs)
	fs := &fullStore{MemStore: m, rng: rng}
	f.S = fs
	f.ReserveAppends = reserveAppends
	var want model
	refused := 0
	for op := 0; op < 2000; op++ {
		size := int64(len(want))
		before := m.Bytes()
		var err error
		if rng.IntN(3) > 0 {
			off := rng.Int64N(size + 3*bs + 1)
			p := randBytes(1 + rng.IntN(3*bs))
			if _, err = f.WriteAt(p, off, size); err == nil {
				want.write(p, off)
			}
		} else {
			to := rng.Int64N(size*2 + bs + 1)
			if err = f.Truncate(size, to); err == nil {
				want.truncate(to)
			}
		}
		if err != nil {
			if !errors.Is(err, errNoSpace) {
				t.Fatalf("op %d: %v", op, err)
			}
			refused++
			if !bytes.Equal(m.Bytes(), before) {
				t.Fatalf("op %d: a refused change altered the stored file", op)
			}
		}
	}
	checkWhole(t, f, m, want)
	if refused < 100 {
		t.Fatalf("only %d changes were refused: the test did not exercise a full disk", refused)
	}
	t.Logf("%d changes refused", refused)
}

// diskFullStore fails every write or preallocation that would grow the
// store past its size when full is set, after writing part of it: a disk
// with no free block.
type diskFullStore struct {
	*MemStore
	full bool
}

func (s *diskFullStore) WriteAt(p []byte, off int64) (int, error) {
	if s.full && off+int64(len(p)) > s.Size() {
		n := max(0, min(len(p), int(s.Size()-off)+len(p)/3))
		s.MemStore.WriteAt(p[:n], off)
		return n, errNoSpace
	}
	return s.MemStore.WriteAt(p, off)
}

func (s *diskFullStore) Preallocate(off, length int64) error {
	if s.full && off+length > s.Size() {
		return errNoSpace
	}
	return nil
}

// pageStore is a disk that allocates pages of pageSize bytes on first
// write, as ext4 and tmpfs do: a hole inside the file needs a page as much
// as an append does. With free pages left, a write needing more stops at
// the first page it cannot get (a short write, as the kernel's); a
// preallocation gets all its pages or none. Truncation frees pages.
type pageStore struct {
	*MemStore
	alloc map[int64]bool
	free  int
}

const pageSize = 128

func (s *pageStore) WriteAt(p []byte, off int64) (int, error) {
	for pg := off / pageSize; pg*pageSize < off+int64(len(p)); pg++ {
		if s.alloc[pg] {
			continue
		}
		if s.free == 0 {
			n := int(max(0, pg*pageSize-off))
			s.MemStore.WriteAt(p[:n], off)
			return n, errNoSpace
		}
		s.free--
		s.alloc[pg] = true
	}
	return s.MemStore.WriteAt(p, off)
}

func (s *pageStore) Preallocate(off, length int64) error {
	var need []int64
	for pg := off / pageSize; pg*pageSize < off+length; pg++ {
		if !s.alloc[pg] {
			need = append(need, pg)
		}
	}
	if len(need) > s.free {
		return errNoSpace
	}
	for _, pg := range need {
		s.alloc[pg] = true
	}
	s.free -= len(need)
	return nil
}

func (s *pageStore) Truncate(size int64) error {
	for pg := range s.alloc {
		if pg*pageSize >= size {
			delete(s.alloc, pg)
			s.free++
		}
	}
	return s.MemStore.Truncate(size)
}

// TestNearlyFullDiskKeepsPlaintext runs random writes and truncates with a
// few free pages left. A change that extends or truncates the file and is
// refused for lack of space leaves the plaintext and its size as they
// were, however far it got. An overwrite inside the file can need space
// too (a sparse hole, a journal page); refused, it may leave bytes of its
// range new, like a short write, but changes nothing else. Either way the
// file reads whole once the journal is settled (as the fs layer does
// before the next change). A change that succeeds has its full effect.
func TestNearlyFullDiskKeepsPlaintext(t *testing.T) {
	const bs = 512
	rng := rand.New(rand.NewPCG(5, 5))
	refused, overwrites := 0, 0
	for trial := 0; trial < 60; trial++ {
		f, m := newTestFile(t, bs)
		s := &pageStore{MemStore: m, alloc: map[int64]bool{}, free: 1 << 30}
		s.WriteAt(m.Bytes(), 0) // the header's pages
		f.S = s
		var want model
		for op := 0; op < 100; op++ {
			size := int64(len(want))
			next := model(bytes.Clone(want))
			var err error
			var what string
			lo, hi := size, size
			s.free = 1 << 30
			if rng.IntN(3) > 0 {
				s.free = rng.IntN(12)
			}
			if rng.IntN(4) > 0 {
				off := rng.Int64N(size + 3*bs + 1)
				p := randBytes(1 + rng.IntN(3*bs))
				what = fmt.Sprintf("write %d+%d", off, len(p))
				next.write(p, off)
				lo, hi = off, off+int64(len(p))
				_, err = f.WriteAt(p, off, size)
			} else {
				to := rng.Int64N(size*2 + bs + 1)
				what = fmt.Sprintf("truncate to %d", to)
				next.truncate(to)
				err = f.Truncate(size, to)
			}
			if err == nil {
				s.free = 1 << 30
				want = next
				checkWhole(t, f, m, want)
				continue
			}
			if !errors.Is(err, errNoSpace) {
				t.Fatalf("trial %d op %d, %s on %d bytes: %v", trial, op, what, size, err)
			}
			refused++
			s.free = rng.IntN(3)
			if _, err := f.Settle(m.Size()); err != nil {
				if !errors.Is(err, errNoSpace) {
					t.Fatalf("trial %d op %d, settle after a refused %s: %v", trial, op, what, err)
				}
				s.free = 1 << 30 // space freed
				if _, err := f.Settle(m.Size()); err != nil {
					t.Fatalf("trial %d op %d, settle after a refused %s: %v", trial, op, what, err)
				}
			}
			s.free = 1 << 30
			if len(next) != len(want) || strings.HasPrefix(what, "truncate") {
				checkWhole(t, f, m, want)
				continue
			}
			overwrites++
			got := make([]byte, size)
			if _, err := f.ReadAt(got, 0, size); err != nil && err != io.EOF {
				t.Fatalf("trial %d op %d, refused %s on %d bytes: the file no longer reads: %v", trial, op, what, size, err)
			}
			for i := range got {
				if got[i] != want[i] && (int64(i) < lo || int64(i) >= hi || got[i] != next[i]) {
					t.Fatalf("trial %d op %d, refused %s on %d bytes: byte %d is neither old nor new", trial, op, what, size, i)
				}
			}
			want = model(got)
		}
	}
	if refused < 300 || overwrites < 30 {
		t.Fatalf("only %d changes (%d overwrites) were refused: the test did not exercise a full disk", refused, overwrites)
	}
	t.Logf("%d changes refused for lack of space (%d of them overwrites), none losing a byte", refused, overwrites)
}

// TestAppendOnFullDiskIsUndone: an append refused for lack of space leaves
// the file's size and plaintext as they were, whether it had no block yet,
// ended in a full block, or ended in a partial one.
func TestAppendOnFullDiskIsUndone(t *testing.T) {
	for _, initial := range []int{0, 4096, 5000} {
		f, m := newTestFile(t, 4096)
		s := &diskFullStore{MemStore: m}
		f.S = s
		old := randBytes(initial)
		if initial > 0 {
			if _, err := f.WriteAt(old, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		before := m.Size()
		s.full = true
		if _, err := f.WriteAt(randBytes(3*4096+7), int64(initial), int64(initial)); !errors.Is(err, errNoSpace) {
			t.Fatalf("%d bytes: append on a full disk: %v", initial, err)
		}
		if m.Size() != before {
			t.Fatalf("%d bytes: a refused append left the store at %d bytes, not %d", initial, m.Size(), before)
		}
		s.full = false
		checkWhole(t, f, m, old)
	}
}

// TestSettleOnFullDisk: settling a torn journal record needs no space: an
// empty slot, which may be a hole, is not written.
func TestSettleOnFullDisk(t *testing.T) {
	f, m := newTestFile(t, 512)
	s := &pageStore{MemStore: m, alloc: map[int64]bool{}, free: 1 << 30}
	s.WriteAt(m.Bytes(), 0)
	f.S = s
	want := randBytes(3000)
	if _, err := f.WriteAt(want, 0, 0); err != nil {
		t.Fatal(err)
	}
	// A record header torn on its way in: it counts as pending, and its
	// block does not authenticate.
	torn := make([]byte, blockcipher.JournalRecordHeader)
	torn[7], torn[11], torn[9] = 2, 1, 2
	s.WriteAt(torn, f.journalOff(0))
	s.free = 0
	if pending, _ := f.JournalPending(m.Size()); !pending {
		t.Fatal("the torn record does not count as pending")
	}
	if _, err := f.Settle(m.Size()); err != nil {
		t.Fatalf("settle on a full disk: %v", err)
	}
	if pending, _ := f.JournalPending(m.Size()); pending {
		t.Fatal("the journal is still pending")
	}
	checkWhole(t, f, m, want)
}

// TestWriteAtHugeOffset: an offset near the int64 limit is refused with an
// error; off+len once wrapped negative, passed the check and panicked.
func TestWriteAtHugeOffset(t *testing.T) {
	f, _ := newTestFile(t, 4096)
	for _, off := range []int64{math.MaxInt64 - 5, math.MaxInt64, blockcipher.MaxPlainSize, blockcipher.MaxPlainSize - 5} {
		if _, err := f.WriteAt(make([]byte, 10), off, 0); err == nil {
			t.Errorf("WriteAt(10 bytes, %d) succeeded", off)
		}
	}
}

// TestCutInsideBlockWithOldRecord: clearing the journal zeroes only each
// record's 24-byte head, and an append into a partial final block leaves
// that block, sealed final, in its slot. Someone who can write CIPHERDIR
// can re-arm the head (index, length and flag are no secret) and cut the
// file inside the final block: that cut must still fail to read, not be
// served from the longer record (found by review of a reader that did).
func TestCutInsideBlockWithOldRecord(t *testing.T) {
	const bs = 512
	f, m := newTestFile(t, bs)
	if _, err := f.WriteAt(randBytes(bs+100), 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randBytes(300), bs+100, bs+100); err != nil {
		t.Fatal(err)
	}
	l := f.C.Layout()
	var h [24]byte
	binary.BigEndian.PutUint64(h[:], 1+1)
	binary.BigEndian.PutUint32(h[8:], uint32(400+l.Overhead()))
	h[16] = 1
	m.WriteAt(h[:], l.HeaderSize)
	if err := m.Truncate(l.CipherSize(bs + 57)); err != nil {
		t.Fatal(err)
	}
	size, _ := l.PlainSize(m.Size())
	if _, err := f.ReadAt(make([]byte, size), 0, size); err == nil {
		t.Errorf("a cut inside the final block, to %d bytes, read without error", size)
	}
}

// TestPendingInHead: what an open learns from one read of the file's
// head is what JournalPending reads record by record, for a byte set
// anywhere in either record header or none, in files cut anywhere around
// the record headers.
func TestPendingInHead(t *testing.T) {
	f, m := newTestFile(t, 4096)
	if _, err := f.WriteAt(randBytes(3*4096), 0, 0); err != nil {
		t.Fatal(err)
	}
	full := m.Bytes()
	l := f.C.Layout()
	s0, s1 := l.HeaderSize, l.HeaderSize+l.JournalSlotSize()
	if HeadLen(l) != s1+recHeaderSize {
		t.Fatalf("HeadLen %d, want %d", HeadLen(l), s1+recHeaderSize)
	}
	var set []int64
	for _, s := range []int64{s0, s1} {
		set = append(set, s, s+7, s+16, s+recHeaderSize-1)
	}
	sizes := []int64{0, 1, l.HeaderSize, int64(len(full))}
	for _, s := range []int64{s0, s1} {
		sizes = append(sizes, s+1, s+7, s+8, s+16, s+recHeaderSize-1, s+recHeaderSize, s+recHeaderSize+1)
	}
	for _, at := range append(set, -1) {
		for _, size := range sizes {
			b := append([]byte(nil), full[:size]...)
			if at >= 0 && at < size {
				b[at] = 1
			}
			sf := File{C: f.C, S: NewMemStore(b)}
			want, err := sf.JournalPending(size)
			if err != nil {
				t.Fatal(err)
			}
			head := b[:min(size, HeadLen(l))]
			if got := PendingInHead(l, head); got != want {
				t.Errorf("byte %d set, file of %d bytes: PendingInHead %v, JournalPending %v", at, size, got, want)
			}
		}
	}
}
