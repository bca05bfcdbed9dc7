package fs

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// Prefetching (opt-in, --prefetch-keys) serves a backup tool that lists a
// directory and then opens its files one by one: as a listing is read, the
// data keys of its regular files are unwrapped in the background by a
// keyring.Ahead, which hands each to the file's first open. The header is
// still checked against the key (commitment and MAC) as on every open.
//
// prefetchWorkers bounds the Decrypt calls in flight. At a 10 ms KMS round
// trip 64 unwrap at most 6,400 keys a second, twice what 32 did: a serial
// read of 10k files behind 10 ms measured 4.6 s with 32 and 3.2 s with 64
// (bench/README.md). That can exceed the smallest regional KMS quota
// (5,500 cryptographic requests a second, shared by the whole account):
// KMS then throttles, the SDK retries, and an open whose prefetch failed
// unwraps its own key. Prefetching is opt-in for that reason too.
const (
	prefetchWorkers = 64
	prefetchQueue   = 16384
	prefetchTTL     = 30 * time.Second
	prefetchMax     = 16384 // keys held at once
)

// errNothingToPrefetch: the file has no header (or a damaged one).
var errNothingToPrefetch = errors.New("no header to prefetch a key for")

func newAhead(inner keyring.Keyring) *keyring.Ahead {
	return keyring.NewAhead(inner, keyring.AheadOptions{
		Workers: prefetchWorkers, Queue: prefetchQueue, Max: prefetchMax,
		TTL: prefetchTTL, Timeout: keyringTimeout,
	})
}

// readaheadRecent: a listing's prefetch does not ask again for a key
// handed out this recently before the request (or after it, while it was
// queued): a file read and closed that recently is behind the reader, or
// was read out of order by one of several readers; older ones may be on
// the reader's second pass. (Files open now are not asked for at all.)
// Key readahead knows when its pass over the tree began, and asks with
// that instead (readaheadPrefetch).
const readaheadRecent = 2 * time.Second

// listingPrefetch asks for the key of the regular file at path (relative
// to CIPHERDIR), listed just now and not open. It never blocks.
func (r *Root) listingPrefetch(path string) {
	r.ahead.PrefetchRecent(r.headerLoader(path), readaheadRecent)
}

// readaheadPrefetch asks for the key of the regular file at path, which a
// scan of the pass over the tree that began at pass will open next,
// unless it is open now or was opened since the pass began. It never
// blocks.
func (r *Root) readaheadPrefetch(path string, pass time.Time) {
	if r.pathOpen(path) {
		return
	}
	r.ahead.PrefetchSince(r.headerLoader(path), pass)
}

// pathOpen reports whether the file at path is open through the mount
// (its key is held: nothing to prefetch).
func (r *Root) pathOpen(path string) bool {
	n := r.root
	dir, name := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, name = path[:i], path[i+1:]
	}
	for _, c := range strings.Split(dir, "/") {
		if c == "" {
			continue
		}
		if n = n.childNode(c); n == nil {
			return false
		}
	}
	return n.childOpen(name)
}

// headerLoader reads the wrapped keys of the file at path, for Ahead.
func (r *Root) headerLoader(path string) func() ([]keyring.WrappedKey, keyring.EncryptionContext, error) {
	return func() ([]keyring.WrappedKey, keyring.EncryptionContext, error) {
		// Looked at through an O_PATH descriptor first, as openBacking
		// does, so that nothing but a regular file is ever opened: the
		// listing that named it may be out of date.
		ofd, err := openBeneath(r.rootFd, path, unix.O_PATH)
		if err != nil {
			return nil, nil, err
		}
		defer unix.Close(ofd)
		var st unix.Stat_t
		if err := unix.Fstat(ofd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, nil, errNothingToPrefetch
		}
		// O_NOATIME where the daemon may (see openBacking): no fcntl
		// around the header read. Without /proc, nothing is read ahead.
		link := "/proc/self/fd/" + strconv.Itoa(ofd)
		fd, err := openat(unix.AT_FDCWD, link, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOATIME, 0)
		if err == unix.EPERM {
			fd, err = openat(unix.AT_FDCWD, link, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		}
		if err != nil {
			return nil, nil, errNothingToPrefetch
		}
		defer unix.Close(fd)
		h, err := r.vol.ReadHeader(fdStore(fd), st.Size)
		if err != nil || h == nil {
			return nil, nil, errNothingToPrefetch
		}
		return volume.Entries(h), r.vol.FileContext(h.FileID), nil
	}
}
