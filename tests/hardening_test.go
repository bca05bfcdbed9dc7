package tests

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTamperWarnsOnce: reading a damaged block again and again (cat,
// then cat again; the kernel's readahead and the retry of a short read
// ask for it too) logs one warning for the file and block, not one per
// read.
func TestTamperWarnsOnce(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), make([]byte, 3*g.BlockSize))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	c := cipherFile{t: t, path: filepath.Join(v.Dir, "f")}
	c.flip(g.blockOff(1) + 40)
	m = mountVolume(t, v)
	m.AllowWarnings = true
	for range 3 {
		if _, err := os.ReadFile(m.path("f")); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read of a damaged file: %v, want EIO", err)
		}
	}
	flushMountLog(t, m)
	n := 0
	for _, l := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "path=f ") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d warnings for one damaged block read three times, want 1:\n%s", n, m.log.String())
	}
}

// TestFIFOInPlaceOfFile: a stored file replaced by a FIFO behind the
// mount's back (another mount, or whoever can write CIPHERDIR) must not
// hang the daemon's open of it, leaving the reader in an uninterruptible
// wait for a FUSE answer: the daemon refuses it (ESTALE), and the kernel
// finds the FIFO, whose open waits for a writer as any FIFO's does.
func TestFIFOInPlaceOfFile(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	m.AllowWarnings = true
	writeFile(t, m.path("f"), []byte("a file"))
	if _, err := os.Stat(m.path("f")); err != nil { // the kernel knows it as a file now
		t.Fatal(err)
	}
	stored := filepath.Join(v.Dir, "f")
	if err := os.Remove(stored); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(stored, 0o644); err != nil {
		t.Fatal(err)
	}
	tids := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // this thread makes the open: its wait is observed
		tids <- unix.Gettid()
		f, err := os.OpenFile(m.path("f"), os.O_RDONLY, 0)
		if err == nil {
			f.Close()
		}
		done <- err
	}()
	tid := <-tids
	wchan := func() string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/wchan", tid))
		return string(b)
	}
	// Wait until the open sleeps in the FIFO's own open, waiting for a
	// writer. On a loaded machine it may first wait for the daemon's
	// answers a while; a daemon whose open hangs never answers.
	var where string
	deadline := time.Now().Add(30 * time.Second)
	for {
		where = wchan()
		if where != "" && where != "0" && !strings.Contains(where, "fuse") && !strings.Contains(where, "request_wait_answer") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the reader still waits for the daemon (%s) after 30 s: the daemon's open of the FIFO hangs", where)
			break
		}
		time.Sleep(10 * time.Millisecond) // polling /proc, not waiting for an event
	}
	t.Logf("the reader waits in %q", where)
	// A writer lets the reader go, whichever open it waits in.
	w, err := os.OpenFile(m.path("f"), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err == nil {
		w.Close()
	}
	select {
	case err := <-done:
		t.Logf("the reader's open: %v", err)
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Fatal("the reader still waits after a writer came")
	}
}

// TestOutOfRangeOffsets: a write or truncate past the largest file kmsfs
// stores fails with EFBIG (not EIO, and with no warning); SEEK_DATA at a
// negative offset fails with ENXIO, as on ext4.
func TestOutOfRangeOffsets(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	f, err := os.OpenFile(m.path("f"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("x"), 10); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 1<<61); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("write at 2^61: %v, want EFBIG", err)
	}
	if err := f.Truncate(1 << 61); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("truncate to 2^61: %v, want EFBIG", err)
	}
	if _, err := unix.Seek(int(f.Fd()), -1, unix.SEEK_DATA); !errors.Is(err, syscall.ENXIO) && !errors.Is(err, syscall.EINVAL) {
		t.Errorf("SEEK_DATA at -1: %v, want ENXIO or EINVAL", err)
	}
}

// TestMountpointRefusals: a mountpoint that is CIPHERDIR, inside it, or
// above it is refused (a mount inside its own CIPHERDIR serves itself
// back, and a find of it once ran the machine out of threads); so is a
// directory that is not empty, unless --nonempty.
func TestMountpointRefusals(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	inner := filepath.Join(v.Dir, "inner")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	full := t.TempDir()
	writeFile(t, filepath.Join(full, "hidden"), []byte("x"))
	for _, c := range []struct{ mnt, want string }{
		{v.Dir, "is CIPHERDIR itself"},
		{inner, "is inside CIPHERDIR"},
		{filepath.Dir(v.Dir), "contains CIPHERDIR"},
		{full, "is not empty"},
	} {
		_, errOut, code := mountRefused(t, v.Env, v.Dir, c.mnt)
		if code != cliExitMount || !strings.Contains(errOut, c.want) {
			t.Errorf("mount on %s: exit %d, %q; want %d and %q", c.mnt, code, errOut, cliExitMount, c.want)
		}
	}
	// Asked for, a non-empty mountpoint is mounted over.
	if _, errOut, code := run(t, v.Env, "mount", "-d", "--nonempty", "--log-file", filepath.Join(t.TempDir(), "log"), v.Dir, full); code != 0 {
		t.Fatalf("mount --nonempty: exit %d: %s", code, errOut)
	}
	_, err := os.Stat(filepath.Join(full, "hidden"))
	run(t, nil, "unmount", full)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file under the mount: %v, want it hidden", err)
	}
}

// TestUnmountOnlyKmsfs: kmsfs unmount leaves a mount that is not kmsfs's
// alone (as root it once unmounted a tmpfs).
func TestUnmountOnlyKmsfs(t *testing.T) {
	t.Parallel()
	skipUnlessRoot(t, "mounting a tmpfs needs root")
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	_, errOut, code := run(t, nil, "unmount", dir)
	if code == 0 || !strings.Contains(errOut, "not a kmsfs one") {
		t.Errorf("kmsfs unmount of a tmpfs: exit %d, %q", code, errOut)
	}
	if !cliMounted(t, dir) {
		t.Error("the tmpfs was unmounted")
	}
}

// TestStaleMount: after the mount process is killed, a new mount on the
// same mountpoint says it is a stale kmsfs mount and what to do, kmsfs
// unmount cleans it up, and the next mount works.
func TestStaleMount(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	m.AllowWarnings = true
	writeFile(t, m.path("f"), []byte("kept"))
	m.cmd.Process.Kill()
	<-m.done
	_, errOut, code := mountRefused(t, v.Env, v.Dir, m.Dir)
	if code != cliExitMount || !strings.Contains(errOut, "stale") || !strings.Contains(errOut, "kmsfs unmount") {
		t.Errorf("mount on a dead mount: exit %d, %q; want %d, naming a stale mount and kmsfs unmount", code, errOut, cliExitMount)
	}
	if _, errOut, code := run(t, nil, "unmount", m.Dir); code != 0 {
		t.Fatalf("kmsfs unmount of a dead mount: exit %d: %s", code, errOut)
	}
	m2 := mountVolume(t, v)
	if got := readFile(t, m2.path("f")); string(got) != "kept" {
		t.Errorf("after the clean-up: %q", got)
	}
}

// TestDaemonLog: a detached mount without --log-file logs to syslog, or,
// on a machine without one (no /dev/log, as in most containers), to a file
// it names, rather than dropping every line.
func TestDaemonLog(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	mnt := t.TempDir()
	state := t.TempDir()
	env := append(append([]string(nil), v.Env...), "XDG_STATE_HOME="+state)
	out, errOut, code := run(t, env, "mount", "-d", "--log-level", "debug", v.Dir, mnt)
	if code != 0 {
		t.Fatalf("mount -d: exit %d: %s", code, errOut)
	}
	defer run(t, nil, "unmount", mnt)
	_, err := os.Stat("/dev/log")
	syslogHere := err == nil
	logged := strings.Contains(out, "logging to "+state)
	if syslogHere == logged {
		t.Fatalf("syslog here: %v; stdout: %q", syslogHere, out)
	}
	if !syslogHere {
		writeFile(t, filepath.Join(mnt, "f"), []byte("x"))
		ents, _ := os.ReadDir(filepath.Join(state, "kmsfs"))
		if len(ents) != 1 {
			t.Fatalf("log files: %v", ents)
		}
		pollUntil(t, 10*time.Second, "the log file to get the mount's lines", func() bool {
			b, _ := os.ReadFile(filepath.Join(state, "kmsfs", ents[0].Name()))
			return strings.Contains(string(b), "msg=mounted")
		})
	}
}
