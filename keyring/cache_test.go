package keyring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// These tests look inside the Cache to check that the keys it holds are
// wiped. They do not run in parallel: a wiped key's slot goes back to the
// locked arena, and a parallel test could be handed it before the check.

// countingKeyring counts the calls reaching a Local keyring, and fails them
// with err when err is set.
type countingKeyring struct {
	inner     Keyring
	generates atomic.Int64
	decrypts  atomic.Int64

	mu  sync.Mutex
	err error // guarded by mu
}

func newCounting(t *testing.T) *countingKeyring {
	t.Helper()
	key := make([]byte, LocalKeyFileSize)
	for i := range key {
		key[i] = byte(i + 1)
	}
	l, err := newLocalFromBytes(key)
	if err != nil {
		t.Fatal(err)
	}
	return &countingKeyring{inner: l}
}

func (c *countingKeyring) failWith(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

func (c *countingKeyring) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *countingKeyring) GenerateDataKey(ctx context.Context, ec EncryptionContext) (*DataKey, []WrappedKey, error) {
	c.generates.Add(1)
	if err := c.failure(); err != nil {
		return nil, nil, err
	}
	return c.inner.GenerateDataKey(ctx, ec)
}

func (c *countingKeyring) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	c.decrypts.Add(1)
	if err := c.failure(); err != nil {
		return nil, err
	}
	return c.inner.Decrypt(ctx, wrapped, ec)
}

func testContext(i int) EncryptionContext {
	return FileContext("0123456789abcdef0123456789abcdef", fmt.Sprintf("%032x", i))
}

// wrapFile makes a data key for file i with the inner keyring directly
// (not through the cache) and returns a copy of its bytes.
func wrapFile(t *testing.T, inner Keyring, i int) ([]WrappedKey, []byte) {
	t.Helper()
	dk, wrapped, err := inner.GenerateDataKey(context.Background(), testContext(i))
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	return wrapped, bytes.Clone(dk.Bytes())
}

func mustDecryptFrom(t *testing.T, k Keyring, wrapped []WrappedKey, ec EncryptionContext, want []byte) *DataKey {
	t.Helper()
	dk, err := k.Decrypt(context.Background(), wrapped, ec)
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(dk.Bytes(), want) {
		t.Fatal("Decrypt returned another key")
	}
	return dk
}

// cachedSlots returns the memory of every key the cache holds.
func cachedSlots(c *Cache) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, e := range c.entries {
		out = append(out, e.dk.b[:])
	}
	return out
}

// cachedKeys returns the keys the cache holds. Where a test goes on to
// allocate keys, a wiped key's memory may be handed out again, so it checks
// Wiped() on these instead of the memory.
func cachedKeys(c *Cache) []*DataKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*DataKey
	for _, e := range c.entries {
		out = append(out, e.dk)
	}
	return out
}

func allZero(slots [][]byte) bool {
	for _, s := range slots {
		for _, b := range s {
			if b != 0 {
				return false
			}
		}
	}
	return true
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not a wait for an event
	}
}

func TestCacheHit(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	defer c.Close()
	ec := testContext(1)
	wrapped, want := wrapFile(t, inner, 1)

	first := mustDecryptFrom(t, c, wrapped, ec, want)
	if n := inner.decrypts.Load(); n != 1 {
		t.Fatalf("first Decrypt made %d inner calls, want 1", n)
	}
	if c.Len() != 1 {
		t.Fatalf("Len() = %d after a miss, want 1", c.Len())
	}
	second := mustDecryptFrom(t, c, wrapped, ec, want)
	if n := inner.decrypts.Load(); n != 1 {
		t.Fatalf("Decrypt within the TTL made %d inner calls, want 1 in all", n)
	}

	// Every returned key is a clone of its own.
	if first == second || &first.Bytes()[0] == &second.Bytes()[0] {
		t.Fatal("two Decrypts returned the same memory")
	}
	firstMem := first.Bytes()
	first.Wipe()
	if !isZeroBytes(firstMem) {
		t.Fatal("Wipe of a returned key did not zero it")
	}
	if !bytes.Equal(second.Bytes(), want) {
		t.Fatal("wiping one returned key changed another")
	}
	second.Bytes()[0] ^= 0xff // a caller scribbling on its copy
	second.Wipe()
	third := mustDecryptFrom(t, c, wrapped, ec, want)
	third.Wipe()
	if n := inner.decrypts.Load(); n != 1 {
		t.Fatalf("%d inner calls, want 1: the cached copy was affected by a returned key", n)
	}

	// Another context is another cache entry: the inner keyring decides,
	// and its refusal is not cached.
	for range 2 {
		if dk, err := c.Decrypt(context.Background(), wrapped, testContext(2)); !errors.Is(err, ErrInvalidCiphertext) || dk != nil {
			t.Fatalf("Decrypt under another context: %v, want ErrInvalidCiphertext", err)
		}
	}
	if n := inner.decrypts.Load(); n != 3 {
		t.Errorf("%d inner calls, want 3: failures must reach the inner keyring each time", n)
	}
	if c.Len() != 1 {
		t.Errorf("Len() = %d, want 1: a failure was cached", c.Len())
	}
	// Three hits; the first Decrypt and the two under another context
	// were misses.
	if s := c.Stats(); s != (CacheStats{Hits: 2, Misses: 3, Held: 1}) {
		t.Errorf("Stats() = %+v, want 2 hits, 3 misses, 1 held", s)
	}
}

// TestCacheMarksServed: a hit sets WithServedMark's mark, a miss does
// not, so that fs does not take a hit for the key service answering.
func TestCacheMarksServed(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	defer c.Close()
	ec := testContext(1)
	wrapped, _ := wrapFile(t, inner, 1)
	for i, want := range []bool{false, true} {
		ctx, served := WithServedMark(context.Background())
		dk, err := c.Decrypt(ctx, wrapped, ec)
		if err != nil {
			t.Fatal(err)
		}
		dk.Wipe()
		if served() != want {
			t.Errorf("Decrypt %d: served from memory %v, want %v", i, served(), want)
		}
	}
}

func TestCacheFailureNotCached(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	defer c.Close()
	wrapped, want := wrapFile(t, inner, 3)
	inner.failWith(fmt.Errorf("kms: %w", ErrKeyDisabled))
	for range 3 {
		if _, err := c.Decrypt(context.Background(), wrapped, testContext(3)); !errors.Is(err, ErrKeyDisabled) {
			t.Fatalf("Decrypt: %v, want the inner ErrKeyDisabled", err)
		}
	}
	if n := inner.decrypts.Load(); n != 3 || c.Len() != 0 {
		t.Fatalf("%d inner calls and %d entries after 3 failures, want 3 and 0", n, c.Len())
	}
	if _, _, err := c.GenerateDataKey(context.Background(), testContext(4)); !errors.Is(err, ErrKeyDisabled) || c.Len() != 0 {
		t.Fatalf("GenerateDataKey: %v with %d entries, want ErrKeyDisabled and none", err, c.Len())
	}
	inner.failWith(nil)
	mustDecryptFrom(t, c, wrapped, testContext(3), want).Wipe()
	if c.Len() != 1 {
		t.Fatalf("Len() = %d after recovery, want 1", c.Len())
	}
}

func TestCacheExpiry(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, 20*time.Millisecond)
	defer c.Close()
	wrapped, want := wrapFile(t, inner, 5)
	mustDecryptFrom(t, c, wrapped, testContext(5), want).Wipe()
	slots := cachedSlots(c)
	if len(slots) != 1 || !bytes.Equal(slots[0], want) {
		t.Fatalf("cache holds %d keys, want the one decrypted", len(slots))
	}
	waitFor(t, "the entry to expire", func() bool { return c.Len() == 0 })
	if !allZero(slots) {
		t.Fatal("an expired entry was dropped without being wiped")
	}
	before := inner.decrypts.Load()
	mustDecryptFrom(t, c, wrapped, testContext(5), want).Wipe()
	if n := inner.decrypts.Load(); n != before+1 {
		t.Errorf("Decrypt after expiry made %d inner calls, want 1", n-before)
	}
}

// An entry past its TTL is not served even before the janitor removes it.
func TestCacheExpiredEntryNotServed(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	defer c.Close()
	wrapped, want := wrapFile(t, inner, 6)
	mustDecryptFrom(t, c, wrapped, testContext(6), want).Wipe()
	c.mu.Lock()
	for _, e := range c.entries {
		e.expires = time.Now().Add(-time.Second)
	}
	c.mu.Unlock()
	old := cachedKeys(c)
	mustDecryptFrom(t, c, wrapped, testContext(6), want).Wipe()
	if n := inner.decrypts.Load(); n != 2 {
		t.Fatalf("%d inner calls, want 2: an expired entry was served", n)
	}
	if len(old) != 1 || !old[0].Wiped() {
		t.Error("the replaced expired entry was not wiped")
	}
	if c.Len() != 1 {
		t.Errorf("Len() = %d, want 1", c.Len())
	}
}

func TestCacheClose(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	wants := map[int][]byte{}
	wrappeds := map[int][]WrappedKey{}
	for i := 10; i < 15; i++ {
		wrappeds[i], wants[i] = wrapFile(t, inner, i)
		mustDecryptFrom(t, c, wrappeds[i], testContext(i), wants[i]).Wipe()
	}
	slots := cachedSlots(c)
	if len(slots) != 5 || allZero(slots) {
		t.Fatalf("cache holds %d keys, want 5", len(slots))
	}
	c.Close()
	if c.Len() != 0 {
		t.Fatalf("Len() = %d after Close", c.Len())
	}
	if !allZero(slots) {
		t.Fatal("Close left cached keys in memory")
	}
	c.Close() // idempotent

	// A closed cache passes calls through and keeps nothing.
	before := inner.decrypts.Load()
	mustDecryptFrom(t, c, wrappeds[10], testContext(10), wants[10]).Wipe()
	dk, _, err := c.GenerateDataKey(context.Background(), testContext(20))
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	if n := inner.decrypts.Load(); n != before+1 || c.Len() != 0 {
		t.Errorf("after Close: %d inner calls, %d entries; want 1 and 0", n-before, c.Len())
	}
}

func TestCacheGeneratePopulates(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	defer c.Close()
	ec := testContext(30)
	dk, wrapped, err := c.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(dk.Bytes())
	if c.Len() != len(wrapped) {
		t.Fatalf("Len() = %d after GenerateDataKey with %d entries", c.Len(), len(wrapped))
	}
	if slots := cachedSlots(c); len(slots) != 1 || &slots[0][0] == &dk.Bytes()[0] {
		t.Fatal("the cache keeps the caller's key instead of a clone")
	}
	dk.Wipe() // the caller owns its key
	mustDecryptFrom(t, c, wrapped, ec, want).Wipe()
	if n := inner.decrypts.Load(); n != 0 {
		t.Fatalf("Decrypt of a just generated key made %d inner calls, want 0", n)
	}

	// With two entries (a multi keyring) the pair is a hit, but neither
	// alone: an entry the keyring would refuse (another key) must not be
	// answered from the cache because it once sat beside one it accepts.
	l2, err := newLocalFromBytes(bytes.Repeat([]byte{0x33}, LocalKeyFileSize))
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMulti(inner, l2)
	if err != nil {
		t.Fatal(err)
	}
	cm := NewCache(m, time.Hour)
	defer cm.Close()
	dk, wrapped, err = cm.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Wipe()
	if len(wrapped) != 2 || cm.Len() != 1 {
		t.Fatalf("%d entries, %d cached; want 2 and 1", len(wrapped), cm.Len())
	}
	before := inner.decrypts.Load()
	mustDecryptFrom(t, cm, wrapped, ec, dk.Bytes()).Wipe()
	if n := inner.decrypts.Load(); n != before {
		t.Errorf("%d inner calls for the entries cached by GenerateDataKey", n-before)
	}
	mustDecryptFrom(t, cm, wrapped[:1], ec, dk.Bytes()).Wipe()
	if n := inner.decrypts.Load(); n != before+1 {
		t.Errorf("one entry of a cached pair alone: %d inner calls, want 1 (not a cache hit)", n-before)
	}
}

func TestCacheEvictsOldest(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, time.Hour)
	defer c.Close()
	c.max = 2
	var wrappeds [][]WrappedKey
	var wants [][]byte
	var first *DataKey
	for i := range 3 {
		w, want := wrapFile(t, inner, 40+i)
		wrappeds, wants = append(wrappeds, w), append(wants, want)
		mustDecryptFrom(t, c, w, testContext(40+i), want).Wipe()
		if i == 0 {
			first = cachedKeys(c)[0]
		}
	}
	if c.Len() != 2 {
		t.Fatalf("Len() = %d, want the bound 2", c.Len())
	}
	if !first.Wiped() {
		t.Fatal("the evicted entry was not wiped")
	}
	before := inner.decrypts.Load()
	mustDecryptFrom(t, c, wrappeds[2], testContext(42), wants[2]).Wipe()
	if inner.decrypts.Load() != before {
		t.Error("the newest entry was evicted")
	}
	mustDecryptFrom(t, c, wrappeds[0], testContext(40), wants[0]).Wipe()
	if inner.decrypts.Load() != before+1 {
		t.Error("the oldest entry was still served")
	}
}

func TestCacheConcurrent(t *testing.T) {
	inner := newCounting(t)
	c := NewCache(inner, 5*time.Millisecond) // entries expire while in use
	const files = 4
	var wrappeds [files][]WrappedKey
	var wants [files][]byte
	for i := range files {
		wrappeds[i], wants[i] = wrapFile(t, inner, 50+i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			for j := range 100 {
				i := (g + j) % files
				switch j % 5 {
				case 0:
					dk, w, err := c.GenerateDataKey(context.Background(), testContext(1000+g*1000+j))
					if err != nil {
						errs <- err
						return
					}
					got, err := c.Decrypt(context.Background(), w, testContext(1000+g*1000+j))
					if err != nil || !bytes.Equal(got.Bytes(), dk.Bytes()) {
						errs <- fmt.Errorf("generated key did not round trip: %v", err)
						return
					}
					got.Wipe()
					dk.Wipe()
				case 1:
					_ = c.Len()
				default:
					dk, err := c.Decrypt(context.Background(), wrappeds[i], testContext(50+i))
					if err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(dk.Bytes(), wants[i]) {
						errs <- fmt.Errorf("file %d: wrong key", i)
						return
					}
					dk.Wipe()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Close while calls are in flight leaves nothing behind.
	var wg2 sync.WaitGroup
	for i := range files {
		wg2.Go(func() {
			for range 50 {
				if dk, err := c.Decrypt(context.Background(), wrappeds[i], testContext(50+i)); err == nil {
					dk.Wipe()
				}
			}
		})
	}
	c.Close()
	wg2.Wait()
	if c.Len() != 0 {
		t.Fatalf("Len() = %d after Close", c.Len())
	}
}

func TestCacheDescribe(t *testing.T) {
	l, err := newLocalFromBytes(bytes.Repeat([]byte{1}, LocalKeyFileSize))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache(l, time.Minute)
	defer c.Close()
	if got, want := c.Describe(), l.Describe()+" (cached)"; got != want {
		t.Errorf("Describe() = %q, want %q", got, want)
	}
}

func isZeroBytes(b []byte) bool { return allZero([][]byte{b}) }
