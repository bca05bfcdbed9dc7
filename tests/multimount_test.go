package tests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Two mounts of one CIPHERDIR, as two hosts sharing storage would have.
// Each kernel caches attributes and names for one second (fs/mount.go), so
// changes made through the other mount are polled for with a bounded
// deadline.

const crossMountDeadline = 10 * time.Second

// eventually polls check until it returns nil or the deadline passes, and
// then fails with its last error.
func eventually(t testing.TB, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(crossMountDeadline)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, crossMountDeadline, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func contentIs(path string, want []byte) func() error {
	return func() error {
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s has %d bytes (%.20q...), want %d", path, len(got), got, len(want))
		}
		return nil
	}
}

func TestMultiMount(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	a := mountVolume(t, v)
	b := mountVolume(t, v)

	t.Run("WriteOnAReadOnB", func(t *testing.T) {
		data := bytes.Repeat([]byte("written on A "), 5000)
		writeFile(t, a.path("ab"), data)
		if got := readFile(t, b.path("ab")); !bytes.Equal(got, data) {
			t.Fatalf("B reads %d bytes, A wrote %d", len(got), len(data))
		}
		// An overwrite on A, after B has seen the file.
		data2 := bytes.Repeat([]byte("rewritten on A"), 3000)
		writeFile(t, a.path("ab"), data2)
		eventually(t, "B sees A's rewrite", contentIs(b.path("ab"), data2))
	})

	t.Run("CreateOnBAppendOnAReadOnB", func(t *testing.T) {
		first := bytes.Repeat([]byte{'b'}, 4097)
		writeFile(t, b.path("ba"), first)
		if got := readFile(t, b.path("ba")); !bytes.Equal(got, first) {
			t.Fatal("B does not read back its own file")
		}
		eventually(t, "A sees B's file", contentIs(a.path("ba"), first))
		f, err := os.OpenFile(a.path("ba"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		more := bytes.Repeat([]byte{'a'}, 10000)
		if _, err := f.Write(more); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B sees A's append", contentIs(b.path("ba"), append(first, more...)))
	})

	t.Run("UnlinkPropagates", func(t *testing.T) {
		for i, dir := range []struct{ rm, other *mount }{{a, b}, {b, a}} {
			name := fmt.Sprintf("gone-%d", i)
			writeFile(t, dir.rm.path(name), []byte("soon gone"))
			eventually(t, "the other mount sees the new file", contentIs(dir.other.path(name), []byte("soon gone")))
			if err := os.Remove(dir.rm.path(name)); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the other mount sees the unlink", func() error {
				if _, err := os.Stat(dir.other.path(name)); !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("stat: %v, want ENOENT", err)
				}
				if _, err := os.ReadFile(dir.other.path(name)); !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("read: %v, want ENOENT", err)
				}
				return nil
			})
			ents, err := os.ReadDir(dir.other.Dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if e.Name() == name {
					t.Errorf("readdir on the other mount still lists %s", name)
				}
			}
		}
	})

	t.Run("ConcurrentExclusiveCreate", func(t *testing.T) {
		// The loser may have looked the name up between the winner's
		// create and its write: it then sees an empty file until its
		// attribute cache (1 s) expires, hence eventually.
		for round := 0; round < 8; round++ {
			name := fmt.Sprintf("excl-%d", round)
			var wg sync.WaitGroup
			errs := make([]error, 2)
			start := make(chan struct{})
			for i, m := range []*mount{a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					f, err := os.OpenFile(m.path(name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
					if err != nil {
						errs[i] = err
						return
					}
					_, err = fmt.Fprintf(f, "winner is mount %d of round %d", i, round)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						t.Errorf("round %d: mount %d won the create but: %v", round, i, err)
					}
				}()
			}
			close(start)
			wg.Wait()
			winner := -1
			for i, err := range errs {
				switch {
				case err == nil:
					if winner >= 0 {
						t.Fatalf("round %d: both mounts created %s with O_EXCL", round, name)
					}
					winner = i
				case !errors.Is(err, syscall.EEXIST):
					t.Fatalf("round %d: mount %d: %v, want success or EEXIST", round, i, err)
				}
			}
			if winner < 0 {
				t.Fatalf("round %d: neither mount created %s (%v)", round, name, errs)
			}
			want := []byte(fmt.Sprintf("winner is mount %d of round %d", winner, round))
			for _, m := range []*mount{a, b} {
				eventually(t, "the winner's content is readable", contentIs(m.path(name), want))
			}
		}
	})

	t.Run("CreatedEmptyOnAWrittenOnB", func(t *testing.T) {
		// A header-only file made on A (create, close), then filled
		// through B: both read B's bytes.
		f, err := os.Create(a.path("empty"))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		data := bytes.Repeat([]byte("filled on B "), 1000)
		eventually(t, "B sees A's empty file", contentIs(b.path("empty"), nil))
		writeFile(t, b.path("empty"), data)
		eventually(t, "A sees B's content", contentIs(a.path("empty"), data))
	})

	t.Run("RenameOnASeenOnB", func(t *testing.T) {
		if err := os.MkdirAll(a.path("d1", "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, a.path("d1", "sub", "f"), []byte("moved"))
		eventually(t, "B sees the tree", contentIs(b.path("d1", "sub", "f"), []byte("moved")))
		if err := os.Rename(a.path("d1"), a.path("d2")); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B sees the rename", contentIs(b.path("d2", "sub", "f"), []byte("moved")))
		eventually(t, "B no longer sees the old name", func() error {
			if _, err := os.Stat(b.path("d1")); !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("stat old name: %v", err)
			}
			return nil
		})
	})
}
