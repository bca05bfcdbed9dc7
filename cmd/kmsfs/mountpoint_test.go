package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestIsMountpoint: a mount point is found through a symlink to it, and a
// plain directory is not one.
func TestIsMountpoint(t *testing.T) {
	link := filepath.Join(t.TempDir(), "proc link")
	if err := os.Symlink("/proc", link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want bool
	}{
		{"/proc", true},
		{link, true},
		{filepath.Dir(link), false},
		{filepath.Join(filepath.Dir(link), "missing"), false},
	} {
		got, err := isMountpoint(c.path)
		if err != nil || got != c.want {
			t.Errorf("isMountpoint(%q) = %v, %v; want %v", c.path, got, err, c.want)
		}
	}
}
