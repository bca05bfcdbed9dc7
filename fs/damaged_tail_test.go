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
