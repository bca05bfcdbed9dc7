package keyring

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Cache keeps unwrapped data keys for ttl after their last use, so reopening
// a file soon after closing it needs no key service call. It is opt-in
// (kmsfs mount --key-cache-ttl): by default a file's key is wiped on its
// last close. Entries are clones in locked memory, wiped on expiry, on
// eviction and on Close. Safe for concurrent use.
type Cache struct {
	inner Keyring
	ttl   time.Duration
	max   int

	mu      sync.Mutex
	entries map[[32]byte]*cacheEntry // guarded by mu
	closed  bool                     // guarded by mu
	stop    chan struct{}
	done    chan struct{}

	hits, misses atomic.Int64 // Decrypt calls answered here, and passed on
}

type cacheEntry struct {
	dk      *DataKey
	expires time.Time
}

// DefaultCacheEntries bounds a Cache: the oldest entries go first.
const DefaultCacheEntries = 10000

var (
	_ Keyring   = (*Cache)(nil)
	_ Describer = (*Cache)(nil)
)

// NewCache wraps inner. Call Close to stop the janitor and wipe all keys.
func NewCache(inner Keyring, ttl time.Duration) *Cache {
	c := &Cache{inner: inner, ttl: ttl, max: DefaultCacheEntries, entries: map[[32]byte]*cacheEntry{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go c.janitor()
	return c
}

// cacheKey identifies a header's wrapped entries, all of them in order,
// under a context: a key is served from the cache only for the entries
// the keyring accepted it for, never for one of them alone (which the
// keyring might refuse, naming another key). Hashing the blobs and the
// canonical context keeps no secret: both are stored in headers.
func cacheKey(wrapped []WrappedKey, ec EncryptionContext) [32]byte {
	h := sha256.New()
	put := func(s string) {
		var l [8]byte
		binary.BigEndian.PutUint64(l[:], uint64(len(s)))
		h.Write(l[:])
		h.Write([]byte(s))
	}
	put(string(ec.Canonical()))
	for _, w := range wrapped {
		put(string(w.Kind))
		put(w.KeyID)
		put(string(w.Blob))
	}
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

// GenerateDataKey generates through the inner keyring and caches the new
// key under its wrapped entries, as a header will list them.
func (c *Cache) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	dk, wrapped, err := c.inner.GenerateDataKey(ctx, ec)
	if err == nil {
		c.put(cacheKey(wrapped, ec), dk)
	}
	return dk, wrapped, err
}

// Decrypt answers from the cache when any entry is cached under ec.
func (c *Cache) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	k := cacheKey(wrapped, ec)
	c.mu.Lock()
	if e, ok := c.entries[k]; ok && time.Now().Before(e.expires) {
		e.expires = time.Now().Add(c.ttl)
		dk := e.dk.Clone()
		c.mu.Unlock()
		c.hits.Add(1)
		MarkServed(ctx)
		return dk, nil
	}
	c.mu.Unlock()
	c.misses.Add(1)
	dk, err := c.inner.Decrypt(ctx, wrapped, ec)
	if err == nil {
		c.put(k, dk)
	}
	return dk, err
}

func (c *Cache) put(k [32]byte, dk *DataKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if old, ok := c.entries[k]; ok {
		old.dk.Wipe()
	}
	if len(c.entries) >= c.max {
		c.evictOldestLocked()
	}
	c.entries[k] = &cacheEntry{dk: dk.Clone(), expires: time.Now().Add(c.ttl)}
}

func (c *Cache) evictOldestLocked() {
	var oldest [32]byte
	var t time.Time
	for k, e := range c.entries {
		if t.IsZero() || e.expires.Before(t) {
			oldest, t = k, e.expires
		}
	}
	c.entries[oldest].dk.Wipe()
	delete(c.entries, oldest)
}

func (c *Cache) janitor() {
	defer close(c.done)
	tick := time.NewTicker(max(c.ttl/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-tick.C:
			c.mu.Lock()
			for k, e := range c.entries {
				if !now.Before(e.expires) {
					e.dk.Wipe()
					delete(c.entries, k)
				}
			}
			c.mu.Unlock()
		}
	}
}

// Len returns the number of cached keys.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// CacheStats counts a Cache's work, for the metrics endpoint.
type CacheStats struct {
	Hits   int64 // Decrypt calls answered from the cache
	Misses int64 // Decrypt calls passed on to the inner keyring
	Held   int   // keys cached now
}

// Stats returns the counts. GenerateDataKey calls pass through and are
// counted by neither Hits nor Misses.
func (c *Cache) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Held: c.Len()}
}

// Close wipes every cached key and stops the janitor. Idempotent.
func (c *Cache) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for k, e := range c.entries {
		e.dk.Wipe()
		delete(c.entries, k)
	}
	c.mu.Unlock()
	close(c.stop)
	<-c.done
}

// Describe names the inner keyring.
func (c *Cache) Describe() string {
	if d, ok := c.inner.(Describer); ok {
		return d.Describe() + " (cached)"
	}
	return "cached keyring"
}
