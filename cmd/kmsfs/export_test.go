package main

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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

// A directory or FIFO of CIPHERDIR swapped for a symlink after export
// looked at it has its xattrs read from the symlink, never from what the
// symlink points to, outside CIPHERDIR.
func TestExportXattrsFollowNoSymlink(t *testing.T) {
	src, dest, outside := t.TempDir(), t.TempDir(), t.TempDir()
	if err := unix.Setxattr(outside, "user.secret", []byte("outside"), 0); err != nil {
		if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" { // CI's temporary directory takes user xattrs
			t.Fatalf("no user xattrs here (KMSFS_REQUIRE_FUSE=1: CI must run this test): %v", err)
		}
		t.Skipf("no user xattrs here: %v", err)
	}
	for _, tc := range []struct {
		name string
		make func(string) error
	}{
		{"dir", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(src, tc.name)
			if err := tc.make(p); err != nil {
				t.Fatal(err)
			}
			dfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dfd)
			testOnlyAfterStat = func(volume.Entry) {
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(outside, p); err != nil {
					t.Fatal(err)
				}
			}
			defer func() { testOnlyAfterStat = nil }()
			e := &exportRun{dest: dest, links: map[[2]uint64]string{}}
			typ := fs.ModeDir
			if tc.name == "fifo" {
				typ = fs.ModeNamedPipe
			}
			var got []exportResult
			e.visit(context.Background(), volume.Entry{Rel: tc.name, DirFd: dfd, Name: tc.name, Type: typ}, func(f func() exportResult) { got = append(got, f()) })
			for _, d := range e.dirs {
				for _, x := range d.xattrs {
					if x.name == "user.secret" {
						t.Errorf("the xattrs of %s, outside CIPHERDIR, were read: %s=%q", outside, x.name, x.value)
					}
				}
			}
			for _, r := range got {
				for _, n := range r.notes {
					if strings.Contains(n, "user.secret") {
						t.Errorf("the xattrs of %s, outside CIPHERDIR, were read: %s", outside, n)
					}
				}
			}
			if v, err := unix.Getxattr(filepath.Join(dest, tc.name), "user.secret", make([]byte, 64)); err == nil {
				t.Errorf("DEST/%s has user.secret (%d bytes)", tc.name, v)
			}
		})
	}
}
