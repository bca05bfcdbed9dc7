package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestChmodAtFollowsNoSymlink: both ways of changing a mode by name set
// a regular file's mode and refuse a symlink without touching its target.
func TestChmodAtFollowsNoSymlink(t *testing.T) {
	for name, chmod := range map[string]func(int, string, uint32) error{"fchmodat2": chmodAt, "O_PATH": chmodByFd} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(t.TempDir(), "target")
			if err := os.WriteFile(target, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, "l")); err != nil {
				t.Fatal(err)
			}
			dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dfd)
			if err := chmod(dfd, "f", 0o4751); err != nil {
				t.Fatalf("chmod of a regular file: %v", err)
			}
			if st, _ := os.Stat(filepath.Join(dir, "f")); st.Mode() != os.ModeSetuid|0o751 {
				t.Errorf("regular file's mode: %v, want urwxr-x--x", st.Mode())
			}
			if err := chmod(dfd, "l", 0o4777); !errors.Is(err, unix.EOPNOTSUPP) {
				t.Errorf("chmod of a symlink: %v, want EOPNOTSUPP", err)
			}
			if st, _ := os.Stat(target); st.Mode() != 0o600 {
				t.Errorf("the symlink's target became %v", st.Mode())
			}
		})
	}
}

// TestChmodDoesNotLeaveCipherDir: a stored file replaced by a symlink
// behind the mount's back (another mount of CIPHERDIR, or anyone who can
// write it) must not let a chmod through the mount reach the symlink's
// target, outside CIPHERDIR. Found by review: fchmodat(2) follows.
func TestChmodDoesNotLeaveCipherDir(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	outside := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(outside, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stored := filepath.Join(root.vol.Dir, "f")
	if err := os.Remove(stored); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, stored); err != nil {
		t.Fatal(err)
	}
	// By path (no file handle in the SETATTR) through the open file.
	err = syscall.Chmod(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), 0o4777)
	if st, serr := os.Stat(outside); serr != nil || st.Mode() != 0o600 {
		t.Fatalf("chmod through the mount (%v) changed a file outside CIPHERDIR: now %v", err, st.Mode())
	}
}

// TestFchmodUnlinkedOpenFile: fchmod of an open file that was unlinked
// works, as on ext4 (found by review: ENOENT, looking for its name).
func TestFchmodUnlinkedOpenFile(t *testing.T) {
	mnt, _ := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o600); err != nil {
		t.Fatalf("fchmod of an unlinked open file: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&0o777 != 0o600 {
		t.Fatalf("mode %o, %v; want 600", st.Mode&0o777, err)
	}
}

// TestReadOnlyTruncOpen: open(O_RDONLY|O_TRUNC) truncates, as on ext4.
// (A review feared EINVAL from an ftruncate of the read-only descriptor;
// go-fuse does not ask for atomic O_TRUNC, so the kernel truncates with a
// SETATTR before the open, which this keeps true.)
func TestReadOnlyTruncOpen(t *testing.T) {
	mnt, _ := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatalf("open O_RDONLY|O_TRUNC: %v", err)
	}
	f.Close()
	if got, err := os.ReadFile(p); err != nil || len(got) != 0 {
		t.Fatalf("after O_RDONLY|O_TRUNC: %q, %v; want empty", got, err)
	}
}
