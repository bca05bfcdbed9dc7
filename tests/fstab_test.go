package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
)

// Mounting from fstab. mount(8) runs fuse3's mount.fuse3 for a fuse.kmsfs
// line, which runs `kmsfs CIPHERDIR MOUNTPOINT -o OPTIONS` through /bin/sh
// and waits for it: kmsfs must take that form and return once mounted.

// fstabSeed writes a file through a normal mount and returns its content.
func fstabSeed(t *testing.T, v *volume) []byte {
	t.Helper()
	want := patterned(1, 3*4096+7)
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), want)
	if err := m.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	return want
}

// runFiles runs a command with output to files (a daemon it starts may
// hold them), and gives up after a minute.
func runFiles(t *testing.T, env []string, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	dir := t.TempDir()
	outF, _ := os.Create(filepath.Join(dir, "stdout"))
	errF, _ := os.Create(filepath.Join(dir, "stderr"))
	defer outF.Close()
	defer errF.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = outF, errF
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not return within a minute", name, args)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	o, _ := os.ReadFile(outF.Name())
	e, _ := os.ReadFile(errF.Name())
	return string(o), string(e), code
}

// binDir returns a directory holding the kmsfs binary under its own name,
// for a PATH.
func binDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(kmsfsBin, filepath.Join(dir, "kmsfs")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fstabCheckMount checks a read-only kmsfs mount of v at mnt holding f.
func fstabCheckMount(t *testing.T, mnt string, want []byte, wantOpts ...string) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
	if err != nil || len(mounts) != 1 {
		t.Fatalf("%s: %d mounts (%v), want one, there the moment the command returned", mnt, len(mounts), err)
	}
	mi := mounts[0]
	if mi.FSType != "fuse.kmsfs" {
		t.Errorf("%s is a %s mount, want fuse.kmsfs", mnt, mi.FSType)
	}
	opts := "," + mi.Options + "," + mi.VFSOptions + ","
	for _, o := range wantOpts {
		if !strings.Contains(opts, ","+o+",") {
			t.Errorf("mount options %q lack %s", opts, o)
		}
	}
	if got := readFile(t, filepath.Join(mnt, "f")); !bytes.Equal(got, want) {
		t.Error("f reads differently through the mount")
	}
	if err := os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a read_only mount: %v, want EROFS", err)
	}
}

// fstabUnmount unmounts with umount(8) and waits for the daemon to exit.
func fstabUnmount(t *testing.T, mnt, logFile string) {
	t.Helper()
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v: %s", mnt, err, out)
	}
	if left := cliWaitGone(t, mnt, 10*time.Second); len(left) != 0 {
		t.Errorf("kmsfs daemon %v did not exit after umount", left)
	}
	log := string(readFile(t, logFile))
	if !strings.Contains(log, "msg=unmounted") {
		t.Errorf("the daemon log has no unmounted line:\n%s", log)
	}
	if w := warnLine.FindAllString(log, 5); len(w) > 0 {
		t.Errorf("the daemon logged warnings:\n%s", strings.Join(w, "\n"))
	}
}

// TestFstabMountHelper runs mount.fuse3 exactly as mount(8) runs it for
// `mount -t fuse.kmsfs CIPHERDIR MOUNTPOINT -o OPTIONS` (mount(8) passes
// the generic flags and keeps the x-* ones to itself), with kmsfs found
// on PATH; then kmsfs itself with the options mount.fuse3 drops (nofail,
// _netdev) and mount(8)'s own ones, as a unit or a script may pass them.
func TestFstabMountHelper(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	helper, err := exec.LookPath("mount.fuse3")
	if err != nil {
		helper = "/sbin/mount.fuse3"
	}
	if _, err := os.Stat(helper); err != nil {
		t.Fatalf("no mount.fuse3 (install fuse3): %v", err)
	}
	v := newVolume(t, nil)
	want := fstabSeed(t, v)
	env := append([]string{"PATH=" + binDir(t) + ":" + os.Getenv("PATH")}, v.Env...)
	allowOther := ""
	if os.Geteuid() == 0 {
		allowOther = "allow_other,"
	}

	t.Run("mount.fuse3", func(t *testing.T) {
		mnt := cliDaemonMountpoint(t, true)
		logFile := filepath.Join(t.TempDir(), "kmsfs.log")
		opts := "rw,nosuid,nodev,noatime," + allowOther + "read_only,key_cache_ttl=30s,log_level=debug,log_file=" + logFile + ",nofail,_netdev"
		out, errOut, code := runFiles(t, env, helper, v.Dir, mnt, "-o", opts, "-t", "fuse.kmsfs")
		if code != 0 {
			t.Fatalf("mount.fuse3: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		fstabCheckMount(t, mnt, want, "ro", strings.TrimSuffix(allowOther, ","), "default_permissions")
		if log := string(readFile(t, logFile)); !strings.Contains(log, "level=DEBUG") {
			t.Errorf("log_level=debug was not applied:\n%s", log)
		}
		fstabUnmount(t, mnt, logFile)
	})

	t.Run("kmsfs", func(t *testing.T) {
		mnt := cliDaemonMountpoint(t, true)
		logFile := filepath.Join(t.TempDir(), "kmsfs.log")
		opts := "defaults,ro,noauto,nofail,_netdev,x-systemd.automount,x-systemd.requires=network-online.target,comment=x,default_permissions,log_file=" + logFile
		out, errOut, code := runFiles(t, env, kmsfsBin, v.Dir, mnt, "-o", opts)
		if code != 0 {
			t.Fatalf("kmsfs CIPHERDIR MOUNTPOINT -o %s: exit %d\nstdout: %s\nstderr: %s", opts, code, out, errOut)
		}
		fstabCheckMount(t, mnt, want, "ro", "default_permissions")
		fstabUnmount(t, mnt, logFile)
	})
}

// TestFstabMountCommand mounts an fstab line with mount(8) itself. mount(8)
// runs helpers with no PATH of their own, so sh finds programs in the
// system's directories only: the test runs in a mount namespace of its
// own, where a directory holding kmsfs is bound over /usr/local/sbin.
func TestFstabMountCommand(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	skipUnlessRoot(t, "mount(8) mounts an fstab line as root")
	for _, tool := range []string{"unshare", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (install util-linux and mount): %v", tool, err)
		}
	}
	v := newVolume(t, nil)
	want := fstabSeed(t, v)
	mnt := cliDaemonMountpoint(t, true)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "kmsfs.log")
	fstab := filepath.Join(dir, "fstab")
	line := fmt.Sprintf("%s %s fuse.kmsfs ro,allow_other,key_cache_ttl=30s,log_file=%s,nofail,_netdev,noauto,x-systemd.automount,x-systemd.idle-timeout=5min 0 0\n", v.Dir, mnt, logFile)
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	script := `set -e
mount --make-rprivate /
mount --bind "$BIN" /usr/local/sbin
mount -T "$FSTAB" "$MNT"
grep -q " $MNT fuse.kmsfs ro," /proc/self/mounts
cat "$MNT/f" > "$PLAIN"
if touch "$MNT/new" 2>/dev/null; then echo "the ro mount took a write" >&2; exit 3; fi
umount "$MNT"
`
	env := append([]string{"BIN=" + binDir(t), "FSTAB=" + fstab, "MNT=" + mnt, "PLAIN=" + plain}, v.Env...)
	out, errOut, code := runFiles(t, env, "unshare", "--mount", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("mount -T fstab in a mount namespace: exit %d\nstdout: %s\nstderr: %s\nlog: %s", code, out, errOut, tryRead(logFile))
	}
	if got := readFile(t, plain); !bytes.Equal(got, want) {
		t.Error("f read through the fstab mount differs")
	}
	if left := cliWaitGone(t, mnt, 10*time.Second); len(left) != 0 {
		t.Errorf("kmsfs daemon %v did not exit after umount", left)
	}
	log := string(readFile(t, logFile))
	if !strings.Contains(log, "msg=unmounted") {
		t.Errorf("the daemon log has no unmounted line:\n%s", log)
	}
}

// TestFstabRefusesFirstUse: a mount from fstab does not trust a volume
// this machine has no trusted copy of (nobody is there at boot to check
// the keys it names), and with no HOME, as systemd runs mount units, it
// looks for the copies in the user's home from the password database.
func TestFstabRefusesFirstUse(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	fillVolume(t, v, 2) // files that attest its keys: a first use by hand would mount
	mnt := t.TempDir()
	t.Cleanup(func() { // should a mount happen
		if cliMounted(t, mnt) {
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	})
	other := "XDG_CONFIG_HOME=" + t.TempDir() // a machine that never saw it
	out, errOut, code := run(t, []string{other}, v.Dir, mnt, "-o", "ro")
	cliWantFail(t, "a first mount from fstab", out, errOut, code, cliExitVolume, "does not trust a volume on first sight")
	if cliMounted(t, mnt) {
		t.Fatal("a volume never seen here was mounted from fstab")
	}

	u, err := user.LookupId(strconv.Itoa(os.Geteuid()))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kmsfsBin, v.Dir, mnt, "-o", "ro")
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HOME=") && !strings.HasPrefix(e, "XDG_CONFIG_HOME=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if want := filepath.Join(u.HomeDir, ".config", "kmsfs", "trusted"); err == nil || !strings.Contains(stderr.String(), want) {
		t.Errorf("mount from fstab without HOME: %v, %s; want a refusal that looked in %s", err, stderr.String(), want)
	}
	if cliMounted(t, mnt) {
		t.Fatal("mounted without HOME")
	}
}

// TestFstabOptionErrors: an unknown option, or one that needs a value and
// has none, is refused in one line before anything is mounted; so is
// trust_config, which in fstab would re-trust any kmsfs.json at each boot.
func TestFstabOptionErrors(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	mnt := t.TempDir()
	for _, c := range []struct{ opts, want string }{
		{"ro,frobnicate", "-o frobnicate: unknown mount option"},
		{"key_cache_ttl", "-o key_cache_ttl needs a value"},
		{"key_cache_ttl=soon", "-o key_cache_ttl=soon:"},
		{"trust_config", "-o trust_config: accept a changed kmsfs.json once, by hand"},
		{"rw,trust-config", "-o trust_config: accept a changed kmsfs.json once, by hand"},
		{"debug_fuse", "-o debug_fuse logs plaintext"},
		{"daemon", "-o daemon: unknown mount option"},
		{"fsname=x", "-o fsname=x: unknown mount option"},
	} {
		out, errOut, code := run(t, v.Env, v.Dir, mnt, "-o", c.opts)
		cliWantFail(t, "-o "+c.opts, out, errOut, code, cliExitUsage, c.want)
		if cliMounted(t, mnt) {
			t.Fatalf("-o %s mounted", c.opts)
		}
	}
	out, errOut, code := run(t, v.Env, v.Dir, mnt, "--read-only")
	cliWantFail(t, "the mount(8) form with a flag", out, errOut, code, cliExitUsage, "as a mount helper kmsfs takes CIPHERDIR MOUNTPOINT -o OPTIONS only")
}

func tryRead(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
