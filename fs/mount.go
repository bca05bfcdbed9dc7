package fs

import (
	"log/slog"
	"os"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the kernel-facing choices of a mount.
type MountOptions struct {
	// AllowOther lets other users use the mount (needs root, or
	// user_allow_other in /etc/fuse.conf). Permissions are then checked by
	// the kernel (default_permissions, always on), as on a local fs.
	AllowOther bool
	// Debug logs every FUSE request.
	Debug bool
}

// Timeouts for the kernel's caches of attributes and names. One second is
// what libfuse and gocryptfs use: a second mount of the same CIPHERDIR (a
// second host) sees changes within it, and `ls -l` of a large directory
// does not ask for every attribute twice.
const (
	entryTimeout = time.Second
	attrTimeout  = time.Second
)

// Mount mounts r at mountpoint and returns the serving FUSE server. As root
// it mounts directly (no fusermount3 needed); otherwise through
// fusermount3.
func Mount(mountpoint string, r *Root, mo MountOptions) (*fuse.Server, error) {
	et, at := entryTimeout, attrTimeout
	logger := slog.NewLogLogger(r.log.Handler(), slog.LevelInfo)
	opts := []string{"default_permissions"}
	if r.opts.ReadOnly {
		opts = append(opts, "ro")
	}
	o := &fusefs.Options{
		EntryTimeout: &et,
		AttrTimeout:  &at,
		// Without this go-fuse shows mode 0000 as 0644 (0755 for
		// directories), and default_permissions then lets anyone read
		// a chmod 000 file.
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther:  mo.AllowOther,
			Options:     opts,
			FsName:      r.opts.CipherDir,
			Name:        "kmsfs",
			DirectMount: os.Geteuid() == 0,
			// Up to 1 MiB per write request (the kernel's limit):
			// fewer round trips for large sequential writes, and
			// runs of 256 blocks to seal in parallel.
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// The kernel does POSIX and flock locks itself (within this
			// mount) when the filesystem does not claim them.
			EnableLocks: false,
			// The filesystem clears set-id bits on write and truncate
			// (killPrivFS, node.Setattr), so the kernel need not ask for
			// security.capability before every write.
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
			Debug:             mo.Debug,
			Logger:            logger,
		},
		Logger: logger,
	}
	srv, err := fuse.NewServer(killPrivFS{fusefs.NewNodeFS(r.Node(), o)}, mountpoint, &o.MountOptions)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		// As fusefs.Mount: the serve loop exits by itself.
		return nil, err
	}
	return srv, nil
}
