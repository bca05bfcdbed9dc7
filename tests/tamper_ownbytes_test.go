package tests

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestTamperOwnBytes: whoever can write CIPHERDIR rearranges a file's own
// bytes (it cuts the file, copies an aligned chunk of it over another, or
// writes back the header of a journal record it saw cleared). A file with
// a history of overwrites, shrinks, extends, appends and grows, written
// through a mount, is manipulated each of these ways into copies beside
// it; a read-only mount and then a writable one (which settles the journal
// on open) must read each copy as its true bytes, fail with EIO, or find
// it empty. Never other bytes.
func TestTamperOwnBytes(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	want := writeHistory(t, m.path("f"), int64(g.BlockSize))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	stored := readFile(t, filepath.Join(v.Dir, "f"))
	copies := ownBytesManipulations(g, stored)
	for i, b := range copies {
		if err := os.WriteFile(filepath.Join(v.Dir, fmt.Sprintf("t%04d", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, flags := range [][]string{{"--read-only"}, nil} {
		m := mountVolume(t, v, flags...)
		m.AllowWarnings = true // every damaged copy is logged
		if got := readFile(t, m.path("f")); !bytes.Equal(got, want) {
			t.Fatal("the untouched file does not read back")
		}
		ok, eio, empty := 0, 0, 0
		for i := range copies {
			got, err := os.ReadFile(m.path(fmt.Sprintf("t%04d", i)))
			switch {
			case errors.Is(err, syscall.EIO):
				eio++
			case err != nil:
				t.Fatalf("mount %v, copy %d: %v", flags, i, err)
			case len(got) == 0:
				empty++
			case bytes.Equal(got, want):
				ok++
			default:
				t.Fatalf("mount %v, copy %d: read %d bytes without an error, not the true %d bytes", flags, i, len(got), len(want))
			}
		}
		t.Logf("mount %v: %d copies: %d true, %d EIO, %d empty", flags, len(copies), ok, eio, empty)
		if err := m.unmount(); err != nil {
			t.Fatal(err)
		}
	}
}

// writeHistory writes path through a history of changes and returns its
// true contents.
func writeHistory(t *testing.T, path string, bs int64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 5))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []byte
	put := func(p []byte, off int64) {
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if end := off + int64(len(p)); end > int64(len(want)) {
			want = append(want, make([]byte, end-int64(len(want)))...)
		}
		copy(want[off:], p)
	}
	cut := func(n int64) {
		if err := f.Truncate(n); err != nil {
			t.Fatal(err)
		}
		if n <= int64(len(want)) {
			want = want[:n]
		} else {
			want = append(want, make([]byte, n-int64(len(want)))...)
		}
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	put(random(int(3*bs+100)), 0)                   // blocks 0-3
	put(random(50), bs+10)                          // overwrite inside block 1
	put(random(int(bs)), 3*bs+50)                   // extend from inside the final block
	cut(2*bs + 300)                                 // shrink into block 2
	put(random(700), int64(len(want)))              // append
	put(random(int(bs/2)), bs-100)                  // overwrite across blocks 0 and 1
	cut(int64(len(want)) + bs + 17)                 // grow
	put(random(int(bs)+200), int64(len(want))-bs/2) // extend from inside
	put(random(30), int64(len(want))-40)            // overwrite at the end
	put(random(int(bs)), int64(len(want))/bs*bs)    // append from a block boundary
	// Last, a rewrite of block 1 through the journal, then all of block 1
	// replaced (no journal): the record of the first is what a re-armed
	// journal header would bring back.
	put(random(40), bs+100)
	put(random(int(bs)), bs)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

// ownBytesManipulations returns copies of a cipher file cut at every block
// boundary and near it and at pseudo-random offsets, with each aligned
// 4 KiB chunk copied over each other one, and with journal record headers
// written back into the slots for every block (the block then damaged in
// place, and the file also cut after it).
func ownBytesManipulations(g volumeGeometry, stored []byte) [][]byte {
	var out [][]byte
	rng := rand.New(rand.NewPCG(9, 9))
	cuts := map[int64]bool{0: true, int64(g.HeaderSize): true, g.dataOff(): true}
	for i := 0; g.blockOff(i) < int64(len(stored)); i++ {
		ov := g.overhead()
		for _, d := range []int64{-ov - 1, -ov, -1, 0, 1, ov, ov + 1} {
			cuts[g.blockOff(i)+d] = true
		}
	}
	for range 40 {
		cuts[rng.Int64N(int64(len(stored)))] = true
	}
	for c := range cuts {
		if c >= 0 && c < int64(len(stored)) {
			out = append(out, stored[:c])
		}
	}
	const chunk = 4096
	for src := 0; src+chunk <= len(stored); src += chunk {
		for dst := 0; dst+chunk <= len(stored); dst += chunk {
			if src != dst {
				b := bytes.Clone(stored)
				copy(b[dst:dst+chunk], stored[src:src+chunk])
				out = append(out, b)
			}
		}
	}
	slot := (24 + g.stored() + 15) / 16 * 16
	for s := range int64(2) {
		at := int64(g.HeaderSize) + s*slot
		for i := 0; g.blockOff(i) < int64(len(stored)); i++ {
			for _, flags := range []byte{0, 1, 0x20, 0x21} {
				b := bytes.Clone(stored)
				binary.BigEndian.PutUint64(b[at:], uint64(i)+1)
				binary.BigEndian.PutUint32(b[at+8:], uint32(g.stored()))
				binary.BigEndian.PutUint32(b[at+12:], 0)
				b[at+16] = flags
				b[g.blockOff(i)+100] ^= 1
				out = append(out, b)
				if end := g.blockOff(i + 1); end < int64(len(b)) {
					out = append(out, b[:end])
				}
			}
		}
	}
	return out
}
