package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/blockfile"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// Options configure a Root.
type Options struct {
	// Volume is the opened CIPHERDIR.
	Volume *volume.Volume
	// Keyring generates and unwraps data keys (cmd/kmsfs builds it from
	// the volume config, with any cache or metrics wrappers).
	Keyring keyring.Keyring
	// Logger receives one line per failure, never key bytes.
	Logger *slog.Logger
	// ReadOnly refuses every change with EROFS.
	ReadOnly bool
	// KeyPool is how many data keys for new files are generated ahead of
	// time in the background (0: none; every create waits for the keyring).
	KeyPool int
	// PrefetchKeys unwraps the keys of a listed directory's files ahead of
	// their opens (prefetch.go): eager, for backup tools.
	PrefetchKeys bool
	// KeyReadahead unwraps the keys of the files a scan of a directory
	// will open next, once it sees one (readahead.go).
	KeyReadahead bool
}

// Root is the shared state of one mount: the volume, the backing
// directory and the keyring. Per-inode state lives on the nodes.
type Root struct {
	opts    Options
	vol     *volume.Volume
	keyring keyring.Keyring // opts.Keyring, behind ahead when prefetching
	rootFd  int             // O_PATH descriptor of CIPHERDIR; every backing call is relative to it
	dev     uint64
	inPlace bool // the backing filesystem rewrites allocated bytes in place (see inPlaceFS)
	// shortEOF: a short read of a stored file on the backing filesystem
	// means the file ends there (see shortEOFFS).
	shortEOF bool
	layout   blockcipher.Layout
	log      *slog.Logger
	pool     *keyPool       // nil when Options.KeyPool is 0
	ahead    *keyring.Ahead // nil unless Options.PrefetchKeys or KeyReadahead
	ra       *readahead     // nil unless Options.KeyReadahead
	root     *node
	stats    stats
	warned   warnLimiter
	outage   outageKeys
	// activity counts requests and handles (activity.go).
	activity activity
}

// keyringTimeout bounds one keyring call made for a file operation (the
// AWS keyring has its own, shorter, per-call bound).
const keyringTimeout = 60 * time.Second

// NewRoot checks the backing directory and returns the filesystem root.
// Close releases it after unmount.
func NewRoot(opts Options) (*Root, error) {
	if opts.Volume == nil || opts.Keyring == nil {
		return nil, errors.New("fs: Options need a Volume and a Keyring")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dir := opts.Volume.Dir
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	var sfs unix.Statfs_t
	statfsOK := unix.Fstatfs(fd, &sfs) == nil
	inPlace := statfsOK && inPlaceFS[int64(sfs.Type)]
	shortEOF := statfsOK && shortEOFFS[int64(sfs.Type)]
	r := &Root{
		opts:     opts,
		vol:      opts.Volume,
		keyring:  opts.Keyring,
		rootFd:   fd,
		dev:      uint64(st.Dev),
		inPlace:  inPlace,
		shortEOF: shortEOF,
		layout:   opts.Volume.Layout,
		log:      opts.Logger,
	}
	r.root = &node{r: r}
	r.keyring = noting{inner: opts.Keyring, o: &r.outage}
	if opts.PrefetchKeys || opts.KeyReadahead {
		r.ahead = newAhead(r.keyring)
		r.keyring = r.ahead
	}
	// Both, with --prefetch-keys: a listing's prefetch skips the files
	// read in the last moments (readaheadRecent), so a second pass
	// right after the first gets its keys from the readahead.
	if opts.KeyReadahead {
		r.ra = &readahead{r: r}
	}
	// Last: the pool's workers start calling r.keyring at once.
	if opts.KeyPool > 0 && !opts.ReadOnly {
		r.pool = newKeyPool(r, opts.KeyPool)
	}
	return r, nil
}

// inPlaceFS lists the backing filesystems (statfs f_type) known to
// rewrite allocated bytes in place, taking any new space when a write is
// made: there an append needs no fallocate first to fail cleanly on a full
// disk (blockcipher.File.extend), and skipping it keeps ext4 from
// scattering a file written in pieces over many extents. Anywhere else
// (btrfs and ZFS copy on write; NFS or FUSE could be anything) appends
// reserve their space first, as every other extension does.
var inPlaceFS = map[int64]bool{
	unix.EXT4_SUPER_MAGIC: true, // also ext2 and ext3
	unix.XFS_SUPER_MAGIC:  true,
	unix.TMPFS_MAGIC:      true,
}

// shortEOFFS lists the backing filesystems (statfs f_type) whose reads of
// a regular file opened without O_DIRECT return fewer bytes than asked
// only at the end of the file (they read through the page cache, which
// fills a read until its end or the file's). There one pread answers
// where a file ends; elsewhere a second pread must see 0 bytes.
var shortEOFFS = map[int64]bool{
	unix.EXT4_SUPER_MAGIC:  true,
	unix.XFS_SUPER_MAGIC:   true,
	unix.TMPFS_MAGIC:       true,
	unix.BTRFS_SUPER_MAGIC: true,
}

// store returns the blockfile.Store of the stored file open at fd, with
// one pread per read where a short read means the end of the file.
func (r *Root) store(fd int) blockfile.Store {
	if r.shortEOF {
		return eofStore{fdStore(fd)}
	}
	return fdStore(fd)
}

// Node returns the root node, to be mounted.
func (r *Root) Node() fusefs.InodeEmbedder { return r.root }

// Close wipes pooled keys and closes the backing directory. Call it after
// the server has stopped.
func (r *Root) Close() error {
	if r.pool != nil {
		r.pool.close()
	}
	if r.ahead != nil {
		r.ahead.Close()
	}
	r.outage.wipe()
	return unix.Close(r.rootFd)
}

// keyCtx returns the context for one keyring call: kmsfs's own deadline,
// detached from the FUSE request, whose context the kernel cancels when
// the calling thread gets any signal.
func keyCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), keyringTimeout)
}

// idFromStat composes a stable inode number from the backing device and
// inode, as go-fuse's loopback does, so hard links share one inode.
func (r *Root) idFromStat(dev, ino, gen uint64, mode uint32) fusefs.StableAttr {
	swapped := (dev << 32) | (dev >> 32)
	swappedRoot := (r.dev << 32) | (r.dev >> 32)
	return fusefs.StableAttr{Mode: mode & unix.S_IFMT, Gen: gen, Ino: (swapped ^ swappedRoot) ^ ino}
}

// processUID and processGID are the daemon's effective IDs, read once:
// each is a syscall, and a create asks for them.
var (
	processUID = sync.OnceValue(func() uint32 { return uint32(os.Geteuid()) })
	processGID = sync.OnceValue(func() uint32 { return uint32(os.Getegid()) })
)
