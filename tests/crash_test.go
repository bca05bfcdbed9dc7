package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// crashRounds is how many times TestCrash kills the mount mid-stream:
// KMSFS_CRASH_ROUNDS, else 24 in the long run and 4 in the default one
// (each round is a kill, a remount and a check: about 1.5 s).
func crashRounds(t testing.TB) int {
	t.Helper()
	if longRun(t) {
		return envInt("KMSFS_CRASH_ROUNDS", 24)
	}
	return envInt("KMSFS_CRASH_ROUNDS", 4)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// crashFile is the writer's knowledge of one file.
type crashFile struct {
	acked  []byte // content after the last acknowledged operation
	exists bool
}

// crashWriter appends, overwrites, truncates and fsyncs files through a
// mount until an operation fails (the mount was killed). The operation
// that failed is "in flight": it may have landed wholly, partly, or not.
type crashWriter struct {
	rng      *rand.Rand
	dir      string
	files    map[string]*crashFile
	inflight string // the file of the failed operation
	opName   string // what it was doing
	lo, hi   int64  // the byte range it writes (writes and appends only)
	before   []byte // its content before that operation
	after    []byte // its content had the operation completed
	ops      int
	err      error
}

func (w *crashWriter) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		name := fmt.Sprintf("f%d", w.rng.IntN(4))
		cf := w.files[name]
		if cf == nil {
			cf = &crashFile{}
			w.files[name] = cf
		}
		before := cf.acked
		var after []byte
		var opName string
		var lo, hi int64
		var op func() error
		p := filepath.Join(w.dir, name)
		switch r := w.rng.IntN(100); {
		case !cf.exists || r < 5:
			opName = "create/O_TRUNC"
			after = []byte{}
			op = func() error {
				f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
				if err != nil {
					return err
				}
				return f.Close()
			}
		case r < 40: // append, sometimes more than one FUSE request (1 MiB)
			n := 1 + w.rng.IntN(20000)
			if w.rng.IntN(10) == 0 {
				n = 1<<20 + w.rng.IntN(1<<20)
			}
			data := randomBytes(w.rng, n)
			opName = fmt.Sprintf("append %d at %d", n, len(before))
			lo, hi = int64(len(before)), int64(len(before)+n)
			after = append(bytes.Clone(before), data...)
			op = func() error { return writeAt(p, data, int64(len(before))) }
		case r < 70: // overwrite, maybe extending
			off := w.rng.Int64N(int64(len(before)) + 1)
			data := randomBytes(w.rng, 1+w.rng.IntN(12000))
			opName = fmt.Sprintf("write %d at %d of %d", len(data), off, len(before))
			lo, hi = off, off+int64(len(data))
			after = bytes.Clone(before)
			if end := off + int64(len(data)); end > int64(len(after)) {
				after = append(after, make([]byte, end-int64(len(after)))...)
			}
			copy(after[off:], data)
			op = func() error { return writeAt(p, data, off) }
		case r < 85: // truncate down or up, mostly into a block
			size := w.rng.Int64N(int64(len(before))*3/2 + 10000)
			opName = fmt.Sprintf("truncate %d to %d", len(before), size)
			after = bytes.Clone(before)
			if size <= int64(len(after)) {
				after = after[:size]
			} else {
				after = append(after, make([]byte, size-int64(len(after)))...)
			}
			op = func() error { return os.Truncate(p, size) }
		default: // fsync
			opName = "fsync"
			after = before
			op = func() error {
				f, err := os.OpenFile(p, os.O_RDWR, 0)
				if err != nil {
					return err
				}
				defer f.Close()
				return f.Sync()
			}
			if err := op(); err != nil {
				w.inflight, w.opName, w.before, w.after, w.err = name, opName, before, after, err
				return
			}
			w.ops++
			continue
		}
		if err := op(); err != nil {
			w.inflight, w.opName, w.before, w.after, w.err = name, opName, before, after, err
			w.lo, w.hi = lo, hi
			return
		}
		cf.acked, cf.exists = after, true
		w.ops++
	}
}

func writeAt(path string, data []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, off)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// TestCrash kills the mount with SIGKILL at random points while a writer
// appends, overwrites, truncates and fsyncs, then remounts and checks:
// every file opens and reads without error; every acknowledged operation
// is there (a killed process loses nothing the kernel already has); the
// operation in flight left each byte old, new, or zero; and every fsynced
// byte that no later operation changed reads back exactly.
func TestCrash(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	rounds := crashRounds(t)
	if !longRun(t) {
		t.Logf("%d crash rounds; the long run (KMSFS_LONG=1) makes 24", rounds)
	}
	v := newVolume(t, nil)
	rng := rand.New(rand.NewPCG(20261127, 1))  // the test's own choices
	wrng := rand.New(rand.NewPCG(20261127, 2)) // the writer's, used by its goroutine only
	w := &crashWriter{rng: wrng, files: map[string]*crashFile{}}
	totalOps := 0
	inflightKinds := map[string]int{}
	tornBlocks := 0
	for round := 0; round < rounds; round++ {
		m := mountVolume(t, v, "--key-pool", "2")
		m.AllowWarnings = true // a killed mount may log half-done work
		w.dir, w.err, w.inflight = m.Dir, nil, ""
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { w.run(stop); close(done) }()
		// Kill after a random 20-300 ms of writing.
		delay := time.Duration(20+rng.IntN(280)) * time.Millisecond
		time.Sleep(delay)
		m.cmd.Process.Kill()
		<-m.done
		close(stop)
		<-done
		syscall.Unmount(m.Dir, syscall.MNT_DETACH)
		totalOps += w.ops
		if w.err != nil {
			inflightKinds[errnoName(w.err)]++
		}

		m2 := mountVolume(t, v, "--key-pool", "0")
		m2.AllowWarnings = true // reads of a block torn while being written fail, and say so
		for name, cf := range w.files {
			p := filepath.Join(m2.Dir, name)
			if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) && (!cf.exists || name == w.inflight) && len(cf.acked) == 0 {
				continue // never (or being) created
			}
			if name == w.inflight {
				got, failed := readBlockwise(t, p)
				checkInflight(t, round, name, got, failed, w)
				// A block torn while being written stays unreadable
				// until it is written whole again: do that, so the
				// next rounds start from a readable file. A torn final
				// block (an append in flight) takes no change until the
				// file is cut back to its start, as its EIO says: a
				// final block that fails its check may be a cut, which
				// a write over it would seal (README, fsck).
				for i := range failed {
					start := int64(i) * 4096
					end := min(start+4096, int64(len(got)))
					fresh := randomBytes(rng, int(end-start))
					if end == int64(len(got)) {
						if err := os.Truncate(p, start); err != nil {
							t.Fatalf("round %d: cutting %s back to its torn final block %d: %v", round, name, i, err)
						}
					}
					if err := writeAt(p, fresh, start); err != nil {
						t.Fatalf("round %d: rewriting torn block %d of %s: %v", round, i, name, err)
					}
					copy(got[start:end], fresh)
					tornBlocks++
				}
				cf.acked, cf.exists = got, true
				continue
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatalf("round %d: %s does not read after the crash: %v (in flight: %s %s)", round, name, err, w.inflight, w.opName)
			}
			if !bytes.Equal(got, cf.acked) {
				t.Fatalf("round %d: %s: %d bytes differ from the %d acknowledged", round, name, len(got), len(cf.acked))
			}
			// Continue from what is there now. (Every fsynced byte is
			// covered by the checks above: a killed process loses no
			// acknowledged write, so fsynced bytes that no later
			// operation changed are in cf.acked.)
			cf.acked, cf.exists = got, true
		}
		if err := m2.unmount(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d crash rounds, %d acknowledged operations; operations in flight at the kill: %v; blocks torn while being written: %d", rounds, totalOps, inflightKinds, tornBlocks)
}

// readBlockwise reads a file 4 KiB block by block, bypassing the page
// cache, and returns its bytes (zeros for blocks that fail) and the
// indexes of the blocks that failed.
func readBlockwise(t *testing.T, path string) ([]byte, map[int]bool) {
	t.Helper()
	const bs = 4096
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := openDirect(path, bs)
	if err != nil {
		t.Fatalf("open %s after the crash: %v", path, err)
	}
	defer d.close()
	got := make([]byte, st.Size())
	failed := map[int]bool{}
	for i := 0; int64(i)*bs < st.Size(); i++ {
		b, err := d.block(i)
		if err != nil {
			failed[i] = true
			continue
		}
		copy(got[i*bs:], b)
	}
	return got, failed
}

// checkInflight: in the file hit by the interrupted operation, bytes the
// operation does not change are intact, each changed byte is old, new or
// zero, and the size is between the old and the new one. A 4 KiB block may
// fail to read only if the operation replaces all its old bytes or it lies
// past the old end: the blocks being written (docs/FORMAT.md, "Crash
// consistency").
func checkInflight(t *testing.T, round int, name string, got []byte, failed map[int]bool, w *crashWriter) {
	t.Helper()
	const bs = 4096
	before, after := w.before, w.after
	lo, hi := min(len(before), len(after)), max(len(before), len(after))
	if len(got) < lo || len(got) > hi {
		t.Fatalf("round %d: %s: size %d after a crash, want between %d and %d (%s)", round, name, len(got), lo, hi, w.opName)
	}
	for i := range failed {
		start := int64(i) * bs
		oldEnd := min(start+bs, int64(len(before)))
		if start < int64(len(before)) && !(w.hi > w.lo && w.lo <= start && w.hi >= oldEnd) {
			t.Fatalf("round %d: %s: block %d fails after a crash though the interrupted %s keeps some of its bytes", round, name, i, w.opName)
		}
	}
	at := func(b []byte, i int) byte {
		if i < len(b) {
			return b[i]
		}
		return 0
	}
	for i, c := range got {
		if failed[i/bs] {
			continue
		}
		old, new := at(before, i), at(after, i)
		if old == new && c != old {
			t.Fatalf("round %d: %s: byte %d, which the interrupted %s does not change, changed", round, name, i, w.opName)
		}
		if c != old && c != new && c != 0 {
			t.Fatalf("round %d: %s: byte %d is neither old, new nor zero after the interrupted %s", round, name, i, w.opName)
		}
	}
}

func errnoName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	if errors.Is(err, io.ErrShortWrite) {
		return "short write"
	}
	return "other"
}
