package main

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/volume"
)

// A directory of CIPHERDIR swapped for a symlink between the walk's
// listing (which says directory, and descends) and export's look at it
// makes neither a symlink in DEST nor a directory: the walk would write the
// directory's files through the symlink, outside DEST.
func TestExportVisitRefusesTypeChange(t *testing.T) {
	src, dest, outside := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.Symlink(outside, filepath.Join(src, "d")); err != nil {
		t.Fatal(err)
	}
	dfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	e := &exportRun{dest: dest, links: map[[2]uint64]string{}}
	var got []exportResult
	submit := func(f func() exportResult) { got = append(got, f()) }
	// The listing said directory; it is a symlink now.
	err = e.visit(context.Background(), volume.Entry{Rel: "d", DirFd: dfd, Name: "d", Type: fs.ModeDir}, submit)
	if err != volume.SkipDir {
		t.Errorf("visit returned %v, want SkipDir (the walk must not descend)", err)
	}
	if len(got) != 1 || got[0].fatal == nil {
		t.Errorf("results %+v, want one failure", got)
	}
	if _, err := os.Lstat(filepath.Join(dest, "d")); !os.IsNotExist(err) {
		t.Errorf("DEST/d made: %v", err)
	}
}
