package fs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// openBeneath (the prefetcher's open of a listed file by its path) never
// follows a symlink at any component and never leaves the directory: a
// directory swapped for a symlink after a listing cannot send the daemon
// to files outside CIPHERDIR.
func TestOpenBeneath(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "d/e"), 0o755))
	must(os.WriteFile(filepath.Join(root, "d/e/f"), []byte("in"), 0o600))
	must(os.WriteFile(filepath.Join(outside, "f"), []byte("out"), 0o600))
	must(os.Symlink(outside, filepath.Join(root, "d/link")))
	must(os.Symlink("../../..", filepath.Join(root, "d/e/up")))
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	must(err)
	defer unix.Close(rfd)
	fd, err := openBeneath(rfd, "d/e/f", unix.O_RDONLY)
	if err != nil {
		t.Fatalf("a plain path: %v", err)
	}
	unix.Close(fd)
	for _, p := range []string{"d/link/f", "d/e/up/f", "../" + filepath.Base(outside) + "/f", filepath.Join(outside, "f"), "d/link"} {
		if fd, err := openBeneath(rfd, p, unix.O_RDONLY); err == nil {
			unix.Close(fd)
			t.Errorf("openBeneath(%q) succeeded", p)
		}
	}
}
