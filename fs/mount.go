package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// MountOptions are the kernel-facing choices of a mount.
type MountOptions struct {
	// AllowOther lets other users use the mount (needs root, or
	// user_allow_other in /etc/fuse.conf). Permissions are then checked by
	// the kernel (default_permissions), as on a local fs.
	AllowOther bool
	// NoDefaultPermissions drops default_permissions from a root mount
	// without AllowOther, for one GETATTR round trip less per file
	// created or removed (see kernelChecks). Mount refuses it in any
	// other mount.
	NoDefaultPermissions bool
	// Debug logs every FUSE request.
	Debug bool

	// testOnlyEntryTimeout, when a test sets it, replaces entryTimeout:
	// a test that needs the kernel to keep a name cached across its steps
	// must not depend on how fast the machine runs them.
	testOnlyEntryTimeout time.Duration
}

// Timeouts for the kernel's caches of attributes and names. One second is
// what libfuse and gocryptfs use: a second mount of the same CIPHERDIR (a
// second host) sees changes within it, and `ls -l` of a large directory
// does not ask for every attribute twice.
const (
	entryTimeout = time.Second
	attrTimeout  = time.Second
)

// maxInflight bounds the FUSE requests served at once (see Mount). The
// kernel queues the others. 8 readers and the key pool's creates need a
// fraction of it.
const maxInflight = 256

// Mount mounts r at mountpoint and returns the serving FUSE server. As root
// it mounts directly (no fusermount3 needed); otherwise through
// fusermount3.
func Mount(mountpoint string, r *Root, mo MountOptions) (*fuse.Server, error) {
	et, at := entryTimeout, attrTimeout
	if mo.testOnlyEntryTimeout > 0 {
		et = mo.testOnlyEntryTimeout
	}
	logger := slog.NewLogLogger(r.log.Handler(), slog.LevelInfo)
	if mo.NoDefaultPermissions && !CanDropKernelChecks(mo, os.Getuid(), os.Geteuid()) {
		return nil, errors.New("no default_permissions: only a mount by root (user ID and effective user ID 0) without allow_other can do without the kernel's permission checks")
	}
	var opts []string
	checks := kernelChecks(mo, os.Getuid(), os.Geteuid())
	if checks {
		opts = append(opts, "default_permissions")
	}
	if r.opts.ReadOnly {
		opts = append(opts, "ro")
	}
	o := &fusefs.Options{
		EntryTimeout: &et,
		AttrTimeout:  &at,
		// Without this go-fuse shows mode 0000 as 0644 (0755 for
		// directories), and default_permissions (or go-fuse's answer
		// to ACCESS) then lets anyone read a chmod 000 file.
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther:  mo.AllowOther,
			Options:     opts,
			FsName:      r.vol.Dir,
			Name:        "kmsfs",
			DirectMount: os.Geteuid() == 0,
			// Without the kernel's checks, never fall back to
			// fusermount3, whose mount would admit the real user.
			DirectMountStrict: !checks,
			// Up to 1 MiB per write request (the kernel's limit):
			// fewer round trips for large sequential writes, and
			// runs of up to 256 blocks per seal call.
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// The kernel does POSIX and flock locks itself (within this
			// mount) when the filesystem does not claim them.
			EnableLocks: false,
			// The filesystem clears set-id bits on write and truncate
			// (killPrivFS, node.Setattr), so the kernel need not ask for
			// security.capability before every write.
			//
			// Not CAP_WRITEBACK_CACHE: with it the kernel acknowledges
			// write(2) from its page cache and sends the data later, so a
			// full disk, an unreachable KMS or a tampered block would
			// surface at fsync or close, or in no caller at all, instead
			// of as the write's own errno; and the kernel, not CIPHERDIR,
			// would decide sizes and mtimes, which two mounts sharing one
			// CIPHERDIR cannot allow. It would pay only for small writes:
			// tar's 10 KiB pieces cost one journaled rewrite each
			// (blockcipher.File.extend). The same holds for
			// FOPEN_KEEP_CACHE (see openFlags).
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
			// kmsfs answers every read with bytes it decrypted, never with
			// a file range the kernel could splice. Left on, go-fuse
			// still tries: it writes the reply header into a pipe,
			// finds nothing to splice and drains the pipe before the
			// plain writev, three wasted syscalls per read (9 % of the
			// daemon's CPU in 4 KiB random reads). With it off, go-fuse
			// takes any non-nil ReadResult as success whatever errno
			// comes with it, so file.Read returns nil with every error.
			DisableSplice: true,
			// At most maxInflight requests are read from the kernel and
			// served at once: each holds a goroutine and, while it waits
			// in a syscall, a thread. Unbounded, a pattern that makes
			// requests wait on each other (the mount reached again
			// through itself, say by a bind mount into CIPHERDIR) had the
			// daemon spawn threads until the Go runtime died of it.
			MaxInflightRequestBytes: maxInflight * (1<<20 + 64<<10),
			Debug:                   mo.Debug,
			Logger:                  logger,
		},
		Logger: logger,
	}
	srv, err := fuse.NewServer(activityFS{killPrivFS{fusefs.NewNodeFS(r.Node(), o)}, &r.activity}, mountpoint, &o.MountOptions)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		// As fusefs.Mount: the serve loop exits by itself.
		return nil, err
	}
	if os.Geteuid() == 0 {
		if err := raiseReadahead(mountpoint); err != nil {
			r.log.Warn("could not raise the mount's readahead; sequential reads will be slower", "err", err)
		}
	}
	return srv, nil
}

// kernelChecks reports whether a mount by a process with user ID uid and
// effective user ID euid has the kernel check every access against the
// mode and owner of the file (the default_permissions option), as on a
// local filesystem. kmsfs's own operations run as the daemon's user, so
// nothing else checks. Every mount does, unless NoDefaultPermissions asks
// otherwise where CanDropKernelChecks allows it.
func kernelChecks(mo MountOptions, uid, euid int) bool {
	return !mo.NoDefaultPermissions || !CanDropKernelChecks(mo, uid, euid)
}

// CanDropKernelChecks reports whether a mount may go without
// default_permissions: only one made by root (user ID and effective user
// ID 0 in the initial user namespace: not a set-user-ID program run by a
// user, nor root of a user namespace) without AllowOther, and
// mounted directly (DirectMountStrict: no fallback to fusermount3). The
// kernel lets no process into such a mount but those whose user IDs are
// all 0 (and group IDs the mount's), and those pass the checks anyway if
// they hold root's capabilities (read and write always; execute where
// some x bit is set, which the kernel checks for regular files in either
// case). access(2) and chdir come to the daemon as ACCESS requests then,
// which go-fuse answers from the file's attributes by the same rules for
// uid 0.
//
// What it saves: after each create, unlink, rename or mkdir the kernel
// forgets the directory's attributes, and with default_permissions the
// next permission check asks for them again, one GETATTR round trip per
// file changed (bench/README.md). What it gives up, and why it is not
// the default: a process with uid 0 but without root's capabilities
// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: a service whose
// capabilities were dropped) is no longer held to the files' modes and
// owners. In any other mount it would let users past the modes of files:
// other users' with AllowOther, their own read-only ones without.
func CanDropKernelChecks(mo MountOptions, uid, euid int) bool {
	return uid == 0 && euid == 0 && !mo.AllowOther && initialUserNS()
}

// initialUserNS reports whether the process runs in the initial user
// namespace, where user ID 0 is root. In another (unshare -r), 0 maps to
// some host user, and the mount would admit that user's processes.
func initialUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && slices.Equal(strings.Fields(string(b)), []string{"0", "0", "4294967295"})
}

// readaheadKiB is the kernel readahead for the mount: one read request
// carries up to 1 MiB (MaxWrite), so a sequential reader costs a quarter
// as many round trips and the daemon decrypts runs of 256 blocks. The
// kernel offers FUSE only its default 128 KiB at INIT and a filesystem
// cannot ask for more there; root can raise it afterwards in sysfs, as
// for any block device. Random readers are not affected: readahead grows
// only on sequential access. Measured on tmpfs with dd bs=128k: 0.78 GB/s
// at 128 KiB, 1.3 GB/s at 1 MiB (one core serving).
const readaheadKiB = 1024

func raiseReadahead(mountpoint string) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(readaheadKiB)+"\n"), 0)
}
