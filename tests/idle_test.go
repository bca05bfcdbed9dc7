package tests

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestIdleUnmount: with --idle 2s, a mount stays while a file is open,
// even with no request; retries when its mountpoint is busy without an
// open file (a process's working directory); and unmounts itself, exiting
// 0, once it has had neither request nor open file for 2 s.
func TestIdleUnmount(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v, "--idle", "2s")
	writeFile(t, m.path("f"), []byte("idle"))
	f, err := os.Open(m.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	// A process whose working directory is in the mount holds no handle
	// and makes no request, but the kernel refuses the unmount (EBUSY).
	sleeper := exec.Command("sleep", "60")
	sleeper.Dir = m.Dir
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	waitLog(t, m, "files are open: staying mounted")
	if !cliMounted(t, m.Dir) {
		t.Fatal("unmounted with a file open")
	}
	f.Close()
	waitLog(t, m, "idle, but the mountpoint is busy")
	sleeper.Process.Kill()
	sleeper.Wait()

	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("still mounted 60s after the last use with --idle 2s:\n%s", m.log.String())
	}
	if m.err != nil {
		t.Errorf("kmsfs mount exited with %v after the idle unmount", m.err)
	}
	if cliMounted(t, m.Dir) {
		t.Errorf("%s still mounted after kmsfs exited", m.Dir)
	}
	if !strings.Contains(m.log.String(), "idle: no request and no open file; unmounting") {
		t.Errorf("no idle line in the log:\n%s", m.log.String())
	}
}

// waitLog polls (bounded) until the mount's log has a line containing s.
func waitLog(t *testing.T, m *mount, s string) {
	t.Helper()
	pollUntil(t, 60*time.Second, "a log line "+s, func() bool { return strings.Contains(m.log.String(), s) })
}
