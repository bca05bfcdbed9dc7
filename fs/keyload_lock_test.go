package fs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A shared flock that someone who can only read CIPHERDIR holds on a new
// file's stored file makes the header's lock give up, not wait for good;
// once it is let go the lock is taken.
func TestLockHeaderGivesUp(t *testing.T) {
	old := headerLockWait
	headerLockWait = 50 * time.Millisecond
	t.Cleanup(func() { headerLockWait = old })
	p := filepath.Join(t.TempDir(), "stored")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	holder, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := lockHeader(int(f.Fd())); err == nil {
		t.Fatal("took the lock another holds")
	}
	unix.Flock(int(holder.Fd()), unix.LOCK_UN)
	if err := lockHeader(int(f.Fd())); err != nil {
		t.Fatalf("after the holder let go: %v", err)
	}
}
