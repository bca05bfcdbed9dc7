package fs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestGetxattrBothPaths reads extended attributes of a file, a directory,
// a symlink and the root through the mount, with getxattrat (Linux 6.13+)
// and with the /proc path kmsfs falls back to on older kernels.
func TestGetxattrBothPaths(t *testing.T) {
	mnt, _ := mountInProcess(t, Options{})
	f, d, l := filepath.Join(mnt, "f"), filepath.Join(mnt, "d"), filepath.Join(mnt, "l")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", l); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, d, mnt} {
		if err := unix.Setxattr(p, "user.k", []byte("v:"+filepath.Base(p)), 0); err != nil {
			t.Fatalf("setxattr %s: %v", p, err)
		}
	}
	defer noGetxattrat.Store(false)
	for _, fallback := range []bool{false, true} {
		noGetxattrat.Store(fallback)
		for _, p := range []string{f, d, mnt} {
			buf := make([]byte, 64)
			n, err := unix.Getxattr(p, "user.k", buf)
			if err != nil || string(buf[:n]) != "v:"+filepath.Base(p) {
				t.Errorf("fallback %v: getxattr %s = %q, %v", fallback, p, buf[:max(n, 0)], err)
			}
			if n, err := unix.Getxattr(p, "user.k", nil); err != nil || n != len("v:"+filepath.Base(p)) {
				t.Errorf("fallback %v: size of %s = %d, %v", fallback, p, n, err)
			}
			if _, err := unix.Getxattr(p, "user.k", make([]byte, 1)); err != unix.ERANGE {
				t.Errorf("fallback %v: short buffer for %s: %v, want ERANGE", fallback, p, err)
			}
			if _, err := unix.Getxattr(p, "user.none", buf); err != unix.ENODATA {
				t.Errorf("fallback %v: missing attribute of %s: %v, want ENODATA", fallback, p, err)
			}
		}
		// A symlink's own attributes, not its target's: user.* cannot be
		// set on a symlink, so it has none.
		if _, err := unix.Lgetxattr(l, "user.k", make([]byte, 64)); err != unix.ENODATA {
			t.Errorf("fallback %v: lgetxattr of the symlink: %v, want ENODATA", fallback, err)
		}
	}
}

// TestWithoutACLs filters listxattr lists (names each ended by a NUL) in
// place, including a malformed list without its final NUL.
func TestWithoutACLs(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"user.a\x00", "user.a\x00"},
		{"system.posix_acl_access\x00", ""},
		{"user.a\x00system.posix_acl_access\x00user.b\x00system.posix_acl_default\x00", "user.a\x00user.b\x00"},
		{"system.posix_acl_default\x00security.selinux\x00", "security.selinux\x00"},
		{"system.posix_acl_accessX\x00", "system.posix_acl_accessX\x00"},
		{"user.a\x00user.tail", "user.a\x00user.tail"},
		{"system.posix_acl_access", "system.posix_acl_access"}, // no NUL: not a whole name
	} {
		if got := string(withoutACLs([]byte(c.in))); got != c.want {
			t.Errorf("withoutACLs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
