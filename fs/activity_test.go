package fs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestActivity: requests are counted, handles while they are open, and
// STATFS (df) is no use of the files.
func TestActivity(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The kernel sends the writer's RELEASE after close returns.
	waitActivity(t, root, func(a Activity) bool { return a.OpenFiles == 0 && a.InFlight == 0 })
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if a := root.Activity(); a.OpenFiles != 1 || a.OpenDirs != 1 || a.Requests == 0 {
		t.Errorf("with a file and a directory open: %+v", a)
	}
	f.Close()
	d.Close()
	waitActivity(t, root, func(a Activity) bool { return a.OpenFiles == 0 && a.OpenDirs == 0 && a.InFlight == 0 })

	before := root.Activity().Requests
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if a := root.Activity(); a.Requests != before {
		t.Errorf("statfs counted as %d requests", a.Requests-before)
	}
	// What `df MOUNTPOINT` does besides: stat the root, and open and
	// close it.
	if _, err := os.Stat(mnt); err != nil {
		t.Fatal(err)
	}
	rd, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	rd.Close()
	waitActivity(t, root, func(a Activity) bool { return a.OpenDirs == 0 && a.InFlight == 0 })
	if a := root.Activity(); a.Requests != before {
		t.Errorf("df's stat, open and close of the root counted as %d requests", a.Requests-before)
	}
	if _, err := os.Stat(filepath.Join(mnt, "missing")); !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if a := root.Activity(); a.Requests <= before {
		t.Errorf("a lookup was not counted: %d requests, %d before", a.Requests, before)
	}
}

// waitActivity polls (bounded) until cond holds: the kernel sends RELEASE
// after close(2) has returned.
func waitActivity(t *testing.T, root *Root, cond func(Activity) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(root.Activity()) {
		if time.Now().After(deadline) {
			t.Fatalf("activity still %+v after 10s", root.Activity())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
