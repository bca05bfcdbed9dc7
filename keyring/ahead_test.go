package keyring

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func newTestAhead(inner Keyring, ttl time.Duration) *Ahead {
	return NewAhead(inner, AheadOptions{Workers: 4, Queue: 64, Max: 64, TTL: ttl, Timeout: 10 * time.Second})
}

// A prefetched key is handed to the first Decrypt of its entries, once;
// that Decrypt makes no call of its own, and a second listing within the
// TTL does not unwrap it again.
func TestAheadHandsOutOnce(t *testing.T) {
	c := newCounting(t)
	a := newTestAhead(c, time.Hour)
	defer a.Close()
	wrapped, want := wrapFile(t, c.inner, 1)
	load := func() ([]WrappedKey, EncryptionContext, error) { return wrapped, testContext(1), nil }
	if !a.Prefetch(load) {
		t.Fatal("Prefetch dropped the request")
	}
	waitFor(t, "the prefetch", func() bool { return c.decrypts.Load() == 1 && a.Len() == 1 })
	dk, err := a.Decrypt(context.Background(), wrapped, testContext(1))
	if err != nil || !bytes.Equal(dk.Bytes(), want) {
		t.Fatalf("Decrypt: %v", err)
	}
	dk.Wipe()
	if n := c.decrypts.Load(); n != 1 || a.Len() != 0 {
		t.Fatalf("%d inner Decrypt calls and %d keys held after the hand-out, want 1 and 0", n, a.Len())
	}
	// Listed again while in use: no second unwrap.
	a.Prefetch(load)
	a.Prefetch(func() ([]WrappedKey, EncryptionContext, error) { return nil, nil, errors.New("no header") })
	time.Sleep(20 * time.Millisecond) // let a worker run the requests; a count, not a speed, is checked
	if n := c.decrypts.Load(); n != 1 || a.Len() != 0 {
		t.Fatalf("a second listing made %d inner calls in all and holds %d keys", n, a.Len())
	}
	// The next open (after the close) unwraps for itself.
	dk, err = a.Decrypt(context.Background(), wrapped, testContext(1))
	if err != nil || c.decrypts.Load() != 2 {
		t.Fatalf("second Decrypt: %v, %d inner calls", err, c.decrypts.Load())
	}
	dk.Wipe()
	if s := a.Stats(); s != (AheadStats{Hits: 1, Misses: 1, Unwraps: 1}) {
		t.Errorf("Stats() = %+v, want 1 hit, 1 miss, 1 unwrap", s)
	}
}

// Keys nobody takes are wiped after the TTL, and by Close.
func TestAheadWipesUnused(t *testing.T) {
	c := newCounting(t)
	live0 := LiveKeys()
	a := newTestAhead(c, 50*time.Millisecond)
	w1, _ := wrapFile(t, c.inner, 1)
	a.Prefetch(func() ([]WrappedKey, EncryptionContext, error) { return w1, testContext(1), nil })
	waitFor(t, "the prefetch", func() bool { return a.Len() == 1 })
	var held *DataKey
	a.mu.Lock()
	for _, e := range a.entries {
		<-e.done
		held = e.dk
	}
	a.mu.Unlock()
	waitFor(t, "the TTL", func() bool { return a.Len() == 0 })
	if !held.Wiped() {
		t.Fatal("an expired prefetched key was dropped but not wiped")
	}
	if s := a.Stats(); s.Unwraps != 1 || s.Unused != 1 || s.Hits != 0 {
		t.Errorf("Stats() = %+v, want 1 unwrap, 1 unused, no hit", s)
	}
	w2, _ := wrapFile(t, c.inner, 2)
	a.Prefetch(func() ([]WrappedKey, EncryptionContext, error) { return w2, testContext(2), nil })
	waitFor(t, "the prefetch", func() bool { return a.Len() == 1 })
	a.Close()
	if a.Len() != 0 || LiveKeys() != live0 {
		t.Fatalf("after Close: %d held, %d live keys, %d before", a.Len(), LiveKeys(), live0)
	}
}

// A Decrypt that finds the unwrap in flight waits for it instead of
// calling the keyring again; a failed prefetch leaves the Decrypt to
// call for itself.
func TestAheadInFlightAndFailure(t *testing.T) {
	c := newCounting(t)
	gate := make(chan struct{})
	slow := &gatedDecrypt{Keyring: c, gate: gate}
	a := newTestAhead(slow, time.Hour)
	defer a.Close()
	wrapped, want := wrapFile(t, c.inner, 3)
	a.Prefetch(func() ([]WrappedKey, EncryptionContext, error) { return wrapped, testContext(3), nil })
	waitFor(t, "the unwrap to start", func() bool { return c.decrypts.Load() == 0 && a.Len() == 1 })
	got := make(chan *DataKey)
	go func() {
		dk, err := a.Decrypt(context.Background(), wrapped, testContext(3))
		if err != nil {
			t.Error(err)
		}
		got <- dk
	}()
	close(gate)
	dk := <-got
	if !bytes.Equal(dk.Bytes(), want) || c.decrypts.Load() != 1 {
		t.Fatalf("%d inner calls for an open that met its prefetch in flight, want 1", c.decrypts.Load())
	}
	dk.Wipe()

	c.failWith(ErrUnreachable)
	w4, _ := wrapFile(t, c.inner, 4)
	a.Prefetch(func() ([]WrappedKey, EncryptionContext, error) { return w4, testContext(4), nil })
	waitFor(t, "the failed prefetch", func() bool { return c.decrypts.Load() == 2 && a.Len() == 0 })
	c.failWith(nil)
	dk, err := a.Decrypt(context.Background(), w4, testContext(4))
	if err != nil || c.decrypts.Load() != 3 {
		t.Fatalf("Decrypt after a failed prefetch: %v, %d inner calls", err, c.decrypts.Load())
	}
	dk.Wipe()
}

// gatedDecrypt holds every Decrypt until gate is closed.
type gatedDecrypt struct {
	Keyring
	gate chan struct{}
}

func (g *gatedDecrypt) Decrypt(ctx context.Context, wrapped []WrappedKey, ec EncryptionContext) (*DataKey, error) {
	<-g.gate
	return g.Keyring.Decrypt(ctx, wrapped, ec)
}

// PrefetchRecent unwraps again what was handed out before its window (a
// second pass over the files), and drops what was handed out within it or
// while the request waited in the queue (a reader that overtook it).
// Prefetch keeps the TTL: a second listing while the files are in use.
func TestAheadPrefetchRecent(t *testing.T) {
	c := newCounting(t)
	a := NewAhead(c, AheadOptions{Workers: 1, Queue: 64, Max: 64, TTL: time.Hour, Timeout: 10 * time.Second})
	defer a.Close()
	wrapped, _ := wrapFile(t, c.inner, 5)
	load := func() ([]WrappedKey, EncryptionContext, error) { return wrapped, testContext(5), nil }
	dk, err := a.Decrypt(context.Background(), wrapped, testContext(5))
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	time.Sleep(20 * time.Millisecond)

	a.Prefetch(load)
	a.PrefetchRecent(load, 10*time.Second)
	time.Sleep(20 * time.Millisecond) // a count, not a speed, is checked
	if n := c.decrypts.Load(); n != 1 {
		t.Fatalf("requests within the TTL and the window: %d inner calls in all, want 1", n)
	}
	a.PrefetchRecent(load, 10*time.Millisecond)
	waitFor(t, "the second pass's prefetch", func() bool { return c.decrypts.Load() == 2 && a.Len() == 1 })
	dk, err = a.Decrypt(context.Background(), wrapped, testContext(5))
	if err != nil || c.decrypts.Load() != 2 {
		t.Fatalf("Decrypt of the prefetched key: %v, %d inner calls", err, c.decrypts.Load())
	}
	dk.Wipe()

	// The worker is busy with a slow request; one for file 6 waits in the
	// queue while a reader unwraps file 6 itself: the request is dropped.
	gate := make(chan struct{})
	a.PrefetchRecent(func() ([]WrappedKey, EncryptionContext, error) {
		<-gate
		return nil, nil, errors.New("no header")
	}, 0)
	w6, _ := wrapFile(t, c.inner, 6)
	a.PrefetchRecent(func() ([]WrappedKey, EncryptionContext, error) { return w6, testContext(6), nil }, 10*time.Millisecond)
	dk, err = a.Decrypt(context.Background(), w6, testContext(6))
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	close(gate)
	time.Sleep(20 * time.Millisecond)
	if n := c.decrypts.Load(); n != 3 || a.Len() != 0 {
		t.Fatalf("a request the reader overtook: %d inner calls in all, %d held; want 3 and 0", n, a.Len())
	}
}

// PrefetchSince drops what was handed out after its time (files the
// scan's pass read already) and unwraps again what was handed out before
// it (an earlier pass, however recent).
func TestAheadPrefetchSince(t *testing.T) {
	c := newCounting(t)
	a := NewAhead(c, AheadOptions{Workers: 1, Queue: 64, Max: 64, TTL: time.Hour, Timeout: 10 * time.Second})
	defer a.Close()
	wrapped, _ := wrapFile(t, c.inner, 5)
	load := func() ([]WrappedKey, EncryptionContext, error) { return wrapped, testContext(5), nil }
	before := time.Now()
	dk, err := a.Decrypt(context.Background(), wrapped, testContext(5))
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	after := time.Now()

	// One worker takes the requests in order: once file 7's key is in,
	// the request before it has been dealt with.
	w7, _ := wrapFile(t, c.inner, 7)
	a.PrefetchSince(load, before)
	a.PrefetchSince(func() ([]WrappedKey, EncryptionContext, error) { return w7, testContext(7), nil }, before)
	waitFor(t, "file 7's prefetch", func() bool { return c.decrypts.Load() >= 2 && a.Len() == 1 })
	if n := c.decrypts.Load(); n != 2 {
		t.Fatalf("a request for a key handed out in its pass: %d inner calls in all, want 2", n)
	}
	a.PrefetchSince(load, after)
	waitFor(t, "the next pass's prefetch", func() bool { return c.decrypts.Load() == 3 && a.Len() == 2 })
}
