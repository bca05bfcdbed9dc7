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

// crashRounds is how many times TestCrash kills the mount mid-stream.
var crashRounds = envInt("KMSFS_CRASH_ROUNDS", 24)

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
		var op func() error
		p := filepath.Join(w.dir, name)
		switch r := w.rng.IntN(100); {
		case !cf.exists || r < 5:
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
			after = append(bytes.Clone(before), data...)
			op = func() error { return writeAt(p, data, int64(len(before))) }
		case r < 70: // overwrite, maybe extending
			off := w.rng.Int64N(int64(len(before)) + 1)
			data := randomBytes(w.rng, 1+w.rng.IntN(12000))
			after = bytes.Clone(before)
			if end := off + int64(len(data)); end > int64(len(after)) {
				after = append(after, make([]byte, end-int64(len(after)))...)
			}
			copy(after[off:], data)
			op = func() error { return writeAt(p, data, off) }
		case r < 85: // truncate down or up, mostly into a block
			size := w.rng.Int64N(int64(len(before))*3/2 + 10000)
			after = bytes.Clone(before)
			if size <= int64(len(after)) {
				after = after[:size]
			} else {
				after = append(after, make([]byte, size-int64(len(after)))...)
			}
			op = func() error { return os.Truncate(p, size) }
		default: // fsync
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
				w.inflight, w.before, w.after, w.err = name, before, after, err
				return
			}
			w.ops++
			continue
		}
		if err := op(); err != nil {
			w.inflight, w.before, w.after, w.err = name, before, after, err
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
	requireFUSE(t)
	v := newVolume(t, nil)
	rng := rand.New(rand.NewPCG(20261127, 1))
	w := &crashWriter{rng: rng, files: map[string]*crashFile{}}
	totalOps := 0
	inflightKinds := map[string]int{}
	for round := 0; round < crashRounds; round++ {
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
		for name, cf := range w.files {
			got, err := os.ReadFile(filepath.Join(m2.Dir, name))
			if errors.Is(err, os.ErrNotExist) && (!cf.exists || name == w.inflight) && len(cf.acked) == 0 {
				continue // never (or being) created
			}
			if err != nil {
				t.Fatalf("round %d: %s does not read after the crash: %v", round, name, err)
			}
			if name == w.inflight {
				checkInflight(t, round, name, got, w.before, w.after)
			} else if !bytes.Equal(got, cf.acked) {
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
	t.Logf("%d crash rounds, %d acknowledged operations; operations in flight at the kill: %v", crashRounds, totalOps, inflightKinds)
}

// checkInflight: in the file hit by the interrupted operation, bytes the
// operation does not change are intact, each changed byte is old, new or
// zero, and the size is between the old and the new one.
func checkInflight(t *testing.T, round int, name string, got, before, after []byte) {
	t.Helper()
	lo, hi := min(len(before), len(after)), max(len(before), len(after))
	if len(got) < lo || len(got) > hi {
		t.Fatalf("round %d: %s: size %d after a crash, want between %d and %d", round, name, len(got), lo, hi)
	}
	at := func(b []byte, i int) byte {
		if i < len(b) {
			return b[i]
		}
		return 0
	}
	for i, c := range got {
		old, new := at(before, i), at(after, i)
		if old == new && c != old {
			t.Fatalf("round %d: %s: byte %d, which the interrupted operation does not change, changed", round, name, i)
		}
		if c != old && c != new && c != 0 {
			t.Fatalf("round %d: %s: byte %d is neither old, new nor zero after a crash", round, name, i)
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
