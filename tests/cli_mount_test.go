package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

func TestMountErrors(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)

	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o755)
	nonEmpty := filepath.Join(base, "nonempty")
	os.Mkdir(nonEmpty, 0o755)
	writeFile(t, filepath.Join(nonEmpty, "data.txt"), []byte("someone's data"))
	otherKey := filepath.Join(base, "other.key")
	cliWriteKey(t, otherKey, 0o600)
	notDir := filepath.Join(base, "file")
	writeFile(t, notDir, nil)

	// A copy of the volume whose config names a future format version.
	future := func(version string) string {
		dst := filepath.Join(base, "v"+version)
		if out, err := exec.Command("cp", "-a", v.Dir, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v: %s", err, out)
		}
		p := filepath.Join(dst, "kmsfs.json")
		b := readFile(t, p)
		re := regexp.MustCompile(`"format_version":\s*3,`)
		if !re.Match(b) {
			t.Fatalf("no format_version 3 in %s", b)
		}
		writeFile(t, p, re.ReplaceAll(b, []byte(`"format_version": `+version+`,`)))
		return dst
	}

	// A copy of the volume with its config edited by edit.
	edited := func(name string, edit func([]byte) []byte) string {
		dst := filepath.Join(base, name)
		if out, err := exec.Command("cp", "-a", v.Dir, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v: %s", err, out)
		}
		p := filepath.Join(dst, "kmsfs.json")
		writeFile(t, p, edit(readFile(t, p)))
		return dst
	}
	withFeature := edited("feature", func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"features": []`), []byte(`"features": ["compression"]`), 1)
	})
	withField := edited("field", func(b []byte) []byte {
		return bytes.Replace(b, []byte(`"block_size"`), []byte(`"cipher": "rot13", "block_size"`), 1)
	})
	truncatedCfg := edited("truncated", func(b []byte) []byte { return b[:len(b)/2] })
	// The volume's own key, readable by others.
	openKey := filepath.Join(base, "open.key")
	writeFile(t, openKey, readFile(t, cliReadConfig(t, v.Dir).Keyrings[0].KeyFile))
	os.Chmod(openKey, 0o644)

	cases := []struct {
		name      string
		args      []string
		code      int
		mentions  []string
		untouched string // a directory that must not change
	}{
		{"wrong key read-only", []string{"--read-only", "--local-key", otherKey, v.Dir, mnt}, cliExitKey, []string{otherKey}, v.Dir},
		{"key file open to others", []string{"--local-key", openKey, v.Dir, mnt}, cliExitKey, []string{"chmod 600"}, v.Dir},
		{"unknown feature", []string{withFeature, mnt}, cliExitVolume, []string{"compression"}, withFeature},
		{"unknown config field", []string{withField, mnt}, cliExitVolume, []string{"cipher"}, withField},
		{"truncated config", []string{truncatedCfg, mnt}, cliExitVolume, []string{"kmsfs.json"}, truncatedCfg},
		{"missing cipherdir", []string{filepath.Join(base, "nope"), mnt}, cliExitVolume, []string{"does not exist", "kmsfs init"}, ""},
		{"cipherdir is a file", []string{notDir, mnt}, cliExitVolume, []string{"not a directory"}, ""},
		{"empty dir", []string{empty, mnt}, cliExitVolume, []string{"run kmsfs init"}, empty},
		{"non-empty non-volume", []string{nonEmpty, mnt}, cliExitVolume, []string{"not a kmsfs volume"}, nonEmpty},
		{"wrong key", []string{"--local-key", otherKey, v.Dir, mnt}, cliExitKey, []string{otherKey, "--local-key"}, v.Dir},
		{"missing key file", []string{"--local-key", filepath.Join(base, "lost.key"), v.Dir, mnt}, cliExitKey, []string{"does not exist"}, v.Dir},
		{"missing mountpoint", []string{v.Dir, filepath.Join(base, "nomnt")}, cliExitMount, []string{"does not exist", "mkdir"}, v.Dir},
		{"mountpoint is a file", []string{v.Dir, notDir}, cliExitMount, []string{"not a directory"}, v.Dir},
		{"format version 4", []string{future("4"), mnt}, cliExitVolume, []string{"version 4", "not supported"}, ""},
		{"format version 999", []string{future("999"), mnt}, cliExitVolume, []string{"version 999", "not supported"}, ""},
		{"format version 0", []string{future("0"), mnt}, cliExitVolume, []string{"version 0", "not supported"}, ""},
		{"no arguments", []string{v.Dir}, cliExitUsage, []string{"MOUNTPOINT"}, ""},
		{"bad log level", []string{"--log-level", "loud", v.Dir, mnt}, cliExitUsage, []string{"log-level"}, ""},
		{"KMS endpoint for a local-key volume", []string{"--kms-endpoint", "http://127.0.0.1:9", v.Dir, mnt}, cliExitUsage, []string{"no KMS key"}, v.Dir},
		{"negative key cache TTL", []string{"--key-cache-ttl", "-1s", v.Dir, mnt}, cliExitUsage, []string{"--key-cache-ttl"}, v.Dir},
		{"negative key pool", []string{"--key-pool", "-1", v.Dir, mnt}, cliExitUsage, []string{"--key-pool"}, v.Dir},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before map[string]string
			if tc.untouched != "" {
				before = cliSnapshot(t, tc.untouched)
			}
			out, errOut, code := cliRunBounded(t, 30*time.Second, v.Env, append([]string{"mount"}, tc.args...)...)
			cliWantFail(t, "mount "+tc.name, out, errOut, code, tc.code, tc.mentions...)
			if cliMounted(t, mnt) {
				t.Errorf("%s is mounted after a refused mount", mnt)
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
			if tc.untouched != "" {
				if after := cliSnapshot(t, tc.untouched); !maps.Equal(before, after) {
					t.Errorf("a refused mount changed %s: %v -> %v", tc.untouched, before, after)
				}
			}
		})
	}

	// A mount from fstab or a unit is read from its log: a refused one
	// says why there too, not only on stderr.
	t.Run("refused with a log file", func(t *testing.T) {
		logFile := filepath.Join(t.TempDir(), "kmsfs.log")
		out, errOut, code := cliRunBounded(t, 30*time.Second, v.Env, "mount", "--log-file", logFile, "--local-key", otherKey, v.Dir, mnt)
		cliWantFail(t, "mount with the wrong key and a log file", out, errOut, code, cliExitKey, otherKey)
		if got := string(readFile(t, logFile)); !strings.Contains(got, "mount failed") || !strings.Contains(got, otherKey) {
			t.Errorf("the log of a refused mount reads %q, want its reason", got)
		}
	})

	t.Run("busy mountpoint", func(t *testing.T) {
		m := mountVolume(t, v)
		writeFile(t, m.path("f"), []byte("first mount"))
		v2 := newVolume(t, nil)
		for _, vol := range []*volume{v, v2} {
			out, errOut, code := cliRunBounded(t, 30*time.Second, vol.Env, "mount", vol.Dir, m.Dir)
			cliWantFail(t, "second mount on a busy mountpoint", out, errOut, code, cliExitMount, "already a mount point", "kmsfs unmount")
		}
		// The first mount is unharmed.
		if got := readFile(t, m.path("f")); string(got) != "first mount" {
			t.Errorf("the first mount reads %q after the refused second mount", got)
		}
		select {
		case <-m.done:
			t.Errorf("the first mount exited: %v", m.err)
		default:
		}
	})
}

// cliSnapshot maps each path under dir to a digest of its type and
// content, for "nothing changed" checks.
func cliSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			snap[rel] = fmt.Sprintf("file %x", sha256.Sum256(b))
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			snap[rel] = "symlink " + target
		default:
			snap[rel] = d.Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// cliDaemonPIDs finds running kmsfs processes serving mnt: a detached
// mount is not our child, so /proc is the only way to it.
func cliDaemonPIDs(t testing.TB, mnt string) []int {
	t.Helper()
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		if len(args) < 2 || args[0] != kmsfsBin || !slices.Contains(args, mnt) {
			continue
		}
		if cliZombie(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// cliZombie reports whether pid has exited but not been reaped (or is gone).
func cliZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// cliWaitGone polls (bounded) until no kmsfs process serves mnt.
// cliDaemonMountpoint returns a fresh mountpoint for a `kmsfs mount -d`
// test and, whatever happens, leaves no mount and no daemon behind it.
// With strict, a mount or daemon still there at the end is an error: the
// test was meant to unmount.
func cliDaemonMountpoint(t *testing.T, strict bool) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cliMounted(t, mnt) {
			if strict {
				t.Errorf("%s still mounted at the end of the test", mnt)
			}
			run(t, nil, "unmount", mnt)
			if cliMounted(t, mnt) {
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
		}
		for _, pid := range cliWaitGone(t, mnt, 5*time.Second) {
			if strict {
				t.Errorf("kmsfs daemon %d still running: killing it", pid)
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return mnt
}

func cliWaitGone(t testing.TB, mnt string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		pids := cliDaemonPIDs(t, mnt)
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cliRunDaemon runs `kmsfs mount -d`. Its output goes to files, not pipes:
// the detached child inherits stderr, and a pipe would keep the wait open
// for the daemon's whole life. The daemon's log keeps growing in errPath.
func cliRunDaemon(t *testing.T, env []string, errPath string, args ...string) (stdout, stderr string, code int, elapsed time.Duration) {
	t.Helper()
	outF, _ := os.Create(filepath.Join(t.TempDir(), "stdout"))
	errF, _ := os.Create(errPath)
	defer outF.Close()
	defer errF.Close()
	cmd := exec.Command(kmsfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = outF, errF
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("kmsfs %v did not return within 60s", args)
	}
	elapsed = time.Since(start)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	o, _ := os.ReadFile(outF.Name())
	e, _ := os.ReadFile(errF.Name())
	return string(o), string(e), code, elapsed
}

func TestMountDaemon(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	mnt := cliDaemonMountpoint(t, true)

	daemonLog := filepath.Join(t.TempDir(), "daemon.log")
	// Once mounted, a daemon logs to --log-file (syslog by default), not
	// to the stderr of whoever started it.
	logFile := filepath.Join(t.TempDir(), "kmsfs.log")
	out, errOut, code, elapsed := cliRunDaemon(t, v.Env, daemonLog, "mount", "-d", "--log-level", "debug", "--log-file", logFile, v.Dir, mnt)
	if code != cliExitOK {
		t.Fatalf("mount -d: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	t.Logf("mount -d returned after %v", elapsed.Round(time.Millisecond))
	if want := "kmsfs: mounted " + v.Dir + " on " + mnt + "\n"; out != want {
		t.Errorf("mount -d stdout = %q, want %q", out, want)
	}
	// Mounted the moment it returns: no polling here.
	if !cliMounted(t, mnt) {
		t.Fatalf("mount -d returned 0 but %s is not mounted", mnt)
	}
	pids := cliDaemonPIDs(t, mnt)
	if len(pids) != 1 {
		t.Fatalf("want one kmsfs daemon for %s, found %v", mnt, pids)
	}
	data := make([]byte, 10_000)
	rand.Read(data)
	writeFile(t, filepath.Join(mnt, "f"), data)
	if got := readFile(t, filepath.Join(mnt, "f")); !bytes.Equal(got, data) {
		t.Errorf("read back through the daemon mount differs")
	}
	if _, err := os.Stat(filepath.Join(v.Dir, "f")); err != nil {
		t.Errorf("the file is not in CIPHERDIR: %v", err)
	}
	// The daemon is in its own session, not in ours.
	if sid, err := unix.Getsid(pids[0]); err == nil && sid != pids[0] {
		t.Errorf("daemon %d is in session %d, want its own", pids[0], sid)
	}

	out, errOut, code = run(t, nil, "unmount", mnt)
	if code != cliExitOK {
		t.Fatalf("unmount: exit %d\n%s%s", code, out, errOut)
	}
	if cliMounted(t, mnt) {
		t.Errorf("%s still mounted after kmsfs unmount", mnt)
	}
	if left := cliWaitGone(t, mnt, 10*time.Second); len(left) != 0 {
		t.Errorf("daemon %v did not exit after unmount", left)
	}
	logText := string(readFile(t, logFile))
	if w := cliWarnLine.FindAllString(logText, -1); len(w) > 0 {
		t.Errorf("the daemon logged warnings: %v", w)
	}
	if !strings.Contains(logText, "msg=unmounted") {
		t.Errorf("the daemon log has no unmounted line:\n%s", logText)
	}
	// The data is on disk: a new mount reads it.
	m := mountVolume(t, v)
	if got := readFile(t, m.path("f")); !bytes.Equal(got, data) {
		t.Errorf("remount reads different data")
	}
	m.unmount()

	t.Run("bad cipherdir", func(t *testing.T) {
		for _, dir := range []string{filepath.Join(t.TempDir(), "nope"), t.TempDir()} {
			out, errOut, code, _ := cliRunDaemon(t, v.Env, filepath.Join(t.TempDir(), "log"), "mount", "--daemon", dir, mnt)
			cliWantFail(t, "mount -d of a bad CIPHERDIR", out, errOut, code, cliExitVolume, "kmsfs init")
			if cliMounted(t, mnt) {
				t.Errorf("%s mounted", mnt)
			}
			if left := cliDaemonPIDs(t, mnt); len(left) != 0 {
				t.Errorf("a failed mount -d left processes %v", left)
			}
		}
		out, errOut, code, _ := cliRunDaemon(t, v.Env, filepath.Join(t.TempDir(), "log"), "mount", "-d", v.Dir, filepath.Join(t.TempDir(), "nomnt"))
		cliWantFail(t, "mount -d on a missing mountpoint", out, errOut, code, cliExitMount, "does not exist")
	})
}

func TestMountSignals(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			v := newVolume(t, nil)
			m := mountVolume(t, v)
			data := make([]byte, 123_457)
			rand.Read(data)
			writeFile(t, m.path("last-words"), data)
			os.Mkdir(m.path("d"), 0o755)
			writeFile(t, m.path("d", "small"), []byte("x"))
			if err := m.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-m.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("kmsfs did not exit within 30s of %v", sig)
			}
			if m.err != nil {
				t.Errorf("kmsfs exited with %v after %v, want exit 0\n%s", m.err, sig, m.log.String())
			}
			if cliMounted(t, m.Dir) {
				t.Errorf("%s is still mounted after %v", m.Dir, sig)
				syscall.Unmount(m.Dir, syscall.MNT_DETACH)
			}
			if !strings.Contains(m.log.String(), "unmounted") {
				t.Errorf("log has no unmounted line:\n%s", m.log.String())
			}
			m2 := mountVolume(t, v)
			if got := readFile(t, m2.path("last-words")); !bytes.Equal(got, data) {
				t.Errorf("after %v and remount: read %d bytes, want the %d written before", sig, len(got), len(data))
			}
			if got := readFile(t, m2.path("d", "small")); string(got) != "x" {
				t.Errorf("after %v and remount: d/small = %q", sig, got)
			}
		})
	}
}

func TestMountReadOnly(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	data := []byte("read me, do not write me\n")
	writeFile(t, m.path("file"), data)
	os.Mkdir(m.path("dir"), 0o755)
	writeFile(t, m.path("dir", "inner"), data)
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	before := cliSnapshot(t, v.Dir)

	ro := mountVolume(t, v, "--read-only")
	if got := readFile(t, ro.path("file")); !bytes.Equal(got, data) {
		t.Errorf("read %q, want %q", got, data)
	}
	if got := readFile(t, ro.path("dir", "inner")); !bytes.Equal(got, data) {
		t.Errorf("read dir/inner %q, want %q", got, data)
	}
	if ents, err := os.ReadDir(ro.Dir); err != nil || len(ents) != 2 {
		t.Errorf("readdir: %v %v, want file and dir", ents, err)
	}
	erofs := map[string]func() error{
		"open for writing": func() error {
			f, err := os.OpenFile(ro.path("file"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"open read-write": func() error {
			f, err := os.OpenFile(ro.path("file"), os.O_RDWR, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"open with O_TRUNC": func() error {
			f, err := os.OpenFile(ro.path("file"), os.O_RDONLY|os.O_TRUNC, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"create": func() error {
			f, err := os.OpenFile(ro.path("new"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
			if err == nil {
				f.Close()
			}
			return err
		},
		"write file":   func() error { return os.WriteFile(ro.path("file"), []byte("x"), 0o644) },
		"unlink":       func() error { return os.Remove(ro.path("file")) },
		"unlink inner": func() error { return os.Remove(ro.path("dir", "inner")) },
		"mkdir":        func() error { return os.Mkdir(ro.path("newdir"), 0o755) },
		"rmdir":        func() error { return unix.Rmdir(ro.path("dir")) },
		"rename":       func() error { return os.Rename(ro.path("file"), ro.path("renamed")) },
		"truncate":     func() error { return os.Truncate(ro.path("file"), 0) },
		"symlink":      func() error { return os.Symlink("file", ro.path("link")) },
		"link":         func() error { return os.Link(ro.path("file"), ro.path("hard")) },
		"chmod":        func() error { return os.Chmod(ro.path("file"), 0o600) },
		"utimes":       func() error { return os.Chtimes(ro.path("file"), time.Now(), time.Now()) },
		"setxattr":     func() error { return unix.Setxattr(ro.path("file"), "user.k", []byte("v"), 0) },
		"mknod fifo":   func() error { return unix.Mkfifo(ro.path("fifo"), 0o644) },
	}
	for _, name := range slices.Sorted(maps.Keys(erofs)) {
		if err := erofs[name](); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a read-only mount: %v, want EROFS", name, err)
		}
	}
	if err := ro.unmount(); err != nil {
		t.Errorf("unmount: %v", err)
	}
	if after := cliSnapshot(t, v.Dir); !maps.Equal(before, after) {
		t.Errorf("a read-only mount changed CIPHERDIR:\nbefore %v\nafter  %v", before, after)
	}
}

// TestCLIFlagErrors: a bad flag is a usage error (exit 2) told in one
// line that points at -h, like every other refusal.
func TestCLIFlagErrors(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "cipher")
	mnt := t.TempDir()
	cases := [][]string{
		{"init", "--block-size", "x", dir},
		{"init", "--no-such-flag", dir},
		{"mount", "--no-such-flag", dir, mnt},
		{"mount", "--key-cache-ttl", "soon", dir, mnt},
		{"inspect", "--no-such-flag", dir},
	}
	for _, args := range cases {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			out, errOut, code := cliRunBounded(t, 30*time.Second, nil, args...)
			cliWantFail(t, "kmsfs "+strings.Join(args, " "), out, errOut, code, cliExitUsage, "kmsfs "+args[0]+" -h")
			if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a usage error created %s", dir)
			}
		})
	}
	// -h is not an error: the usage goes out and the exit is 0.
	out, errOut, code := run(t, nil, "init", "-h")
	if code != cliExitOK || !strings.Contains(out+errOut, "-block-size") {
		t.Errorf("init -h: exit %d, output %q", code, out+errOut)
	}
}

func TestCLIUnmountErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, errOut, code := run(t, nil, "unmount", dir)
	cliWantFail(t, "unmount of a directory that is not mounted", out, errOut, code, 14, dir, "not mounted")
	out, errOut, code = run(t, nil, "unmount")
	cliWantFail(t, "unmount without a mountpoint", out, errOut, code, cliExitUsage, "MOUNTPOINT")
}

// TestMountKMSErrors: a KMS key that cannot be used fails the mount at
// once, in one line, rather than every later create.
func TestMountKMSErrors(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	srv := kmstest.Start(t)
	base := t.TempDir()
	env := cliKMSEnv(srv, filepath.Join(base, "config"), srv.Endpoint())
	v := newVolumeIn(t, base, env, "--kms-key", kmstest.AliasName, "--kms-endpoint", srv.Endpoint())
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)

	closed := kmstest.ClosedEndpoint(t)
	start := time.Now()
	out, errOut, code := cliRunBounded(t, 60*time.Second, env, "mount", "--kms-endpoint", closed, v.Dir, mnt)
	cliWantFail(t, "mount with an unreachable KMS", out, errOut, code, cliExitKey, "check the network")
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("mount took %v to give up on a refused connection", d)
	}

	srv.DisableKey(t, kmstest.KeyAID)
	out, errOut, code = cliRunBounded(t, 60*time.Second, env, "mount", v.Dir, mnt)
	cliWantFail(t, "mount with a disabled key", out, errOut, code, cliExitKey, "disabled")
	if cliMounted(t, mnt) {
		t.Errorf("%s mounted", mnt)
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
	srv.EnableKey(t, kmstest.KeyAID)
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), []byte("enabled again"))
}

// TestMountDaemonReleasesStderr: once `kmsfs mount -d` has returned, the
// daemon must not hold the caller's stdout or stderr. A caller that
// captures the output (a shell's $(...) with 2>&1, a pipe into a logger,
// exec.Cmd with a buffer) would otherwise wait until the unmount, and once
// the reader goes away, the daemon's next log line is a write to a broken
// pipe on fd 2, which kills a Go program with SIGPIPE: the mount dies.
func TestMountDaemonReleasesStderr(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	mnt := cliDaemonMountpoint(t, false)

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(kmsfsBin, "mount", "-d", v.Dir, mnt)
	cmd.Env = append(os.Environ(), v.Env...)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mount -d: %v", err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("mount -d did not return")
	}
	if !cliMounted(t, mnt) {
		t.Fatalf("mount -d returned 0 but %s is not mounted", mnt)
	}
	// The pipe reaches EOF once no process holds its write end.
	r.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(r)
	if err != nil {
		t.Errorf("the kmsfs daemon still holds the caller's stdout/stderr after mount -d returned "+
			"(reading the pipe: %v; read so far %q): a caller capturing the output waits until the unmount", err, got)
	}
	r.Close()

	// The reader is gone. Make the daemon log a line (SIGTERM: "unmounting"),
	// and check it unmounts cleanly instead of dying of SIGPIPE with the
	// mount left dead.
	pids := cliDaemonPIDs(t, mnt)
	if len(pids) != 1 {
		t.Fatalf("want one daemon, found %v", pids)
	}
	syscall.Kill(pids[0], syscall.SIGTERM)
	if left := cliWaitGone(t, mnt, 20*time.Second); len(left) != 0 {
		t.Fatalf("daemon %v did not exit after SIGTERM", left)
	}
	if cliMounted(t, mnt) {
		_, err := os.Stat(filepath.Join(mnt, "x"))
		t.Errorf("the daemon exited on SIGTERM but %s is still mounted (stat: %v): it died writing its log to the closed pipe", mnt, err)
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}
}

// TestMountSignalWithOpenFile: SIGTERM while an application holds a file
// open. The unmount is busy; kmsfs retries, then detaches the mount and
// keeps serving the open file until it is closed, then exits 0. Nothing
// written through the open descriptor, before or after the signal, is
// lost.
func TestMountSignalWithOpenFile(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	m.AllowWarnings = true // the "still busy: detaching" warning is expected
	f, err := os.Create(m.path("open"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	first := make([]byte, 50_000)
	rand.Read(first)
	if _, err := f.Write(first); err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// kmsfs retries the busy unmount for ~10 s, then detaches.
	deadline := time.Now().Add(30 * time.Second)
	for cliMounted(t, m.Dir) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still mounted 30s after SIGTERM with a file open", m.Dir)
		}
		select {
		case <-m.done:
			t.Fatalf("kmsfs exited (%v) while a file was open and still mounted", m.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	select {
	case <-m.done:
		t.Fatalf("kmsfs exited (%v) while a file was still open: its writes are lost", m.err)
	default:
	}
	second := []byte("written after the detach")
	if _, err := f.Write(second); err != nil {
		t.Errorf("write to the open file after the detach: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("kmsfs did not exit within 30s of the last close")
	}
	if m.err != nil {
		t.Errorf("kmsfs exited with %v, want 0\n%s", m.err, m.log.String())
	}
	m2 := mountVolume(t, v)
	if got := readFile(t, m2.path("open")); !bytes.Equal(got, append(first, second...)) {
		t.Errorf("after remount the file has %d bytes, want %d (all writes through the open descriptor)", len(got), len(first)+len(second))
	}
}
