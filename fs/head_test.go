package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"

	"github.com/kmsfs/kmsfs/blockfile"
)

// tornStore is a stored file whose nth write (from 1) stops half-way and
// fails, as a killed process or a full disk leaves it.
type tornStore struct {
	fdStore
	n, writes int
}

func (s *tornStore) WriteAt(p []byte, off int64) (int, error) {
	s.writes++
	if s.writes == s.n {
		m, _ := s.fdStore.WriteAt(p[:len(p)/2], off)
		return m, errors.New("torn")
	}
	return s.fdStore.WriteAt(p, off)
}

// TestOpenSettlesFromHead: an open reads the header and the journal's
// record heads in one read (readHead); a file whose rewrite was torn is
// settled from its record before it is read, and a clean one is left
// alone.
func TestOpenSettlesFromHead(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	fc := cipherOf(t, r, f)
	wfd, err := unix.Open(f.path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wfd)
	torn := &tornStore{fdStore: fdStore(wfd), n: 2} // the record, then the block in place
	if _, err := (blockfile.File{C: fc, S: torn}).WriteAt([]byte("HE"), 0, int64(len(keysTestPlain))); err == nil {
		t.Fatal("the torn rewrite did not fail")
	}
	size := func() int64 {
		var st unix.Stat_t
		if err := unix.Stat(f.path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Size
	}
	pending := func() bool {
		p, err := (blockfile.File{C: fc, S: fdStore(wfd)}).JournalPending(size())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if !pending() {
		t.Fatal("no journal record left by the torn rewrite")
	}
	nodes := namedNodes(r, "f", "clean")
	n := nodes[0]
	fd, err := unix.Open(f.path, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	st, err := n.acquireAt(fd, true, size())
	if err != nil {
		t.Fatal(err)
	}
	defer n.release(st)
	if pending() {
		t.Error("the journal still holds a record after the open")
	}
	if got := readBlock0(t, r, fd, fc); got != "HEllo, kmsfs" {
		t.Errorf("block 0 reads %q after the open settled it", got)
	}

	// A clean file: nothing to settle, and nothing written.
	c := createStored(t, r, "clean")
	before := size2(t, c.path)
	cfd, err := unix.Open(c.path, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cfd)
	cn := nodes[1]
	cst, err := cn.acquireAt(cfd, true, before)
	if err != nil {
		t.Fatal(err)
	}
	cn.release(cst)
	if got := readBlock0(t, r, cfd, cipherOf(t, r, c)); got != keysTestPlain || size2(t, c.path) != before {
		t.Errorf("a clean file changed by its open: %q, %d bytes", got, size2(t, c.path))
	}
}

// cipherOf returns the cipher of a file createStored made.
func cipherOf(t *testing.T, r *Root, f storedFile) *blockcipher.Cipher {
	t.Helper()
	fd := openStored(t, f.path)
	h, err := r.vol.ReadHeader(fdStore(fd), size2(t, f.path))
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.Open(f.key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Wipe)
	return c
}

// namedNodes returns nodes of r named names in its root, which settle can
// name in its log lines. (The bridge NewNodeFS builds gives the root its
// inode; nothing is mounted.)
func namedNodes(r *Root, names ...string) []*node {
	fusefs.NewNodeFS(r.Node(), &fusefs.Options{})
	ctx := context.Background()
	var out []*node
	for i, name := range names {
		child := r.root.NewPersistentInode(ctx, &node{r: r}, fusefs.StableAttr{Mode: unix.S_IFREG, Ino: uint64(100 + i)})
		r.root.AddChild(name, child, false)
		out = append(out, child.Operations().(*node))
	}
	return out
}

func size2(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size
}

// TestOpenKeepsAtime: the header and journal reads of a cold open are
// kmsfs's own, not an access the user made: the stored file's atime does
// not move (openBacking opens with O_NOATIME). A read does move it.
func TestOpenKeepsAtime(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, []byte("some plaintext"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitNoLiveKeys(t, root)
	stored := filepath.Join(root.vol.Dir, "f")
	old := unix.NsecToTimespec(978307200e9) // 2001-01-01
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, stored, []unix.Timespec{old, {Nsec: unix.UTIME_OMIT}}, 0); err != nil {
		t.Fatal(err)
	}
	atime := func() int64 {
		var st unix.Stat_t
		if err := unix.Stat(stored, &st); err != nil {
			t.Fatal(err)
		}
		return st.Atim.Sec
	}
	for _, flag := range []int{os.O_RDONLY, os.O_RDWR} {
		f, err := os.OpenFile(p, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		waitNoLiveKeys(t, root)
		if a := atime(); a != old.Sec {
			t.Fatalf("a cold open (flags %#x) moved the stored file's atime to %d", flag, a)
		}
	}
	if _, err := os.ReadFile(p); err != nil {
		t.Fatal(err)
	}
	if a := atime(); a == old.Sec {
		t.Error("a read did not move the stored file's atime")
	}
}

// TestSetattrOfOpenFile: fchmod, fchown and futimens of an open file reach
// the daemon without a handle (tar and cp -p make them); they change the
// file through one of its open handles, also while handles close
// concurrently.
func TestSetattrOfOpenFile(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	stored := filepath.Join(root.vol.Dir, "f")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				f, err := os.OpenFile(p, os.O_RDONLY, 0)
				if err != nil {
					t.Error(err)
					return
				}
				mode := os.FileMode(0o600 | (g+i)%2*0o040)
				if err := f.Chmod(mode); err != nil {
					t.Error(err)
				}
				mt := time.Unix(int64(1e9+g*1000+i), 0)
				if err := os.Chtimes(p, mt, mt); err != nil {
					t.Error(err)
				}
				if err := f.Chown(0, 0); err != nil {
					t.Error(err)
				}
				f.Close()
			}
		})
	}
	wg.Wait()
	f, err := os.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Chmod(0o604); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1234567890, 0)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(stored)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o604 || !st.ModTime().Equal(mt) {
		t.Errorf("stored file: mode %v, mtime %v; want 0604, %v", st.Mode().Perm(), st.ModTime(), mt)
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode().Perm() != 0o604 || !fi.ModTime().Equal(mt) {
		t.Errorf("plaintext view: %v, %v; want 0604, %v", fi.Mode().Perm(), fi.ModTime(), err)
	}
}
