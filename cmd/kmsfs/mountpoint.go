package main

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// checkMountpoint wants an existing, empty directory that is not already
// a mount point (a second kmsfs on top of a first is almost always a
// mistake), and neither CIPHERDIR nor inside or above it: a mount inside
// its own CIPHERDIR serves its own mount back to itself, and a walk of it
// (find) recursed until the machine ran out of threads.
func checkMountpoint(mountpoint, cipherDir string, nonempty bool) error {
	if fstype, _ := mountType(mountpoint); fstype != "" {
		if _, err := os.Stat(mountpoint); errors.Is(err, unix.ENOTCONN) {
			return fail(exitMount, "%s is a stale %s mount (its process is gone): run kmsfs unmount %s, then mount again", mountpoint, fstype, mountpoint)
		}
		return fail(exitMount, "%s is already a mount point (%s): unmount it first (kmsfs unmount %s)", mountpoint, fstype, mountpoint)
	}
	st, err := os.Stat(mountpoint)
	if err != nil {
		return fail(exitMount, "mountpoint %s does not exist: create it with mkdir", mountpoint)
	}
	if !st.IsDir() {
		return fail(exitMount, "mountpoint %s is not a directory", mountpoint)
	}
	if err := checkApart(mountpoint, cipherDir); err != nil {
		return err
	}
	if !nonempty {
		d, err := os.Open(mountpoint)
		if err != nil {
			return fail(exitMount, "mountpoint %s: %v", mountpoint, err)
		}
		names, _ := d.Readdirnames(1)
		d.Close()
		if len(names) > 0 {
			return fail(exitMount, "mountpoint %s is not empty: the mount would hide its files; use an empty directory, or --nonempty if that is what you want", mountpoint)
		}
	}
	return nil
}

// checkApart refuses a mountpoint that is CIPHERDIR, inside it, or above
// it, however either is named (symlinks resolved).
func checkApart(mountpoint, cipherDir string) error {
	m, err := filepath.EvalSymlinks(mountpoint)
	if err != nil {
		return fail(exitMount, "mountpoint %s: %v", mountpoint, err)
	}
	c, err := filepath.EvalSymlinks(cipherDir)
	if err != nil {
		return fail(exitVolume, "CIPHERDIR %s: %v", cipherDir, err)
	}
	within := func(a, b string) bool { return a == b || strings.HasPrefix(a, b+"/") || b == "/" }
	switch {
	case m == c:
		return fail(exitMount, "mountpoint %s is CIPHERDIR itself: mount the plaintext view somewhere else", mountpoint)
	case within(m, c):
		return fail(exitMount, "mountpoint %s is inside CIPHERDIR %s: the mount would serve itself; mount it outside", mountpoint, cipherDir)
	case within(c, m):
		return fail(exitMount, "mountpoint %s contains CIPHERDIR %s: the mount would hide its own files; mount it elsewhere", mountpoint, cipherDir)
	}
	return nil
}

// isMountpoint reports whether mountpoint is a mount point.
func isMountpoint(mountpoint string) (bool, error) {
	t, err := mountType(mountpoint)
	return t != "", err
}

// mountType returns the filesystem type of the mount at mountpoint (its
// symlinks resolved where they resolve), or "" if none is there. It only
// reads /proc/self/mountinfo: unlike mountinfo.Mounted it never stats the
// path, which can hang on a FUSE mount whose daemon is stuck, or fail on
// one whose daemon died.
func mountType(mountpoint string) (string, error) {
	if real, err := filepath.EvalSymlinks(mountpoint); err == nil {
		mountpoint = real
	}
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mountpoint))
	if err != nil || len(mounts) == 0 {
		return "", err
	}
	return mounts[len(mounts)-1].FSType, nil
}

// mountError turns a failed mount into one line that says what to do.
func mountError(mountpoint string, err error) error {
	msg := strings.TrimSpace(err.Error()) // go-fuse ends some in a newline
	switch {
	case strings.Contains(msg, "fusermount"):
		_, err3 := exec.LookPath("fusermount3")
		_, err2 := exec.LookPath("fusermount")
		if err3 != nil && err2 != nil {
			return fail(exitMount, "mount %s: %v: install fuse3 (apt-get install fuse3), or run as root", mountpoint, msg)
		}
		// Installed, and it refused: as a user, that is permission.
		return fail(exitMount, "mount %s: fusermount3 refused it (%v): a user needs read and write on /dev/fuse, a mountpoint of their own, and user_allow_other in /etc/fuse.conf for --allow-other; or mount as root", mountpoint, msg)
	case strings.Contains(msg, "/dev/fuse"):
		return fail(exitMount, "mount %s: %v: this machine has no usable /dev/fuse (load the fuse module, or give the container the device)", mountpoint, msg)
	}
	return fail(exitMount, "mount %s: %v", mountpoint, msg)
}

// unmountRetry unmounts; while files are open (EBUSY) it retries for ten
// seconds, then detaches the mount lazily so the process can finish once
// the last file is closed.
func unmountRetry(unmount func() error, mountpoint string, log *slog.Logger) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unmount()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("mountpoint still busy: detaching it; kmsfs exits when the last open file is closed", "mountpoint", mountpoint, "err", err.Error())
			if err := unix.Unmount(mountpoint, unix.MNT_DETACH); err != nil {
				exec.Command("fusermount3", "-u", "-z", mountpoint).Run()
			}
			return
		}
		log.Info("mountpoint busy, retrying unmount", "mountpoint", mountpoint, "err", err.Error())
		time.Sleep(time.Second)
	}
}

// kmsfsMounts returns the mountpoints where this machine (this mount
// namespace) has a kmsfs mount of cipherDir: mountinfo lists a kmsfs
// mount with type fuse.kmsfs and CIPHERDIR as its source. A mount on
// another host of a shared CIPHERDIR is not seen.
func kmsfsMounts(cipherDir string) ([]string, error) {
	names := map[string]bool{cipherDir: true}
	if real, err := filepath.EvalSymlinks(cipherDir); err == nil {
		names[real] = true
	}
	// A mount made through another path to the same directory (a
	// symlink, a bind mount) has another source string: compare the
	// directories themselves too. (Sources are CIPHERDIRs, not
	// mountpoints: a stat of one cannot wait on a FUSE daemon.)
	var want unix.Stat_t
	haveWant := unix.Stat(cipherDir, &want) == nil
	same := func(source string) bool {
		if names[source] {
			return true
		}
		var st unix.Stat_t
		return haveWant && unix.Stat(source, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino
	}
	mounts, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
		return !(i.FSType == "fuse.kmsfs" || i.FSType == "fuse" && i.Source == cipherDir) || !same(i.Source), false
	})
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	return out, err
}
