package keyring

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Ahead unwraps data keys ahead of their use. Prefetch queues an unwrap;
// the next Decrypt of the same wrapped entries under the same context
// takes its result instead of calling the inner keyring, waiting for it if
// it is still in flight. A key is handed out once: it leaves Ahead with
// that Decrypt, so a key is held here only between its unwrap and its
// first use, and one unused for ttl is wiped. A request for entries taken
// within the last ttl is dropped, so a tree listed twice (as backup tools
// do) is not unwrapped twice while its files are in use; a caller that
// knows which files are in use asks with PrefetchRecent and a shorter
// window. A Decrypt that finds an unwrap of its entries in flight waits
// for it.
//
// Prefetch never blocks: a full queue drops the request, and the Decrypt
// that needs the key calls the inner keyring itself. Safe for concurrent
// use.
type Ahead struct {
	inner Keyring
	ttl   time.Duration
	max   int
	jobs  chan aheadJob
	ctx   context.Context // cancelled by Close
	stop  context.CancelFunc
	done  sync.WaitGroup

	mu      sync.Mutex
	entries map[[32]byte]*aheadEntry // guarded by mu
	taken   map[[32]byte]time.Time   // guarded by mu: entries handed out, and when
	closed  bool                     // guarded by mu

	hits, misses    atomic.Int64 // Decrypt calls handed a prefetched key, and not
	unwraps, unused atomic.Int64 // keys unwrapped ahead, and of those wiped untaken
}

type aheadJob struct {
	load func() ([]WrappedKey, EncryptionContext, error)
	// since: the request is dropped for entries handed out after this
	// time.
	since time.Time
}

type aheadEntry struct {
	done    chan struct{}
	dk      *DataKey  // set before done closes; nil if the unwrap failed
	expires time.Time // guarded by Ahead.mu
}

var (
	_ Keyring   = (*Ahead)(nil)
	_ Describer = (*Ahead)(nil)
)

// AheadOptions bound an Ahead.
type AheadOptions struct {
	Workers int           // unwraps in flight at once
	Queue   int           // requests waiting for a worker
	Max     int           // keys held or in flight at once
	TTL     time.Duration // how long an unused key is kept
	Timeout time.Duration // bound of one unwrap
}

// NewAhead wraps inner. Close stops the workers and wipes every key.
func NewAhead(inner Keyring, o AheadOptions) *Ahead {
	a := &Ahead{inner: inner, ttl: o.TTL, max: o.Max, jobs: make(chan aheadJob, o.Queue),
		entries: map[[32]byte]*aheadEntry{}, taken: map[[32]byte]time.Time{}}
	a.ctx, a.stop = context.WithCancel(context.Background())
	for range o.Workers {
		a.done.Go(func() { a.worker(o.Timeout) })
	}
	a.done.Go(a.janitor)
	return a
}

// Prefetch queues an unwrap of the entries and context that load returns.
// load runs on a worker (it may read a file header), and an error from it
// drops the request. Prefetch reports whether the request was queued.
func (a *Ahead) Prefetch(load func() ([]WrappedKey, EncryptionContext, error)) bool {
	return a.PrefetchRecent(load, a.ttl)
}

// PrefetchRecent is Prefetch for a caller that knows the file is not open
// (its key not in use): the request is dropped for entries handed out
// within recent before it, or after it (while it waited in the queue),
// not within the TTL. So a second pass over files read a while ago gets
// its keys ahead too, and a reader that overtakes the queue does not
// make it unwrap what the reader unwrapped.
func (a *Ahead) PrefetchRecent(load func() ([]WrappedKey, EncryptionContext, error), recent time.Duration) bool {
	return a.PrefetchSince(load, time.Now().Add(-min(recent, a.ttl)))
}

// PrefetchSince is Prefetch for a caller that knows since when the key is
// needed again: the request is dropped for entries handed out after since
// (or within the TTL, if since is older). Key readahead asks so with the
// time its pass over the tree began: a file opened before it (in an
// earlier pass, a moment ago) needs its key again; one opened since, by
// any reader, does not.
func (a *Ahead) PrefetchSince(load func() ([]WrappedKey, EncryptionContext, error), since time.Time) bool {
	select {
	case a.jobs <- aheadJob{load: load, since: later(since, time.Now().Add(-a.ttl))}:
		return true
	default:
		return false
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (a *Ahead) worker(timeout time.Duration) {
	for {
		select {
		case <-a.ctx.Done():
			return
		case j := <-a.jobs:
			a.fetch(j, timeout)
		}
	}
}

func (a *Ahead) fetch(j aheadJob, timeout time.Duration) {
	wrapped, ec, err := j.load()
	if err != nil {
		return
	}
	k := cacheKey(wrapped, ec)
	a.mu.Lock()
	_, held := a.entries[k]
	if held || a.closed || len(a.entries) >= a.max || a.taken[k].After(j.since) {
		a.mu.Unlock()
		return
	}
	e := &aheadEntry{done: make(chan struct{})}
	a.entries[k] = e
	a.mu.Unlock()

	ctx, cancel := context.WithTimeout(a.ctx, timeout)
	dk, err := a.inner.Decrypt(ctx, wrapped, ec)
	cancel()
	a.mu.Lock()
	if err != nil || a.closed {
		dk.Wipe()
		delete(a.entries, k)
	} else {
		e.dk = dk
		e.expires = time.Now().Add(a.ttl)
		a.unwraps.Add(1)
	}
	close(e.done)
	a.mu.Unlock()
}

// take returns the key prefetched for k, waiting for an unwrap in flight;
// nil if there is none or it failed. The caller owns the key.
func (a *Ahead) take(ctx context.Context, k [32]byte) *DataKey {
	a.mu.Lock()
	e := a.entries[k]
	a.mu.Unlock()
	if e == nil {
		return nil
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.entries[k] != e || e.dk == nil {
		return nil
	}
	delete(a.entries, k)
	a.taken[k] = time.Now()
	return e.dk
}

// Decrypt hands out the key prefetched for wrapped under ec, or unwraps it
// with the inner keyring. While it does, a prefetch of the same entries
// finds its unwrap in flight and makes none of its own.
func (a *Ahead) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	k := cacheKey(wrapped, ec)
	mine := &aheadEntry{done: make(chan struct{})} // holds no key: a marker
	for again := true; ; again = false {
		if dk := a.take(ctx, k); dk != nil {
			a.hits.Add(1)
			return dk, nil
		}
		a.mu.Lock()
		_, busy := a.entries[k]
		if busy && again {
			// A prefetch of these entries started since take looked:
			// wait for it rather than unwrap them a second time.
			a.mu.Unlock()
			continue
		}
		if !busy && !a.closed {
			a.entries[k] = mine
		}
		a.mu.Unlock()
		break
	}
	a.misses.Add(1)
	dk, err := a.inner.Decrypt(ctx, wrapped, ec)
	a.mu.Lock()
	if a.entries[k] == mine {
		delete(a.entries, k)
	}
	if err == nil {
		a.taken[k] = time.Now()
	}
	close(mine.done)
	a.mu.Unlock()
	return dk, err
}

// GenerateDataKey calls the inner keyring.
func (a *Ahead) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	return a.inner.GenerateDataKey(ctx, ec)
}

// janitor wipes keys nobody took within ttl and forgets old hand-outs.
func (a *Ahead) janitor() {
	t := time.NewTicker(max(a.ttl/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case now := <-t.C:
			a.mu.Lock()
			for k, e := range a.entries {
				if e.dk != nil && now.After(e.expires) {
					e.dk.Wipe()
					delete(a.entries, k)
					a.unused.Add(1)
				}
			}
			for k, at := range a.taken {
				if now.Sub(at) >= a.ttl {
					delete(a.taken, k)
				}
			}
			a.mu.Unlock()
		}
	}
}

// Len returns the number of keys held or in flight.
func (a *Ahead) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.entries)
}

// AheadStats counts an Ahead's work, for the metrics endpoint.
type AheadStats struct {
	Hits    int64 // Decrypt calls handed a prefetched key
	Misses  int64 // Decrypt calls that found none and called the inner keyring
	Unwraps int64 // keys unwrapped ahead of their use
	Unused  int64 // of those, wiped after the TTL without being taken
	Held    int   // keys held now, waiting to be taken (unwraps in flight hold none)
}

// Stats returns the counts.
func (a *Ahead) Stats() AheadStats {
	s := AheadStats{Hits: a.hits.Load(), Misses: a.misses.Load(), Unwraps: a.unwraps.Load(), Unused: a.unused.Load()}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.entries {
		if e.dk != nil {
			s.Held++
		}
	}
	return s
}

// Close stops the workers and wipes every key held. Idempotent.
func (a *Ahead) Close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.stop()
	a.done.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.entries {
		e.dk.Wipe()
		delete(a.entries, k)
	}
}

// Describe names the inner keyring.
func (a *Ahead) Describe() string {
	if d, ok := a.inner.(Describer); ok {
		return d.Describe()
	}
	return "keyring with prefetch"
}
