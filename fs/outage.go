package fs

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// Writing through a key service outage. A new file's key comes from the
// key pool, generated before the outage, so the file can be written while
// the key service is unreachable; but its key was wiped on its last close,
// and reading the file back needed the key service. A user who just wrote
// a file expects to read it.
//
// So the key of a file this mount gave its header is not wiped on its
// last close but kept here, in locked memory, and an open whose unwrap
// fails for want of the key service takes it from here. A kept key is
// wiped as soon as a keyring call succeeds (with the service up, that is
// the key pool's refill: at once); after outageGrace if no keyring call is
// in flight and none has failed for want of the service (an outage can
// take a call's whole timeout to show); after outageKeep in any case;
// when more than outageMax are kept (the oldest first); and at unmount.
// Only keys this mount made are kept: the documented lifetime of every
// other key is unchanged (docs/THREAT_MODEL.md).
const (
	outageGrace = time.Second
	outageKeep  = time.Hour
	outageMax   = 4096
)

// outageKeys holds the keys of files this mount wrote during an outage.
// Safe for concurrent use.
type outageKeys struct {
	mu       sync.Mutex
	down     bool                                  // guarded by mu: the last keyring call failed for want of the service
	inflight int                                   // guarded by mu: keyring calls under way
	keys     map[[blockcipher.IDSize]byte]*heldKey // guarded by mu; by file ID
	// order is the kept keys, oldest first, and keys since replaced or
	// wiped (gone), skipped: keep and expire find the oldest without
	// looking at every kept key. A mount whose key service calls are
	// all answered from memory (branch keys) wipes none at a success,
	// so up to outageMax keys stay kept while files are written, and a
	// scan of them at each close cost about 100 µs a file (found by this
	// stop's benchmark run).
	order []*heldKey  // guarded by mu
	timer *time.Timer // guarded by mu: runs expire after outageGrace
}

type heldKey struct {
	dk   *keyring.DataKey
	h    *blockcipher.Header
	obj  [2]uint64 // the file's node.objectID
	kept time.Time
	gone bool // guarded by outageKeys.mu: wiped, or replaced in keys
}

// noting is the keyring below the key readahead (keyring.Ahead): it tells
// o how each call to the key service went. A key the readahead hands out
// made no call, and says nothing about the service: counted above it, it
// ended an outage and wiped the kept keys (found by review). Nor does an
// answer a keyring below marks as served from memory (WithServedMark).
type noting struct {
	inner keyring.Keyring
	o     *outageKeys
}

func (k noting) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	k.o.noteCall()
	ctx, served := keyring.WithServedMark(ctx)
	dk, wrapped, err := k.inner.GenerateDataKey(ctx, ec)
	k.o.noteEnd(served(), err)
	return dk, wrapped, err
}

func (k noting) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	k.o.noteCall()
	ctx, served := keyring.WithServedMark(ctx)
	dk, err := k.inner.Decrypt(ctx, wrapped, ec)
	k.o.noteEnd(served(), err)
	return dk, err
}

// unavailable reports whether err says the key service could not answer.
func unavailable(err error) bool {
	return errors.Is(err, keyring.ErrUnreachable) || errors.Is(err, keyring.ErrThrottled)
}

// noteCall records that a keyring call starts; noteResult that it ended.
func (o *outageKeys) noteCall() {
	o.mu.Lock()
	o.inflight++
	o.mu.Unlock()
}

// noteResult records how a keyring call went: a success ends an outage
// and wipes what it kept.
func (o *outageKeys) noteResult(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.inflight--
	switch {
	case err == nil:
		o.down = false
		o.wipeLocked()
	case unavailable(err):
		o.down = true
	}
}

// noteEnd is noteResult for a call answered without reaching the key
// service when served (the opt-in key cache, a held branch key), which
// says nothing about the service.
func (o *outageKeys) noteEnd(served bool, err error) {
	if !served {
		o.noteResult(err)
		return
	}
	o.mu.Lock()
	o.inflight--
	o.mu.Unlock()
}

// keep takes over the key of a file this mount wrote, at its last close,
// until a keyring call succeeds or expire wipes it; it reports whether it
// did (else the caller wipes the key).
func (o *outageKeys) keep(k *fileKey, h *blockcipher.Header, obj [2]uint64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if h == nil {
		return false
	}
	if o.timer == nil {
		// Also while the service is down: expire enforces outageKeep.
		o.timer = time.AfterFunc(outageGrace, o.expire)
	}
	if o.keys == nil {
		o.keys = map[[blockcipher.IDSize]byte]*heldKey{}
	}
	if old := o.keys[h.FileID]; old != nil {
		old.dk.Wipe()
		old.gone = true
		delete(o.keys, h.FileID)
	}
	now := time.Now()
	o.dropOldestLocked(func(hk *heldKey) bool { return now.Sub(hk.kept) > outageKeep || len(o.keys) >= outageMax })
	hk := &heldKey{dk: k.dk.Clone(), h: h, obj: obj, kept: now}
	o.keys[h.FileID] = hk
	o.order = append(o.order, hk)
	if len(o.order) > 2*len(o.keys)+64 {
		// Keys replaced again and again (a file rewritten through an
		// outage) would otherwise pile up behind an older one.
		o.order = slices.DeleteFunc(o.order, func(hk *heldKey) bool { return hk.gone })
	}
	return true
}

// dropOldestLocked wipes kept keys, oldest first, while drop says so of
// the oldest, and forgets those gone on the way.
func (o *outageKeys) dropOldestLocked(drop func(*heldKey) bool) {
	for len(o.order) > 0 {
		hk := o.order[0]
		if !hk.gone {
			if !drop(hk) {
				return
			}
			hk.dk.Wipe()
			hk.gone = true
			delete(o.keys, hk.h.FileID)
		}
		o.order[0] = nil
		o.order = o.order[1:]
	}
	o.order = nil
}

// expire wipes the keys kept longer than outageKeep, and, unless the key
// service is down or a call to it is under way, those kept longer than
// outageGrace. It runs every outageGrace while keys are kept, so that an
// outage longer than outageKeep does not keep them longer (found by
// review: only a close or the service's return wiped them).
func (o *outageKeys) expire() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.timer = nil
	limit := outageGrace
	if o.down || o.inflight > 0 {
		limit = outageKeep
	}
	now := time.Now()
	o.dropOldestLocked(func(hk *heldKey) bool { return now.Sub(hk.kept) >= limit })
	if len(o.keys) > 0 {
		o.timer = time.AfterFunc(outageGrace, o.expire)
	}
}

// take returns a clone of the key kept for h, if h is the very header it
// was kept with, and the objectID of the file it was kept for; nil
// otherwise.
func (o *outageKeys) take(h *blockcipher.Header) (*keyring.DataKey, [2]uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	hk := o.keys[h.FileID]
	if hk == nil || hk.h.MAC != h.MAC || time.Since(hk.kept) > outageKeep {
		return nil, [2]uint64{}
	}
	return hk.dk.Clone(), hk.obj
}

// wipe wipes every kept key.
func (o *outageKeys) wipe() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.wipeLocked()
}

func (o *outageKeys) wipeLocked() {
	for id, hk := range o.keys {
		hk.dk.Wipe()
		delete(o.keys, id)
	}
	o.order = nil
	if o.timer != nil {
		o.timer.Stop()
		o.timer = nil
	}
}

// len returns the number of kept keys.
func (o *outageKeys) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.keys)
}
