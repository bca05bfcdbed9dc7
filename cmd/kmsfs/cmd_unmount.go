package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// cmdUnmount unmounts a kmsfs mount: umount(2) as root, else fusermount3.
func cmdUnmount(args []string, stdout, stderr io.Writer) error {
	fl := newFlagSet("unmount", "MOUNTPOINT", stdout)
	pos, err := parseArgs(fl, args, "MOUNTPOINT")
	if err != nil {
		return err
	}
	mnt, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	fstype, err := mountType(mnt)
	switch {
	case err != nil:
		return fail(exitUnmount, "read the mount table: %v", err)
	case fstype == "":
		// Stat only now: a stat of a mount whose daemon hangs would hang.
		if st, err := os.Stat(mnt); errors.Is(err, os.ErrNotExist) {
			return fail(exitUnmount, "%s does not exist: name the MOUNTPOINT of a kmsfs mount (see /proc/mounts)", mnt)
		} else if err == nil && !st.IsDir() {
			return fail(exitUnmount, "%s is a file, not a mountpoint", mnt)
		}
		return fail(exitUnmount, "%s is not mounted", mnt)
	case fstype != "fuse.kmsfs":
		return fail(exitUnmount, "%s is a %s mount, not a kmsfs one: kmsfs unmount leaves it alone", mnt, fstype)
	}
	if os.Geteuid() == 0 {
		if err := unix.Unmount(mnt, 0); err != nil {
			if err == unix.EBUSY {
				return fail(exitUnmount, "%s is busy: close the files open in it first", mnt)
			}
			return fail(exitUnmount, "unmount %s: %v", mnt, err)
		}
		return nil
	}
	for _, tool := range []string{"fusermount3", "fusermount"} {
		if path, err := exec.LookPath(tool); err == nil {
			out, err := exec.Command(path, "-u", mnt).CombinedOutput()
			if err != nil {
				return fail(exitUnmount, "%s -u %s: %v: %s", tool, mnt, err, out)
			}
			return nil
		}
	}
	return fail(exitUnmount, "no fusermount3 to unmount %s: install fuse3", mnt)
}
