package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStrayTailServesReadablePart: a torn append can leave 1 to 28 stored
// bytes after the last whole block, which no writer produces
// (docs/FORMAT.md, "Sizes"). The size is then the readable part, and a
// read of it must return its bytes: the kernel reads whole pages, so
// failing every read that reaches past the readable size made the last
// page of good bytes unreadable too (found by review).
func TestStrayTailServesReadablePart(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	want := bytes.Repeat([]byte("0123456789abcdef"), 8192/16) // two whole blocks
	if err := os.WriteFile(filepath.Join(mnt, "f"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	stored, err := os.OpenFile(filepath.Join(root.vol.Dir, "f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	stored.Write(bytes.Repeat([]byte{0xa5}, 10))
	stored.Close()
	// A direct read asks for more than the readable size, as a page
	// read of a file whose size is not a multiple of the page does.
	fd, err := unix.Open(filepath.Join(mnt, "f"), unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 65536, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		t.Fatalf("read of a file with a stray tail: %v", err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Errorf("read %d bytes, want the %d readable ones", n, len(want))
	}
}

// TestTruncateGetsPastStrayTail: a stored file cut a few bytes into its
// first block reads as empty; O_TRUNC (truncate to 0) must cut it back
// to its header so that it can be written again, rather than take the
// "nothing to cut" path and leave every later write failing (found by
// review).
func TestTruncateGetsPastStrayTail(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	l := root.layout
	if err := os.Truncate(filepath.Join(root.vol.Dir, "f"), l.HeaderSize+l.JournalSize()+10); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("written again"), 0o644); err != nil {
		t.Fatalf("O_TRUNC and write after the cut: %v", err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "written again" {
		t.Fatalf("read back %q, %v", got, err)
	}
}
