package volume_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/volume"
)

func TestWalkSkipsReservedAndFollowsNoSymlink(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("x"), 0o600))
	must(os.MkdirAll(filepath.Join(dir, "a/b"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a/b/f"), nil, 0o600))
	must(os.WriteFile(filepath.Join(dir, volume.ConfigName), []byte("{}"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "a", volume.ConfigName), nil, 0o600)) // only reserved at the root
	must(os.WriteFile(filepath.Join(dir, "a", volume.TempPrefix+"1"), nil, 0o600))
	must(os.Symlink(outside, filepath.Join(dir, "link")))
	var got []string
	must(volume.Walk(dir, func(e volume.Entry) error {
		got = append(got, e.Rel)
		return nil
	}))
	want := []string{"a", "a/b", "a/b/f", "a/kmsfs.json", "link"}
	if !slices.Equal(got, want) {
		t.Fatalf("Walk visited %q, want %q", got, want)
	}
}

// A directory swapped for a symlink between the listing of its parent and
// its own opening ends the walk with an error: nothing outside CIPHERDIR
// is visited.
func TestWalkRefusesDirectorySwappedForSymlink(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := volume.Walk(dir, func(e volume.Entry) error {
		if e.Rel == "d" {
			// Swap it now, after the listing saw a directory.
			if err := os.Remove(filepath.Join(dir, "d")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(dir, "d")); err != nil {
				t.Fatal(err)
			}
		}
		if e.Name == "secret" {
			t.Errorf("the walk left CIPHERDIR: %s", e.Rel)
		}
		return nil
	})
	if !errors.Is(err, syscall.ENOTDIR) && !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("Walk over a swapped directory: %v, want ENOTDIR or ELOOP", err)
	}
}

// OpenFile opens only regular files, and a FIFO does not hang it.
func TestOpenFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), []byte("ok"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, name := range []string{"fifo", "link"} {
			if f, err := volume.OpenFile(int(d.Fd()), name); err == nil {
				f.Close()
				t.Errorf("OpenFile(%s) succeeded", name)
			}
		}
		f, err := volume.OpenFile(int(d.Fd()), "file")
		if err != nil {
			t.Errorf("OpenFile of a regular file: %v", err)
			return
		}
		f.Close()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Fatal("OpenFile hung")
	}
}

// A device node where a file was is not opened: its driver's open does
// not run. (/dev/tty's fails with ENXIO in a process without a terminal,
// so that error would show the open ran.)
func TestOpenFileOpensNoDevice(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mknod(filepath.Join(dir, "tty"), unix.S_IFCHR|0o600, int(unix.Mkdev(5, 0))); err != nil {
		if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" { // .ci/run runs as root
			t.Fatalf("mknod (KMSFS_REQUIRE_FUSE=1: CI must run this test): %v", err)
		}
		t.Skipf("mknod needs CAP_MKNOD: %v", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = volume.OpenFile(int(d.Fd()), "tty")
	if err == nil || errors.Is(err, unix.ENXIO) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("OpenFile of a device: %v, want 'not a regular file' without opening it", err)
	}
}

// A tree deeper than MaxWalkDepth stops the walk with an error naming the
// directory, instead of holding a descriptor per level without bound.
func TestWalkDepthBound(t *testing.T) {
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// mkdirat level by level: the path is too long for mkdir -p.
	fd, _ := unix.Dup(int(d.Fd()))
	for range volume.MaxWalkDepth + 5 {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	unix.Close(fd)
	dirs := 0
	err = volume.Walk(dir, func(e volume.Entry) error { dirs++; return nil })
	if err == nil || !strings.Contains(err.Error(), "levels deep") || dirs > volume.MaxWalkDepth {
		t.Errorf("Walk of a tree %d deep: %d directories, %v; want a refusal at %d", volume.MaxWalkDepth+5, dirs, err, volume.MaxWalkDepth)
	}
}
