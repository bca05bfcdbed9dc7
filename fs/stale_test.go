package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// replaceBehind makes a mount with files f and new, keeps f open, and
// renames new over f in CIPHERDIR, as another mount of it (or an editor's
// save there) would. The kernel's node for f is now stale.
func replaceBehind(t *testing.T) (mnt, cipher string, keep *os.File) {
	t.Helper()
	mnt, root := mountInProcess(t, Options{})
	if err := os.WriteFile(filepath.Join(mnt, "f"), bytes.Repeat([]byte("old "), 2048), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "new"), bytes.Repeat([]byte("NEW "), 2048), 0o644); err != nil {
		t.Fatal(err)
	}
	keep, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keep.Close() })
	cipher = root.vol.Dir
	if err := os.Rename(filepath.Join(cipher, "new"), filepath.Join(cipher, "f")); err != nil {
		t.Fatal(err)
	}
	return mnt, cipher, keep
}

// TestStaleNodeWritesNoOtherFile: within the entry timeout, an open of f by
// name reaches the old node. It must not write the replacement with the
// old file's data key (found by review: the write succeeded and the new
// file's block 0 failed authentication for good).
func TestStaleNodeWritesNoOtherFile(t *testing.T) {
	mnt, _, _ := replaceBehind(t)
	p := filepath.Join(mnt, "f")
	if w, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
		w.WriteAt(bytes.Repeat([]byte("x"), 4096), 0)
		w.Close()
	}
	time.Sleep(entryTimeout + 500*time.Millisecond) // let the kernel look f up again
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("f after a write through the stale node: %v", err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte("NEW "), 2048)) && !bytes.Equal(got[:4096], bytes.Repeat([]byte("x"), 4096)) {
		t.Errorf("f holds neither the replacement nor the write: %q...", got[:16])
	}
}

// TestStaleNodeOpensNoOtherFile: an open through a descriptor of the old f
// (/proc/self/fd) must not open the file that now has its name, with
// rights the kernel checked for the old one: ESTALE.
func TestStaleNodeOpensNoOtherFile(t *testing.T) {
	_, _, keep := replaceBehind(t)
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", keep.Fd()), os.O_RDWR, 0)
	if err == nil {
		f.Close()
		t.Fatal("opened the replacement through the old file's descriptor")
	}
	if !errors.Is(err, syscall.ESTALE) {
		t.Errorf("open through the old descriptor: %v, want ESTALE", err)
	}
	// A chmod through it (SETATTR without a handle) changes nothing.
	if err := syscall.Chmod(fmt.Sprintf("/proc/self/fd/%d", keep.Fd()), 0o600); !errors.Is(err, syscall.ESTALE) {
		t.Errorf("chmod through the old descriptor: %v, want ESTALE", err)
	}
	if err := unix.UtimesNano(fmt.Sprintf("/proc/self/fd/%d", keep.Fd()), []unix.Timespec{{Sec: 1}, {Sec: 1}}); !errors.Is(err, syscall.ESTALE) {
		t.Errorf("utimes through the old descriptor: %v, want ESTALE", err)
	}
	if err := unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d", keep.Fd()), "user.k", []byte("v"), 0); !errors.Is(err, syscall.ESTALE) {
		t.Errorf("setxattr through the old descriptor: %v, want ESTALE", err)
	}
}
