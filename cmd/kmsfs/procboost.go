package main

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/keyring"
)

// The mount runs on half of its CPUs (setProcs), which suits FUSE
// requests but not a burst of keyring calls: a key pool refilling, a
// prefetch of a listed directory, eight readers opening files at once.
// Each KMS call costs the daemon about 100-200 µs of CPU (SDK, signing,
// HTTP), and with one P the answers of dozens of calls in flight queue for
// it behind FUSE requests: measured behind a 10 ms KMS, a GenerateDataKey
// took 20 ms on average with one P and 12 ms with two. So while a burst is
// in flight the mount takes every CPU, and gives them back once it is over.

// boostAt is how many keyring calls must be in flight before the mount
// takes every CPU: a lone first open does not need it.
const boostAt = 4

// boostLinger is how long the mount keeps every CPU after its last keyring
// call returned: bursts come in waves, and each change of GOMAXPROCS stops
// the world for a moment.
const boostLinger = 200 * time.Millisecond

// procBoost wraps a keyring and raises GOMAXPROCS from lo to hi while at
// least boostAt of its calls are in flight, and lowers it again once none
// has been for boostLinger.
type procBoost struct {
	inner  keyring.Keyring
	lo, hi int
	set    func(int) int // runtime.GOMAXPROCS; a stub in tests

	mu       sync.Mutex
	inflight int         // guarded by mu
	raised   bool        // guarded by mu
	lower    *time.Timer // guarded by mu; armed while raised and idle
	armed    uint64      // guarded by mu; counts arming and disarming of lower
}

var (
	_ keyring.Keyring   = (*procBoost)(nil)
	_ keyring.Describer = (*procBoost)(nil)
)

func newProcBoost(inner keyring.Keyring, lo, hi int) *procBoost {
	return &procBoost{inner: inner, lo: lo, hi: hi, set: runtime.GOMAXPROCS}
}

func (b *procBoost) enter() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inflight++
	if b.lower != nil {
		b.lower.Stop()
		b.lower = nil
		b.armed++
	}
	if !b.raised && b.inflight >= boostAt {
		b.raised = true
		b.set(b.hi)
	}
}

func (b *procBoost) leave() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inflight--
	if b.raised && b.inflight == 0 {
		b.armed++
		armed := b.armed
		b.lower = time.AfterFunc(boostLinger, func() { b.drop(armed) })
	}
}

// drop lowers GOMAXPROCS if the timer armed as number armed is still the
// armed one: a call that started since then disarmed it.
func (b *procBoost) drop(armed uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lower == nil || b.armed != armed {
		return
	}
	b.lower = nil
	b.raised = false
	b.set(b.lo)
}

func (b *procBoost) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	b.enter()
	defer b.leave()
	return b.inner.GenerateDataKey(ctx, ec)
}

func (b *procBoost) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	b.enter()
	defer b.leave()
	return b.inner.Decrypt(ctx, wrapped, ec)
}

// Describe names the inner keyring.
func (b *procBoost) Describe() string {
	if d, ok := b.inner.(keyring.Describer); ok {
		return d.Describe()
	}
	return ""
}
