package blockfile

import (
	"testing"
)

// TestAuthentic: a file whose tail fails (a crash during an append) still
// shows a block sealed under its key; holes, garbage and another key's
// blocks never count.
func TestAuthentic(t *testing.T) {
	const bs = 512
	l := func(f File) int64 { return f.C.Layout().StoredBlockSize() }
	write := func(t *testing.T) (File, *MemStore, int64) {
		f, m := newTestFile(t, bs)
		if _, err := f.WriteAt(randBytes(10*bs), 0, 0); err != nil {
			t.Fatal(err)
		}
		return f, m, plainSize(t, f, m)
	}
	want := func(t *testing.T, f File, size int64, idx uint64, ok bool) {
		t.Helper()
		got, gotOK, err := f.Authentic(size)
		if err != nil || gotOK != ok || ok && got != idx {
			t.Fatalf("Authentic = %d, %v, %v; want %d, %v", got, gotOK, err, idx, ok)
		}
	}
	t.Run("intact", func(t *testing.T) {
		f, _, size := write(t)
		want(t, f, size, 9, true)
	})
	t.Run("torn tail", func(t *testing.T) {
		f, m, size := write(t)
		at := f.C.Layout().BlockToCipherOff(7)
		m.WriteAt(randBytes(int(2*l(f)+5)), at)
		want(t, f, size, 6, true)
	})
	t.Run("zeroed tail", func(t *testing.T) {
		f, m, size := write(t)
		at := f.C.Layout().BlockToCipherOff(4)
		m.WriteAt(make([]byte, 6*l(f)), at)
		want(t, f, size, 3, true)
	})
	t.Run("all garbage", func(t *testing.T) {
		f, m, size := write(t)
		at := f.C.Layout().BlockToCipherOff(0)
		m.WriteAt(randBytes(int(10*l(f))), at)
		want(t, f, size, 0, false)
	})
	t.Run("holes before a bad final block", func(t *testing.T) {
		f, m := newTestFile(t, bs)
		if _, err := f.WriteAt([]byte("end"), 9*bs, 0); err != nil {
			t.Fatal(err)
		}
		size := plainSize(t, f, m)
		want(t, f, size, 9, true)
		m.WriteAt(randBytes(10), f.C.Layout().BlockToCipherOff(9))
		want(t, f, size, 0, false)
	})
	t.Run("another file's key", func(t *testing.T) {
		f, m, size := write(t)
		other, _ := newTestFile(t, bs)
		want(t, File{C: other.C, S: m}, size, 0, false)
		want(t, f, size, 9, true)
	})
	t.Run("gives up", func(t *testing.T) {
		f, m := newTestFile(t, bs)
		n := int64(authenticTries + 5)
		if _, err := f.WriteAt(randBytes(int(n*bs)), 0, 0); err != nil {
			t.Fatal(err)
		}
		size := plainSize(t, f, m)
		m.WriteAt(randBytes(int((authenticTries+1)*l(f))), f.C.Layout().BlockToCipherOff(uint64(n-authenticTries-1)))
		want(t, f, size, 0, false)
	})
}
