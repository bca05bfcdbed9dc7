package fs

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// Prefetching (opt-in, --prefetch-keys) serves a backup tool that lists a
// directory and then opens its files one by one: as a listing is read, the
// data keys of its regular files are unwrapped in the background, a
// bounded number at a time, and kept for a short TTL. An open that finds
// its file's key there (or in flight) uses it instead of calling the
// keyring; the header is still checked against it (commitment and MAC) as
// on every open. Unused keys are wiped when their TTL ends.
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

type prefetcher struct {
	r    *Root
	jobs chan string // relative paths of files to prefetch
	stop chan struct{}
	ctx  context.Context
	done sync.WaitGroup

	mu      sync.Mutex
	entries map[[blockcipher.IDSize]byte]*prefetched // guarded by mu
	cancel  context.CancelFunc
}

// prefetched is one unwrapped (or being unwrapped) key.
type prefetched struct {
	done    chan struct{}
	dk      *keyring.DataKey // set before done closes; nil on failure
	expires time.Time        // guarded by prefetcher.mu
}

func newPrefetcher(r *Root) *prefetcher {
	p := &prefetcher{
		r:       r,
		jobs:    make(chan string, prefetchQueue),
		stop:    make(chan struct{}),
		entries: map[[blockcipher.IDSize]byte]*prefetched{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for range prefetchWorkers {
		p.done.Go(p.worker)
	}
	p.done.Go(p.janitor)
	return p
}

// enqueue asks for path's key; it never blocks (a full queue drops it).
func (p *prefetcher) enqueue(path string) {
	select {
	case p.jobs <- path:
	default:
	}
}

func (p *prefetcher) worker() {
	for {
		select {
		case <-p.stop:
			return
		case path := <-p.jobs:
			p.fetch(path)
		}
	}
}

func (p *prefetcher) fetch(path string) {
	r := p.r
	fd, err := openat(r.rootFd, path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	h, err := r.readHeader(fd)
	unix.Close(fd)
	if err != nil || h == nil {
		return
	}
	p.mu.Lock()
	if _, ok := p.entries[h.FileID]; ok || len(p.entries) >= prefetchMax {
		p.mu.Unlock()
		return
	}
	e := &prefetched{done: make(chan struct{})}
	p.entries[h.FileID] = e
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(p.ctx, r.opts.KeyringTimeout)
	r.stats.decrypts.Add(1)
	dk, err := r.opts.Keyring.Decrypt(ctx, keyEntries(h), r.fileContext(h.FileID))
	cancel()
	p.mu.Lock()
	if err != nil {
		delete(p.entries, h.FileID)
		r.log.Debug("prefetch: unwrap failed; the open will try again", "path", path, "err", err.Error())
	} else {
		e.dk = dk
		e.expires = time.Now().Add(prefetchTTL)
		r.stats.prefetched.Add(1)
	}
	close(e.done)
	p.mu.Unlock()
}

// take returns the prefetched key of fileID, waiting for an unwrap in
// flight; nil if there is none (or it failed). The caller owns the key.
func (p *prefetcher) take(fileID [blockcipher.IDSize]byte) *keyring.DataKey {
	p.mu.Lock()
	e := p.entries[fileID]
	p.mu.Unlock()
	if e == nil {
		return nil
	}
	<-e.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.entries[fileID] != e || e.dk == nil {
		return nil
	}
	delete(p.entries, fileID)
	p.r.stats.prefetched.Add(-1)
	return e.dk
}

// janitor wipes keys nobody opened within their TTL.
func (p *prefetcher) janitor() {
	t := time.NewTicker(prefetchTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.mu.Lock()
			for id, e := range p.entries {
				if e.dk != nil && now.After(e.expires) {
					e.dk.Wipe()
					delete(p.entries, id)
					p.r.stats.prefetched.Add(-1)
				}
			}
			p.mu.Unlock()
		}
	}
}

// close stops the workers and wipes every prefetched key.
func (p *prefetcher) close() {
	p.cancel()
	close(p.stop)
	p.done.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, e := range p.entries {
		if e.dk != nil {
			e.dk.Wipe()
			p.r.stats.prefetched.Add(-1)
		}
		delete(p.entries, id)
	}
}

func keyEntries(h *blockcipher.Header) []keyring.WrappedKey {
	entries := make([]keyring.WrappedKey, len(h.Keys))
	for i, k := range h.Keys {
		entries[i] = keyring.WrappedKey{Kind: keyring.Kind(k.Kind), KeyID: k.KeyID, Blob: k.Blob}
	}
	return entries
}
