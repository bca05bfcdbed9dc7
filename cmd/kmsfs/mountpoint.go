package main

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// checkMountpoint wants an existing directory that is not already a mount
// point (a second kmsfs on top of a first is almost always a mistake).
func checkMountpoint(mountpoint string) error {
	st, err := os.Stat(mountpoint)
	if err != nil {
		return fail(exitMount, "mountpoint %s does not exist: create it with mkdir", mountpoint)
	}
	if !st.IsDir() {
		return fail(exitMount, "mountpoint %s is not a directory", mountpoint)
	}
	mounted, err := isMountpoint(mountpoint)
	if err == nil && mounted {
		return fail(exitMount, "%s is already a mount point: unmount it first (kmsfs unmount %s)", mountpoint, mountpoint)
	}
	return nil
}

// isMountpoint reports whether mountpoint, its symlinks resolved where
// they resolve, is a mount point in /proc/self/mountinfo. It only reads
// that table: unlike mountinfo.Mounted it never stats the path, which can
// hang on a FUSE mount whose daemon is stuck.
func isMountpoint(mountpoint string) (bool, error) {
	if real, err := filepath.EvalSymlinks(mountpoint); err == nil {
		mountpoint = real
	}
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mountpoint))
	return len(mounts) > 0, err
}

// mountError turns a failed mount into one line that says what to do.
func mountError(mountpoint string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "fusermount"):
		return fail(exitMount, "mount %s: %v: install fuse3 (apt-get install fuse3), or run as root", mountpoint, err)
	case strings.Contains(msg, "/dev/fuse"):
		return fail(exitMount, "mount %s: %v: this machine has no usable /dev/fuse (load the fuse module, or give the container the device)", mountpoint, err)
	}
	return fail(exitMount, "mount %s: %v", mountpoint, err)
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
