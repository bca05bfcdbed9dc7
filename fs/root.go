package fs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// Options configure a Root.
type Options struct {
	// CipherDir is the backing directory; Config its loaded kmsfs.json.
	CipherDir string
	Config    *Config
	// Keyring generates and unwraps data keys (cmd/kmsfs builds it from
	// Config, with any cache or metrics wrappers).
	Keyring keyring.Keyring
	// Logger receives one line per failure, never key bytes.
	Logger *slog.Logger
	// ReadOnly refuses every change with EROFS.
	ReadOnly bool
	// KeyringTimeout bounds one keyring call made for a file operation
	// (default 60s; the AWS keyring has its own, shorter, per-call bound).
	KeyringTimeout time.Duration
	// KeyPool is how many data keys for new files are generated ahead of
	// time in the background (0: none; every create waits for the keyring).
	KeyPool int
	// PrefetchKeys unwraps the keys of a listed directory's files ahead of
	// their opens (prefetch.go).
	PrefetchKeys bool
}

// Root is the shared state of one mount: the backing directory, the volume
// config and the keyring. Per-inode state lives on the nodes.
type Root struct {
	opts        Options
	rootFd      int // O_PATH descriptor of CipherDir; every backing call is relative to it
	dev         uint64
	inPlace     bool // the backing filesystem rewrites allocated bytes in place (see inPlaceFS)
	layout      blockcipher.Layout
	volumeID    [blockcipher.IDSize]byte
	volumeIDHex string
	log         *slog.Logger
	pool        *keyPool    // nil when Options.KeyPool is 0
	prefetch    *prefetcher // nil unless Options.PrefetchKeys
	root        *node
	stats       stats
}

// NewRoot checks the backing directory and returns the filesystem root.
// Close releases it after unmount.
func NewRoot(opts Options) (*Root, error) {
	if opts.Config == nil || opts.Keyring == nil {
		return nil, errors.New("fs: Options need a Config and a Keyring")
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.KeyringTimeout <= 0 {
		opts.KeyringTimeout = 60 * time.Second
	}
	fd, err := unix.Open(opts.CipherDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", opts.CipherDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", opts.CipherDir, err)
	}
	vid, _ := opts.Config.VolumeIDBytes()
	var sfs unix.Statfs_t
	inPlace := unix.Fstatfs(fd, &sfs) == nil && inPlaceFS[int64(sfs.Type)]
	r := &Root{
		opts:        opts,
		rootFd:      fd,
		dev:         uint64(st.Dev),
		inPlace:     inPlace,
		layout:      opts.Config.Layout(),
		volumeID:    vid,
		volumeIDHex: hex.EncodeToString(vid[:]),
		log:         opts.Logger,
	}
	r.root = &node{r: r}
	if opts.KeyPool > 0 && !opts.ReadOnly {
		r.pool = newKeyPool(r, opts.KeyPool)
	}
	if opts.PrefetchKeys {
		r.prefetch = newPrefetcher(r)
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

// Node returns the root node, to be mounted.
func (r *Root) Node() fusefs.InodeEmbedder { return r.root }

// Close wipes pooled keys and closes the backing directory. Call it after
// the server has stopped.
func (r *Root) Close() error {
	if r.pool != nil {
		r.pool.close()
	}
	if r.prefetch != nil {
		r.prefetch.close()
	}
	return unix.Close(r.rootFd)
}

// keyCtx returns the context for one keyring call: kmsfs's own deadline,
// detached from the FUSE request, whose context the kernel cancels when
// the calling thread gets any signal.
func (r *Root) keyCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.opts.KeyringTimeout)
}

// fileContext is the encryption context of a file's data key.
func (r *Root) fileContext(fileID [blockcipher.IDSize]byte) keyring.EncryptionContext {
	return keyring.FileContext(r.volumeIDHex, hex.EncodeToString(fileID[:]))
}

// idFromStat composes a stable inode number from the backing device and
// inode, as go-fuse's loopback does, so hard links share one inode.
func (r *Root) idFromStat(dev, ino, gen uint64, mode uint32) fusefs.StableAttr {
	swapped := (dev << 32) | (dev >> 32)
	swappedRoot := (r.dev << 32) | (r.dev >> 32)
	return fusefs.StableAttr{Mode: mode & unix.S_IFMT, Gen: gen, Ino: (swapped ^ swappedRoot) ^ ino}
}

func processUID() uint32 { return uint32(os.Geteuid()) }
