package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Content tests: every operation is applied to a file through the mount and
// to its model, a plain file on the local disk, and the two are compared
// byte for byte. Reads that must reach kmsfs (not the kernel's page cache)
// use an O_DIRECT descriptor; a final check goes through a second, fresh
// mount of the same CIPHERDIR.

// twin is a file through the mount and its model.
type twin struct {
	name             string
	mntPath, refPath string
	mnt              *os.File // buffered (page cache) descriptor
	direct           *os.File // O_DIRECT descriptor: reads and writes reach kmsfs
	ref              *os.File
	hist             []string // last operations, for error messages
}

func openTwin(t testing.TB, mntPath, refPath string) *twin {
	t.Helper()
	w := &twin{name: filepath.Base(mntPath), mntPath: mntPath, refPath: refPath}
	var err error
	if w.mnt, err = os.OpenFile(mntPath, os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		t.Fatal(err)
	}
	if w.direct, err = os.OpenFile(mntPath, os.O_RDWR|syscall.O_DIRECT, 0); err != nil {
		t.Fatalf("open O_DIRECT through the mount: %v", err)
	}
	if w.ref, err = os.OpenFile(refPath, os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.close)
	return w
}

func (w *twin) close() {
	w.mnt.Close()
	w.direct.Close()
	w.ref.Close()
}

func (w *twin) note(format string, args ...any) {
	if len(w.hist) >= 12 {
		w.hist = w.hist[1:]
	}
	w.hist = append(w.hist, fmt.Sprintf(format, args...))
}

func (w *twin) errorf(format string, args ...any) error {
	return fmt.Errorf("%s: %s (last ops: %s)", w.name, fmt.Sprintf(format, args...), strings.Join(w.hist, "; "))
}

func (w *twin) pick(direct bool) *os.File {
	if direct {
		return w.direct
	}
	return w.mnt
}

func (w *twin) write(b []byte, off int64, direct bool) error {
	w.note("write %d@%d direct=%v", len(b), off, direct)
	if n, err := w.pick(direct).WriteAt(b, off); err != nil || n != len(b) {
		return w.errorf("write %d@%d through the mount: n=%d err=%v", len(b), off, n, err)
	}
	if _, err := w.ref.WriteAt(b, off); err != nil {
		return err
	}
	return nil
}

// read compares a read at off of n bytes: count, EOF and bytes.
func (w *twin) read(off int64, n int, direct bool) error {
	w.note("read %d@%d direct=%v", n, off, direct)
	got := make([]byte, n)
	want := make([]byte, n)
	gn, gerr := w.pick(direct).ReadAt(got, off)
	wn, werr := w.ref.ReadAt(want, off)
	if gerr != nil && gerr != io.EOF {
		return w.errorf("read %d@%d through the mount: %v", n, off, gerr)
	}
	if werr != nil && werr != io.EOF {
		return werr
	}
	if gn != wn {
		return w.errorf("read %d@%d: got %d bytes, model %d", n, off, gn, wn)
	}
	if i := firstDiff(got[:gn], want[:wn]); i >= 0 {
		return w.errorf("read %d@%d: byte %d (file offset %d) is %#x, model %#x", n, off, i, off+int64(i), got[i], want[i])
	}
	return nil
}

func (w *twin) truncate(size int64, byPath bool) error {
	w.note("truncate %d byPath=%v", size, byPath)
	var err error
	if byPath {
		err = os.Truncate(w.mntPath, size)
	} else {
		err = w.mnt.Truncate(size)
	}
	if err != nil {
		return w.errorf("truncate to %d through the mount: %v", size, err)
	}
	return w.ref.Truncate(size)
}

// size compares the sizes fstat reports and returns it.
func (w *twin) size() (int64, error) {
	a, err := w.mnt.Stat()
	if err != nil {
		return 0, w.errorf("fstat through the mount: %v", err)
	}
	b, err := w.ref.Stat()
	if err != nil {
		return 0, err
	}
	if a.Size() != b.Size() {
		return 0, w.errorf("size %d, model %d", a.Size(), b.Size())
	}
	return a.Size(), nil
}

// verify compares the whole file (through O_DIRECT) with the model.
func (w *twin) verify() error {
	if _, err := w.size(); err != nil {
		return err
	}
	if err := sameContent(w.direct, w.ref); err != nil {
		return w.errorf("%v", err)
	}
	return nil
}

// layout is a volume's geometry as kmsfs.json records it.
type layout struct {
	headerSize int64
	blockSize  int64
	overhead   int64 // per stored block: 28 before format version 3, 40 from it
}

func volumeLayout(t testing.TB, v *volume) layout {
	t.Helper()
	var cfg struct {
		FormatVersion int   `json:"format_version"`
		HeaderSize    int64 `json:"header_size"`
		BlockSize     int64 `json:"block_size"`
	}
	if err := json.Unmarshal(readFile(t, filepath.Join(v.Dir, "kmsfs.json")), &cfg); err != nil {
		t.Fatal(err)
	}
	l := layout{cfg.HeaderSize, cfg.BlockSize, 40}
	if cfg.FormatVersion < 3 {
		l.overhead = 28
	}
	return l
}

// cipherSize is the stored size of a file of plain bytes, as
// docs/FORMAT.md gives it: header, full blocks of B+overhead bytes, and
// a partial last block of its bytes plus the overhead.
func (l layout) cipherSize(plain int64) int64 {
	c := l.headerSize + plain/l.blockSize*(l.blockSize+l.overhead)
	if r := plain % l.blockSize; r > 0 {
		c += r + l.overhead
	}
	return c
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// sameContent reads both files to the end in 1 MiB chunks and reports the
// first difference.
func sameContent(got, want io.ReaderAt) error {
	a := make([]byte, 1<<20)
	b := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(a)) {
		an, aerr := got.ReadAt(a, off)
		bn, berr := want.ReadAt(b, off)
		if aerr != nil && aerr != io.EOF {
			return fmt.Errorf("read at %d: %v", off, aerr)
		}
		if berr != nil && berr != io.EOF {
			return fmt.Errorf("read model at %d: %v", off, berr)
		}
		if i := firstDiff(a[:an], b[:bn]); i >= 0 {
			if i >= an || i >= bn {
				return fmt.Errorf("length differs: %d bytes, model %d", off+int64(an), off+int64(bn))
			}
			return fmt.Errorf("byte at %d is %#x, model %#x", off+int64(i), a[i], b[i])
		}
		if aerr == io.EOF || an < len(a) {
			return nil
		}
	}
}

// sameFile compares a file through some mount (read with O_DIRECT, so from
// kmsfs) with a model file.
func sameFile(t testing.TB, mntPath, refPath string) {
	t.Helper()
	a, err := os.OpenFile(mntPath, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.Open(refPath)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := sameContent(a, b); err != nil {
		t.Errorf("%s: %v", mntPath, err)
	}
}

func randLen(r *rand.Rand) int64 {
	switch x := r.IntN(100); {
	case x < 35:
		return 1 + r.Int64N(100)
	case x < 55:
		return (1+r.Int64N(4))*4096 - 1 + r.Int64N(3)
	case x < 95:
		return 1 + r.Int64N(64<<10)
	default:
		return 1 + r.Int64N(1<<20)
	}
}

// randOff picks an offset in or just after a file of size bytes, often at
// or next to a block edge.
func randOff(r *rand.Rand, size int64) int64 {
	switch x := r.IntN(100); {
	case x < 50:
		return r.Int64N(size + 1)
	case x < 80:
		return max(0, r.Int64N(size/4096+2)*4096-1+r.Int64N(3))
	default:
		return size
	}
}

// randomOps applies ops random operations to w: writes (buffered and
// O_DIRECT), reads, truncates down and up into blocks (through the
// descriptor and by path), writes far past the end (holes), with full
// comparisons every verifyEvery operations and at the end.
func randomOps(w *twin, seed uint64, ops int, maxSize int64, verifyEvery int) error {
	rng := rand.New(rand.NewPCG(seed, 0x6b6d7366))
	data := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'k', 'm', 's', 'f', 's'})
	buf := make([]byte, 1<<20)
	size, err := w.size()
	if err != nil {
		return err
	}
	for i := 0; i < ops; i++ {
		switch x := rng.IntN(100); {
		case x < 40: // write in or just after the file
			off := randOff(rng, size)
			n := min(randLen(rng), maxSize-off)
			if n <= 0 {
				continue
			}
			data.Read(buf[:n])
			err = w.write(buf[:n], off, rng.IntN(4) == 0)
		case x < 75: // read anywhere, also past the end
			off := randOff(rng, size)
			if rng.IntN(10) == 0 {
				off += rng.Int64N(8192)
			}
			err = w.read(off, int(randLen(rng)), rng.IntN(2) == 0)
		case x < 84: // truncate down, usually into a block
			err = w.truncate(rng.Int64N(size+1), rng.IntN(3) == 0)
		case x < 90: // truncate up, leaving a hole
			err = w.truncate(min(maxSize, size+1+rng.Int64N(3<<20)), rng.IntN(3) == 0)
		default: // a write far past the end: a hole before it
			if size >= maxSize-1 {
				continue
			}
			off := size + 1 + rng.Int64N(maxSize-size-1)
			n := min(1+rng.Int64N(10000), maxSize-off)
			data.Read(buf[:n])
			err = w.write(buf[:n], off, rng.IntN(4) == 0)
		}
		if err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if size, err = w.size(); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if (i+1)%verifyEvery == 0 {
			if err := w.verify(); err != nil {
				return fmt.Errorf("after op %d: %w", i, err)
			}
		}
	}
	return w.verify()
}

// contentEnv is one case of TestContent: a directory of its own in the
// shared mount, one for its model files, and checks to repeat through a
// fresh mount at the end.
type contentEnv struct {
	v    *volume
	m    *mount
	name string // the case's directory in the mount (and in CIPHERDIR)
	ref  string // the case's directory for model files
	cold []coldCheck
}

type coldCheck struct{ rel, ref string }

func (e *contentEnv) path(name string) string    { return e.m.path(e.name, name) }
func (e *contentEnv) refPath(name string) string { return filepath.Join(e.ref, name) }
func (e *contentEnv) stored(name string) string  { return filepath.Join(e.v.Dir, e.name, name) }

// checkCold compares the file name with its model again through a fresh
// mount at the end of TestContent.
func (e *contentEnv) checkCold(name, ref string) {
	e.cold = append(e.cold, coldCheck{filepath.Join(e.name, name), ref})
}

// scaled returns n, or a quarter of it when kmsfs is built with -race (about
// ten times slower).
func scaled(n int) int {
	if raceEnabled {
		return max(1, n/4)
	}
	return n
}

// TestContent runs the content cases on one mount, each in its own
// directory, then compares their files through a second mount of the same
// CIPHERDIR (cold caches, fresh key unwraps).
func TestContent(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	refBase := t.TempDir()
	cases := []struct {
		name string
		f    func(*testing.T, *contentEnv)
	}{
		{"Random", contentRandom},
		{"BlockEdges", contentBlockEdges},
		{"SameFileConcurrent", contentSameFileConcurrent},
		{"Append", contentAppend},
		{"OpenFlags", contentOpenFlags},
		{"Mmap", contentMmap},
		{"FtruncateWhileReading", func(t *testing.T, e *contentEnv) { truncateRace(t, e, false) }},
		{"TruncateByPathRace", func(t *testing.T, e *contentEnv) { truncateRace(t, e, true) }},
		{"Sparse", contentSparse},
	}
	var cold []coldCheck
	for _, c := range cases {
		e := &contentEnv{v: v, m: m, name: c.name, ref: filepath.Join(refBase, c.name)}
		if err := os.Mkdir(e.ref, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(m.path(c.name), 0o755); err != nil {
			t.Fatal(err)
		}
		if t.Run(c.name, func(t *testing.T) { c.f(t, e) }) {
			cold = append(cold, e.cold...)
		}
	}
	if len(cold) == 0 {
		return
	}
	fresh := mountVolume(t, v)
	for _, c := range cold {
		sameFile(t, fresh.path(c.rel), c.ref)
	}
}

// TestContentBlockSizes repeats random operations and the same-file
// concurrency case on volumes of the smallest block size (512 B: several
// blocks per page) and of 64 KiB blocks (several pages per block: a page
// written through mmap shares its block with pages written by write(2),
// the kernel does not serialise their writeback with write(2), so only
// kmsfs's per-inode lock keeps the read-modify-write of the block from
// losing bytes).
func TestContentBlockSizes(t *testing.T) {
	t.Parallel()
	for _, bs := range []int{512, 65536} {
		t.Run(strconv.Itoa(bs), func(t *testing.T) {
			v := newVolume(t, nil, "--block-size", strconv.Itoa(bs))
			m := mountVolume(t, v)
			if err := os.Mkdir(m.path("c"), 0o755); err != nil {
				t.Fatal(err)
			}
			e := &contentEnv{v: v, m: m, name: "c", ref: t.TempDir()}
			var wg sync.WaitGroup
			for i := 0; i < 2; i++ {
				name := fmt.Sprint("random", i)
				w := openTwin(t, e.path(name), e.refPath(name))
				e.checkCold(name, e.refPath(name))
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := randomOps(w, uint64(bs+i), scaled(400), 6<<20, 100); err != nil {
						t.Errorf("seed %d: %v", bs+i, err)
					}
				}()
			}
			wg.Wait()
			contentSameFileConcurrent(t, e)
			if t.Failed() {
				return
			}
			fresh := mountVolume(t, v)
			for _, c := range e.cold {
				sameFile(t, fresh.path(c.rel), c.ref)
			}
		})
	}
}

// contentRandom runs seeded random operations on several files at once
// (one goroutine each), one of them filled to 64 MiB first, and checks
// every read, every size and, through a second mount, the final contents.
func contentRandom(t *testing.T, e *contentEnv) {
	files := []struct {
		name    string
		fill    int64 // sequential bytes written first
		ops     int
		maxSize int64
		every   int
	}{
		{"big", 64 << 20, scaled(400), 64 << 20, scaled(200)},
		{"a", 0, scaled(600), 8 << 20, 100},
		{"b", 1 << 20, scaled(600), 8 << 20, 100},
		{"c", 0, scaled(600), 4 << 20, 100},
		{"d", 12345, scaled(600), 2 << 20, 100},
	}
	var wg sync.WaitGroup
	for i, f := range files {
		w := openTwin(t, e.path(f.name), e.refPath(f.name))
		e.checkCold(f.name, e.refPath(f.name))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f.fill > 0 {
				data := rand.NewChaCha8([32]byte{byte(i), 'f', 'i', 'l', 'l'})
				buf := make([]byte, 1<<20)
				for off := int64(0); off < f.fill; off += int64(len(buf)) {
					n := min(int64(len(buf)), f.fill-off)
					data.Read(buf[:n])
					if err := w.write(buf[:n], off, false); err != nil {
						t.Error(err)
						return
					}
				}
			}
			if err := randomOps(w, uint64(i+1), f.ops, f.maxSize, f.every); err != nil {
				t.Errorf("seed %d: %v", i+1, err)
			}
		}()
	}
	wg.Wait()
}

// contentBlockEdges writes and reads at offsets and lengths around
// block edges, on empty and on filled files, and truncates to sizes
// around them.
func contentBlockEdges(t *testing.T, e *contentEnv) {
	offs := []int64{0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 10*4096 + 7, 64 * 4096}
	lens := []int64{1, 2, 4095, 4096, 4097, 8192, 3*4096 + 5, 40 * 4096}
	data := rand.NewChaCha8([32]byte{'e', 'd', 'g', 'e'})
	fill := make([]byte, 5*4096+100)
	data.Read(fill)
	buf := make([]byte, 40*4096)
	for _, prefill := range []bool{false, true} {
		name := fmt.Sprintf("edges-%v", prefill)
		w := openTwin(t, e.path(name), e.refPath(name))
		for _, off := range offs {
			for _, n := range lens {
				if err := w.truncate(0, false); err != nil {
					t.Fatal(err)
				}
				if prefill {
					if err := w.write(fill, 0, false); err != nil {
						t.Fatal(err)
					}
				}
				data.Read(buf[:n])
				if err := w.write(buf[:n], off, off%2 == 1); err != nil {
					t.Fatal(err)
				}
				if err := w.verify(); err != nil {
					t.Fatalf("pwrite %d@%d (prefilled %v): %v", n, off, prefill, err)
				}
			}
		}
	}

	// Reads at every edge of files of edge sizes.
	for _, size := range []int64{1, 4095, 4096, 4097, 3*4096 + 1, 10 * 4096} {
		name := fmt.Sprintf("read-%d", size)
		w := openTwin(t, e.path(name), e.refPath(name))
		data.Read(buf[:size])
		if err := w.write(buf[:size], 0, false); err != nil {
			t.Fatal(err)
		}
		for _, off := range offs {
			for _, n := range lens {
				if err := w.read(off, int(n), true); err != nil {
					t.Fatal(err)
				}
				if err := w.read(off, int(n), false); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	// Truncates to edge sizes, down and up, keeping the bytes below.
	w := openTwin(t, e.path("trunc"), e.refPath("trunc"))
	e.checkCold("trunc", e.refPath("trunc"))
	data.Read(buf[:12*4096])
	if err := w.write(buf[:12*4096], 0, false); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{12*4096 - 1, 8193, 8192, 8191, 4097, 4096, 4095, 1, 0, 1, 4096, 4097, 3*4096 + 9, 20 * 4096, 5} {
		for _, byPath := range []bool{false, true} {
			if err := w.truncate(size, byPath); err != nil {
				t.Fatal(err)
			}
			if err := w.verify(); err != nil {
				t.Fatalf("truncate to %d: %v", size, err)
			}
			// Write into the new last block to see it was re-sealed right.
			if size > 0 {
				if err := w.write([]byte{0xAB}, size-1, true); err != nil {
					t.Fatal(err)
				}
				if err := w.verify(); err != nil {
					t.Fatalf("truncate to %d then write its last byte: %v", size, err)
				}
			}
		}
	}
}

// sharedPattern is the byte a writer with owner id writes at offset i in
// pass p of TestContentSameFileConcurrent.
func sharedPattern(i, p, owner int) byte { return sharedBase(i) ^ sharedKey(p, owner) }

func sharedBase(i int) byte { return byte(uint32(i) * 2654435761 >> 13) }

func sharedKey(p, owner int) byte { return byte(p*37 + owner*101 + 1) }

// contentSameFileConcurrent has several writers on ONE file, each
// owning byte ranges that share blocks with the others' (unaligned
// stripes; with 64 KiB blocks a writer through mmap shares blocks too,
// and its writeback is not serialised with write(2) by the kernel), while
// readers read with O_DIRECT. Every byte a reader sees must be zero or a
// byte its owner wrote; the final file must be exactly the owners' last
// pass, through this mount and through a fresh one.
func contentSameFileConcurrent(t *testing.T, e *contentEnv) {
	const (
		writers = 3 // write(2) writers; owner id `writers` is the mmap writer
		readers = 2
	)
	pages, passes := 320, 6
	if raceEnabled {
		pages, passes = 96, 4
	}
	size := pages * 4096
	type extent struct{ off, n int }
	owner := make([]int, size)
	ext := make([][]extent, writers+1)
	k := 0
	for off := 0; off < size; {
		p := off / 4096
		if p%4 == 3 {
			ext[writers] = append(ext[writers], extent{off, 4096})
			for i := off; i < off+4096; i++ {
				owner[i] = writers
			}
			off += 4096
			continue
		}
		end := min(off+700+(k*389)%1500, (p-p%4+3)*4096)
		o := k % writers
		ext[o] = append(ext[o], extent{off, end - off})
		for i := off; i < end; i++ {
			owner[i] = o
		}
		off = end
		k++
	}
	path := e.path("shared")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(size)); err != nil {
		t.Fatal(err)
	}

	// okKey[o][x]: x is the key of some pass of owner o (or the byte
	// is zero), so a check costs one lookup per byte.
	okKey := make([][256]bool, writers+1)
	for o := range okKey {
		for p := 0; p < passes; p++ {
			okKey[o][sharedKey(p, o)] = true
		}
	}
	allowed := func(i int, b byte) bool { return b == 0 || okKey[owner[i]][b^sharedBase(i)] }
	fill := func(dst []byte, off, p int) {
		for j := range dst {
			dst[j] = sharedPattern(off+j, p, owner[off+j])
		}
	}

	var stop atomic.Bool
	var reads atomic.Int64
	var rwg, wwg sync.WaitGroup
	for r := 0; r < readers; r++ {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(r), 99))
			buf := make([]byte, 16<<10)
			for !stop.Load() || reads.Load() < 2*readers {
				off := rng.IntN(size)
				n := min(1+rng.IntN(len(buf)), size-off)
				got, err := f.ReadAt(buf[:n], int64(off))
				if err != nil || got != n {
					t.Errorf("reader: read %d@%d: got %d, %v", n, off, got, err)
					return
				}
				for j := 0; j < n; j++ {
					if !allowed(off+j, buf[j]) {
						t.Errorf("reader: byte at %d is %#x: neither zero nor written by its owner %d", off+j, buf[j], owner[off+j])
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	for o := 0; o < writers; o++ {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(o), 7))
			buf := make([]byte, 4096)
			for p := 0; p < passes; p++ {
				for _, idx := range rng.Perm(len(ext[o])) {
					e := ext[o][idx]
					a, b := e.off, e.off+e.n
					if p < passes-1 {
						a += rng.IntN(e.n)
						b = a + 1 + rng.IntN(e.off+e.n-a)
					}
					fill(buf[:b-a], a, p)
					if n, err := f.WriteAt(buf[:b-a], int64(a)); err != nil || n != b-a {
						t.Errorf("writer %d: write %d@%d: %d, %v", o, b-a, a, n, err)
						return
					}
				}
			}
		}()
	}
	wwg.Add(1)
	go func() {
		defer wwg.Done()
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Errorf("mmap: %v", err)
			return
		}
		defer unix.Munmap(mem)
		rng := rand.New(rand.NewPCG(uint64(writers), 7))
		for p := 0; p < passes; p++ {
			for _, idx := range rng.Perm(len(ext[writers])) {
				e := ext[writers][idx]
				a, b := e.off, e.off+e.n
				if p < passes-1 {
					a += rng.IntN(e.n)
					b = a + 1 + rng.IntN(e.off+e.n-a)
				}
				fill(mem[a:b], a, p)
				if err := unix.Msync(mem[e.off:e.off+4096], unix.MS_SYNC); err != nil {
					t.Errorf("msync: %v", err)
					return
				}
			}
		}
		if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
			t.Errorf("msync: %v", err)
		}
	}()
	wwg.Wait()
	stop.Store(true)
	rwg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d concurrent O_DIRECT reads", reads.Load())

	want := make([]byte, size)
	fill(want, 0, passes-1)
	ref := e.refPath("shared")
	if err := os.WriteFile(ref, want, 0o644); err != nil {
		t.Fatal(err)
	}
	sameFile(t, path, ref)
	e.checkCold("shared", ref)
}

// contentAppend writes through two O_APPEND descriptors: alternately
// (including pwrite, which appends on Linux), then concurrently; every
// record must land whole, at the end, none lost.
func contentAppend(t *testing.T, e *contentEnv) {
	open2 := func(path string) (*os.File, *os.File) {
		a, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}
	ma, mb := open2(e.path("alt"))
	ra, rb := open2(e.refPath("alt"))
	rng := rand.New(rand.NewPCG(3, 3))
	data := rand.NewChaCha8([32]byte{'a', 'p', 'p'})
	buf := make([]byte, 3*4096)
	for i := 0; i < 200; i++ {
		n := 1 + rng.IntN(len(buf))
		if i%5 == 0 {
			n = 4096 - 1 + rng.IntN(3)
		}
		data.Read(buf[:n])
		mf, rf := ma, ra
		if i%2 == 1 {
			mf, rf = mb, rb
		}
		if i%7 == 3 {
			// pwrite at offset 0 on an O_APPEND descriptor appends.
			if _, err := unix.Pwrite(int(mf.Fd()), buf[:n], 0); err != nil {
				t.Fatalf("pwrite through the mount: %v", err)
			}
			if _, err := unix.Pwrite(int(rf.Fd()), buf[:n], 0); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := mf.Write(buf[:n]); err != nil {
			t.Fatalf("append through the mount: %v", err)
		}
		if _, err := rf.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
	sameFile(t, e.path("alt"), e.refPath("alt"))
	e.checkCold("alt", e.refPath("alt"))

	// Concurrent appenders, one record per write.
	const perWriter = 300
	ca, cb := open2(e.path("concurrent"))
	var wg sync.WaitGroup
	total := make([]int, 2)
	for g, f := range []*os.File{ca, cb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; i < perWriter; i++ {
				rec := fmt.Sprintf("%c%04d:%s\n", 'A'+g, i, strings.Repeat(string(rune('a'+g)), rng.IntN(6000)))
				if _, err := f.Write([]byte(rec)); err != nil {
					t.Errorf("append: %v", err)
					return
				}
				total[g] += len(rec)
			}
		}()
	}
	wg.Wait()
	got := readFile(t, e.path("concurrent"))
	if len(got) != total[0]+total[1] {
		t.Fatalf("concurrent appends: file has %d bytes, %d were appended", len(got), total[0]+total[1])
	}
	next := []int{0, 0}
	for ln, rec := range strings.Split(strings.TrimSuffix(string(got), "\n"), "\n") {
		if len(rec) < 6 || (rec[0] != 'A' && rec[0] != 'B') || rec[5] != ':' {
			t.Fatalf("concurrent appends: line %d is torn: %.40q", ln, rec)
		}
		g := int(rec[0] - 'A')
		i, err := strconv.Atoi(rec[1:5])
		if err != nil || i != next[g] || strings.Trim(rec[6:], string(rune('a'+g))) != "" {
			t.Fatalf("concurrent appends: line %d is %.40q, want record %c%04d", ln, rec, 'A'+g, next[g])
		}
		next[g]++
	}
	if next[0] != perWriter || next[1] != perWriter {
		t.Fatalf("concurrent appends: found %v records, want %d each", next, perWriter)
	}
}

// contentOpenFlags checks O_TRUNC (also while another descriptor
// reads the file) and O_EXCL (existing file, directory, dangling symlink,
// and eight concurrent creators of one name).
func contentOpenFlags(t *testing.T, e *contentEnv) {
	m := e
	p := m.path("f")
	old := bytes.Repeat([]byte("0123456789"), 1000)
	writeFile(t, p, old)
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 10)
	if _, err := r.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []func() (os.FileInfo, error){f.Stat, r.Stat, func() (os.FileInfo, error) { return os.Stat(p) }} {
		if fi, err := st(); err != nil || fi.Size() != 0 {
			t.Fatalf("after O_TRUNC: %v, %v; want size 0", fi, err)
		}
	}
	if n, err := r.ReadAt(head, 0); n != 0 || err != io.EOF {
		t.Fatalf("read of a file truncated by O_TRUNC: %d, %v; want 0, EOF", n, err)
	}
	if _, err := f.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n, err := r.ReadAt(head, 0); n != 3 || string(head[:3]) != "new" {
		t.Fatalf("read after rewrite: %q, %v", head[:n], err)
	}
	if got := readFile(t, p); string(got) != "new" {
		t.Fatalf("after O_TRUNC and write: %q", got)
	}
	// O_TRUNC on an empty file, and with O_CREAT on a new one.
	for _, name := range []string{"f", "g"} {
		f, err := os.OpenFile(m.path(name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if fi, err := os.Stat(m.path(name)); err != nil || fi.Size() != 0 {
			t.Fatalf("%s after O_TRUNC: %v", name, err)
		}
	}
	// Truncating to 0 keeps the header: still a valid, writable file.
	writeFile(t, m.path("g"), []byte("after"))
	if got := readFile(t, m.path("g")); string(got) != "after" {
		t.Fatalf("g: %q", got)
	}

	// O_EXCL.
	if err := os.Mkdir(m.path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", m.path("dangling")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"f", "dir", "dangling"} {
		_, err := os.OpenFile(m.path(name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, syscall.EEXIST) {
			t.Errorf("O_EXCL create of existing %s: %v, want EEXIST", name, err)
		}
	}
	if _, err := os.Lstat(m.path("nowhere")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("O_EXCL through a dangling symlink created its target: %v", err)
	}
	for round := 0; round < 5; round++ {
		name := m.path(fmt.Sprintf("excl-%d", round))
		var wins, exists atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
				switch {
				case err == nil:
					wins.Add(1)
					fmt.Fprintf(f, "winner %d", g)
					f.Close()
				case errors.Is(err, syscall.EEXIST):
					exists.Add(1)
				default:
					t.Errorf("O_EXCL create: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || exists.Load() != 7 {
			t.Fatalf("8 concurrent O_EXCL creates: %d won, %d got EEXIST; want 1 and 7", wins.Load(), exists.Load())
		}
		if got := readFile(t, name); !strings.HasPrefix(string(got), "winner ") {
			t.Fatalf("winner's content: %q", got)
		}
	}
}

// contentMmap reads through a shared mapping, writes through one
// (msync, and without msync before close), and checks the results with
// O_DIRECT reads and through a second mount.
func contentMmap(t *testing.T, e *contentEnv) {
	data := rand.NewChaCha8([32]byte{'m', 'm', 'a', 'p'})

	// Read through a mapping; the tail of the last page is zero.
	content := make([]byte, 3*4096+123)
	data.Read(content)
	writeFile(t, e.path("r"), content)
	f, err := os.Open(e.path("r"))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 4*4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem[:len(content)], content) || !bytes.Equal(mem[len(content):], make([]byte, 4*4096-len(content))) {
		t.Errorf("read through mmap differs from the file")
	}
	unix.Munmap(mem)
	f.Close()

	// Write through a mapping: scattered writes across page and block
	// edges, msync, then compare.
	for _, msync := range []bool{true, false} {
		name := fmt.Sprintf("w-msync-%v", msync)
		w := openTwin(t, e.path(name), e.refPath(name))
		const size = 5*4096 + 77
		if err := w.truncate(size, false); err != nil {
			t.Fatal(err)
		}
		mem, err := unix.Mmap(int(w.mnt.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(5, 5))
		for i := 0; i < 40; i++ {
			off := rng.IntN(size)
			n := min(1+rng.IntN(6000), size-off)
			if i%8 == 0 {
				off = (1+rng.IntN(4))*4096 - 3
				n = 6
			}
			b := make([]byte, n)
			data.Read(b)
			copy(mem[off:], b)
			if _, err := w.ref.WriteAt(b, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
		if msync {
			if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Munmap(mem); err != nil {
			t.Fatal(err)
		}
		if msync {
			if err := w.verify(); err != nil {
				t.Fatal(err)
			}
		}
		w.close()
		sameFile(t, e.path(name), e.refPath(name))
		e.checkCold(name, e.refPath(name))
	}
}

// truncateRace runs truncates (through a descriptor, FtruncateWhileReading,
// or by path, TruncateByPathRace: no file handle, the case that corrupted
// gocryptfs files) and writes of a fixed pattern through another
// descriptor, against readers on further descriptors. Every
// byte read must be the pattern's or zero and no read may fail; then a
// final known sequence must leave exactly the model.
func truncateRace(t *testing.T, e *contentEnv, byPath bool) {
	const n = 1<<20 + 333
	pat := make([]byte, n)
	rand.NewChaCha8([32]byte{'t', 'r'}).Read(pat)
	for i := range pat {
		if pat[i] == 0 {
			pat[i] = 1
		}
	}
	path := e.path("f")
	writeFile(t, path, pat)
	wf, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()

	var stop atomic.Bool
	var reads atomic.Int64
	var rwg, wwg sync.WaitGroup
	for r := 0; r < 2; r++ {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			flags := os.O_RDONLY
			if r == 0 {
				flags |= syscall.O_DIRECT
			}
			f, err := os.OpenFile(path, flags, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewPCG(uint64(r), 11))
			buf := make([]byte, 100<<10)
			for !stop.Load() || reads.Load() < 4 {
				off := rng.IntN(n)
				got, err := f.ReadAt(buf[:1+rng.IntN(len(buf))], int64(off))
				if err != nil && err != io.EOF {
					t.Errorf("read at %d during truncates: %v", off, err)
					return
				}
				for j := 0; j < got; j++ {
					if off+j >= n || buf[j] != 0 && buf[j] != pat[off+j] {
						t.Errorf("read during truncates: byte at %d is %#x, want %#x or 0", off+j, buf[j], pat[min(off+j, n-1)])
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	wwg.Add(2)
	go func() { // truncates
		defer wwg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < scaled(200); i++ {
			size := rng.Int64N(n + 1)
			var err error
			if byPath {
				err = os.Truncate(path, size)
			} else {
				err = wf.Truncate(size)
			}
			if err != nil {
				t.Errorf("truncate to %d: %v", size, err)
				return
			}
		}
	}()
	go func() { // writes of the pattern through another descriptor
		defer wwg.Done()
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		rng := rand.New(rand.NewPCG(3, 4))
		for i := 0; i < scaled(400); i++ {
			off := rng.IntN(n)
			end := min(n, off+1+rng.IntN(40000))
			if _, err := f.WriteAt(pat[off:end], int64(off)); err != nil {
				t.Errorf("write %d@%d during truncates: %v", end-off, off, err)
				return
			}
		}
	}()
	wwg.Wait()
	stop.Store(true)
	rwg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d reads during truncates", reads.Load())

	// The whole file must still read: pattern or zeros.
	got := readFile(t, path)
	for i, b := range got {
		if i >= n || b != 0 && b != pat[i] {
			t.Fatalf("after the race: byte at %d of %d is %#x", i, len(got), b)
		}
	}
	// A final known sequence, compared exactly.
	ref := e.refPath("f")
	if err := os.WriteFile(ref, got, 0o644); err != nil {
		t.Fatal(err)
	}
	w := openTwin(t, path, ref)
	for _, op := range []struct{ trunc, off, end int64 }{{n, 0, n}, {5000, 4000, 9000}, {70000, 65530, 65550}, {4096, 0, 0}, {n, n - 10, n}} {
		if err := w.truncate(op.trunc, byPath); err != nil {
			t.Fatal(err)
		}
		if op.end > op.off {
			if err := w.write(pat[op.off:op.end], op.off, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.verify(); err != nil {
			t.Fatal(err)
		}
	}
	e.checkCold("f", ref)
}

// contentSparse checks holes: the stored file of 1 byte at 1 GiB (and
// of a truncate up to 2 GiB) stays sparse; fallocate mode 0 extends with
// zeros and FALLOC_FL_KEEP_SIZE keeps the size; SEEK_DATA/SEEK_HOLE
// regions cover every written byte.
func contentSparse(t *testing.T, e *contentEnv) {
	layout := volumeLayout(t, e.v)

	f, err := os.Create(e.path("gig"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const gig = 1 << 30
	if _, err := f.WriteAt([]byte("x"), gig); err != nil {
		t.Fatal(err)
	}
	checkSparse := func(plain int64) {
		t.Helper()
		if fi, err := f.Stat(); err != nil || fi.Size() != plain {
			t.Fatalf("stat through the mount: %v, %v; want size %d", fi, err, plain)
		}
		var st unix.Stat_t
		if err := unix.Stat(e.stored("gig"), &st); err != nil {
			t.Fatal(err)
		}
		// docs/FORMAT.md gives the exact size; allow some room for
		// areas between the header and block 0 (the format may grow).
		if lo, hi := layout.cipherSize(plain), layout.cipherSize(plain)+1<<20; st.Size < lo || st.Size > hi {
			t.Errorf("stored size %d for %d plaintext bytes, want %d (docs/FORMAT.md, Sizes) to %d", st.Size, plain, lo, hi)
		}
		if st.Blocks*512 > 1<<20 {
			t.Errorf("stored file of %d bytes uses %d bytes on disk: the hole is not sparse", st.Size, st.Blocks*512)
		}
	}
	checkSparse(gig + 1)
	d, err := os.OpenFile(e.path("gig"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 3*4096)
	for _, off := range []int64{0, gig / 2, gig - 3*4096 - 1} {
		if n, err := d.ReadAt(buf, off); err != nil || n != len(buf) || !bytes.Equal(buf, make([]byte, len(buf))) {
			t.Fatalf("hole at %d: %d bytes, %v, zero: %v", off, n, err, bytes.Equal(buf, make([]byte, len(buf))))
		}
	}
	if n, err := d.ReadAt(buf, gig-1); n != 2 || !bytes.Equal(buf[:2], []byte{0, 'x'}) {
		t.Fatalf("read at the end: %q, %v", buf[:n], err)
	}
	// Stored blocks are not aligned to disk blocks, so a hole block next
	// to data (or to the header) may be reported as data, which POSIX
	// allows; no more than that.
	bs := layout.blockSize
	if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA); err != nil || off != 0 && (off < gig-bs || off > gig) {
		t.Errorf("SEEK_DATA from 0: %d, %v; want 0 or %d (or the block before it)", off, err, gig)
	}
	if off, err := unix.Seek(int(f.Fd()), 2*bs, unix.SEEK_DATA); err != nil || off < gig-bs || off > gig {
		t.Errorf("SEEK_DATA from %d: %d, %v; want %d (or the block before, whose stored bytes share a disk block with it)", 2*bs, off, err, gig)
	}
	if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE); err != nil || off > 2*bs {
		t.Errorf("SEEK_HOLE from 0: %d, %v; want at most %d", off, err, 2*bs)
	}
	if off, err := unix.Seek(int(f.Fd()), gig, unix.SEEK_HOLE); err != nil || off != gig+1 {
		t.Errorf("SEEK_HOLE from %d: %d, %v; want %d", gig, off, err, gig+1)
	}
	if _, err := unix.Seek(int(f.Fd()), gig+1, unix.SEEK_DATA); err != unix.ENXIO {
		t.Errorf("SEEK_DATA at EOF: %v, want ENXIO", err)
	}
	if err := f.Truncate(2 * gig); err != nil {
		t.Fatal(err)
	}
	checkSparse(2 * gig)
	// Offsets past 4 GiB and near 1 TiB, across a block edge.
	for _, off := range []int64{5*gig + 4090, 1<<40 - 3} {
		if _, err := f.WriteAt([]byte("ABCDEFGH"), off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		got := make([]byte, 10)
		if n, err := d.ReadAt(got, off-1); n != 9 || string(got[:9]) != "\x00ABCDEFGH" {
			t.Fatalf("read at %d: %q, %v", off-1, got[:n], err)
		}
	}
	checkSparse(1<<40 + 5)
	if err := f.Truncate(gig + 1); err != nil {
		t.Fatal(err)
	}
	checkSparse(gig + 1)

	// A sparse file with data here and there, fallocate, then the
	// SEEK_DATA/SEEK_HOLE map.
	w := openTwin(t, e.path("sparse"), e.refPath("sparse"))
	e.checkCold("sparse", e.refPath("sparse"))
	data := rand.NewChaCha8([32]byte{'s', 'p'})
	type span struct{ off, n int64 }
	written := []span{{0, 100}, {5*4096 + 10, 5000}, {100 * 4096, 1}, {1000*4096 - 3, 6}, {3000*4096 + 17, 4096}, {3500 * 4096, 8192}}
	for _, s := range written {
		b := make([]byte, s.n)
		data.Read(b)
		if err := w.write(b, s.off, false); err != nil {
			t.Fatal(err)
		}
	}
	size, err := w.size()
	if err != nil {
		t.Fatal(err)
	}
	fallocate := func(mode uint32, off, n int64) {
		t.Helper()
		if err := unix.Fallocate(int(w.mnt.Fd()), mode, off, n); err != nil {
			t.Fatalf("fallocate(%d, %d, %d) through the mount: %v", mode, off, n, err)
		}
		if err := unix.Fallocate(int(w.ref.Fd()), mode, off, n); err != nil {
			t.Fatal(err)
		}
	}
	fallocate(0, 200*4096+5, 3*4096)                 // inside a hole
	fallocate(0, 3000*4096, 4096+100)                // over data
	fallocate(unix.FALLOC_FL_KEEP_SIZE, size, 1<<20) // past EOF, size kept
	if s, err := w.size(); err != nil || s != size {
		t.Fatalf("after fallocate inside and KEEP_SIZE: size %d, %v; want %d", s, err, size)
	}
	fallocate(0, size-10, 1<<20+10) // mode 0 past EOF: extends
	if s, err := w.size(); err != nil || s != size+1<<20 {
		t.Fatalf("after fallocate mode 0 past EOF: size %d, %v; want %d", s, err, size+1<<20)
	}
	size += 1 << 20
	b := make([]byte, 3000)
	data.Read(b)
	if err := w.write(b, size-1500, false); err != nil { // into the allocated tail
		t.Fatal(err)
	}
	written = append(written, span{size - 1500, 3000})
	size += 1500
	if err := w.verify(); err != nil {
		t.Fatal(err)
	}

	fd := int(w.mnt.Fd())
	var regions []span
	for off := int64(0); off < size; {
		ds, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA from %d: %v", off, err)
		}
		he, err := unix.Seek(fd, ds, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE from %d: %v", ds, err)
		}
		if ds < off || he <= ds || he > size {
			t.Fatalf("SEEK_DATA from %d = %d, SEEK_HOLE from there = %d: not a region in [%d, %d]", off, ds, he, off, size)
		}
		regions = append(regions, span{ds, he - ds})
		off = he
	}
	if len(regions) == 0 || regions[len(regions)-1].off+regions[len(regions)-1].n != size {
		t.Errorf("data regions %v do not reach EOF %d (the final block is data)", regions, size)
	}
	for _, s := range written {
		for off := s.off; off < s.off+s.n; {
			in := false
			for _, r := range regions {
				if off >= r.off && off < r.off+r.n {
					off = r.off + r.n
					in = true
					break
				}
			}
			if !in {
				t.Errorf("written byte at %d is in no data region (regions %v)", off, regions)
				break
			}
		}
	}
	if len(regions) < 3 {
		t.Errorf("only %d data regions (%v) in a file with large holes", len(regions), regions)
	}
	// Holes read as zeros; the cipher file stays sparse.
	hole := make([]byte, 4096)
	for i, r := range regions[:len(regions)-1] {
		holeStart := r.off + r.n
		if n, err := w.direct.ReadAt(hole, holeStart); err != nil || n != len(hole) || !bytes.Equal(hole, make([]byte, len(hole))) {
			t.Errorf("hole %d at %d: %d bytes, %v, not all zero", i, holeStart, n, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(e.stored("sparse"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 4<<20 {
		t.Errorf("stored sparse file of %d bytes uses %d bytes", st.Size, st.Blocks*512)
	}
	t.Logf("data regions: %v", regions)
}
