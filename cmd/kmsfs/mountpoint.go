package main

import (
	"bufio"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

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

// isMountpoint looks mountpoint up in /proc/self/mountinfo.
func isMountpoint(mountpoint string) (bool, error) {
	if real, err := filepath.EvalSymlinks(mountpoint); err == nil {
		mountpoint = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == mountpoint {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
