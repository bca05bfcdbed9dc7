package volume

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// BranchKeyring is the keyring of a volume in key mode "branch". A new
// file's data key is random and wrapped locally under the active branch
// key (keyring.Branch); a file's key is unwrapped under the branch key
// its header names. Branch keys themselves are made and unwrapped by the
// volume's keyrings (inner: KMS), one call each, and held in locked memory
// for at most the TTL from their unwrap, then wiped: a disabled key or a
// revoked grant stops new opens within the TTL. A branch key wraps new
// files for the volume's rotation period from its creation; after that a
// new one is made, and older ones stay for reading.
//
// A branch key file counts only once inner unwraps it and it verifies
// against its commitment and MAC, so whoever can write CIPHERDIR cannot
// make the mount wrap new files under a key they know. Entries of other
// kinds (a per-file entry) go to inner. Safe for concurrent use.
type BranchKeyring struct {
	vol      *Volume
	inner    keyring.Keyring
	ttl      time.Duration
	rotation time.Duration

	// testOnlyNow, when set by a test, is the clock.
	testOnlyNow func() time.Time

	activeMu sync.Mutex // held while the active branch is found or made

	mu      sync.Mutex
	held    map[[blockcipher.IDSize]byte]*heldBranch // guarded by mu
	loading map[[blockcipher.IDSize]byte]*branchLoad // guarded by mu
	active  *[blockcipher.IDSize]byte                // guarded by mu: the branch new files use
	closed  bool                                     // guarded by mu

	unwraps, creates atomic.Int64
	calls            atomic.Int64 // inner keyring calls begun, for keyring.MarkServed
	stop             chan struct{}
	done             chan struct{}
}

// heldBranch is an unwrapped branch key.
type heldBranch struct {
	b        *keyring.Branch
	readOnly bool      // unwrapped under its read-only context: wraps no new file
	expires  time.Time // guarded by BranchKeyring.mu, as the rest
	users    int       // calls using b right now
	dead     bool      // expired while in use: wiped by its last user
}

// branchLoad is one unwrap that concurrent users wait for.
type branchLoad struct {
	done chan struct{}
	err  error // set before done closes
}

var (
	_ keyring.Keyring   = (*BranchKeyring)(nil)
	_ keyring.Describer = (*BranchKeyring)(nil)
)

// NewBranchKeyring returns the keyring of vol, whose config must be in
// key mode "branch", over inner, the keyring its config names. Branch
// keys are held for ttl at most. Close wipes them.
func NewBranchKeyring(vol *Volume, inner keyring.Keyring, ttl time.Duration) (*BranchKeyring, error) {
	if !vol.Config.Branch() {
		return nil, errors.New("volume: not a branch-key volume")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("volume: branch key TTL %v", ttl)
	}
	k := &BranchKeyring{vol: vol, inner: inner, ttl: ttl, rotation: vol.Config.Rotation(),
		held: map[[blockcipher.IDSize]byte]*heldBranch{}, loading: map[[blockcipher.IDSize]byte]*branchLoad{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go k.janitor()
	return k, nil
}

func (k *BranchKeyring) now() time.Time {
	if k.testOnlyNow != nil {
		return k.testOnlyNow()
	}
	return time.Now()
}

// BranchStats counts a BranchKeyring's work.
type BranchStats struct {
	Unwraps int64 // branch keys unwrapped by the inner keyring
	Creates int64 // branch keys made
	Held    int   // branch keys in memory now
}

// markServed marks ctx (keyring.MarkServed) when no inner keyring call
// began since calls was before: the answer came from a held branch key,
// and says nothing about the key service. Another caller's call in the
// meantime leaves it unmarked, which only counts the answer as the
// service's, as before marks.
func (k *BranchKeyring) markServed(ctx context.Context, before int64) {
	if k.calls.Load() == before {
		keyring.MarkServed(ctx)
	}
}

// Stats returns the counts.
func (k *BranchKeyring) Stats() BranchStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return BranchStats{Unwraps: k.unwraps.Load(), Creates: k.creates.Load(), Held: len(k.held)}
}

// GenerateDataKey returns a random data key wrapped under the active
// branch key, making one if there is none within the rotation period.
func (k *BranchKeyring) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	defer k.markServed(ctx, k.calls.Load())
	h, err := k.activeBranch(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer k.release(h)
	return h.b.GenerateDataKey(ctx, ec)
}

// Decrypt unwraps a file's data key under the branch key its first branch
// entry names; a header without branch entries goes to the inner keyring.
func (k *BranchKeyring) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	defer k.markServed(ctx, k.calls.Load())
	// The first branch entry only: a header kmsfs writes holds one. A
	// planted header with 16, each naming a branch key file of 16
	// entries, made 256 key service calls per open (found by review).
	i := slices.IndexFunc(wrapped, func(w keyring.WrappedKey) bool { return w.Kind == keyring.KindBranch })
	if i < 0 {
		k.calls.Add(1)
		return k.inner.Decrypt(ctx, wrapped, ec)
	}
	w := wrapped[i]
	id, ok := parseBranchName(w.KeyID)
	if !ok {
		return nil, fmt.Errorf("branch key %q: %w", w.KeyID, keyring.ErrInvalidCiphertext)
	}
	h, err := k.acquire(ctx, id)
	if err != nil {
		return nil, err
	}
	defer k.release(h)
	return h.b.Decrypt(ctx, []keyring.WrappedKey{w}, ec)
}

// Load unwraps branch key id with the inner keyring (one call, unless it
// is held already) and verifies it, then holds it for the TTL like any
// other: a caller that checks a volume's branch key files (kmsfs fsck)
// does so before reading the files under them, at no extra call.
func (k *BranchKeyring) Load(ctx context.Context, id [blockcipher.IDSize]byte) error {
	h, err := k.acquire(ctx, id)
	if err != nil {
		return err
	}
	k.release(h)
	return nil
}

// activeBranch returns the branch key new files are wrapped under,
// acquired: the newest in the store made within the rotation period that
// unwraps under its writable context and verifies, else a new one. A key
// a rewrap carried over unwraps under its read-only context only, so
// whatever the store's dates say (a writer of CIPHERDIR sets them), no
// such key wraps a new file (found by review: one planted for a recovery
// recipient and carried over became the newest again once the key
// rewrap made was deleted).
func (k *BranchKeyring) activeBranch(ctx context.Context) (*heldBranch, error) {
	k.mu.Lock()
	if a := k.active; a != nil && k.now().Sub(BranchCreated(*a)) < k.rotation {
		k.mu.Unlock()
		if h, err := k.acquire(ctx, *a); err == nil {
			if !h.readOnly {
				return h, nil
			}
			k.release(h)
		}
	} else {
		k.mu.Unlock()
	}
	k.activeMu.Lock()
	defer k.activeMu.Unlock()
	ids, err := k.vol.BranchIDs()
	if err != nil {
		return nil, err
	}
	const tries = 3 // newer key files that fail to unwrap: damage, or someone's planting
	tried := 0
	for _, id := range ids {
		age := k.now().Sub(BranchCreated(id))
		if age < -MaxBranchClockSkew {
			// Dated ahead of this clock by more than clocks drift: a key
			// so dated would stay the newest, and wrap every new file,
			// for as long as its date says. It is read, never used to
			// wrap.
			continue
		}
		if age >= k.rotation || tried == tries {
			break
		}
		tried++
		if h, err := k.acquire(ctx, id); err == nil {
			if !h.readOnly {
				k.setActive(id)
				return h, nil
			}
			k.release(h)
		}
	}
	return k.create(ctx)
}

// MaxBranchClockSkew is how far ahead of a mount's clock a branch key
// may be dated and still wrap new files: another host's clock may run
// ahead by that much.
const MaxBranchClockSkew = 5 * time.Minute

func (k *BranchKeyring) setActive(id [blockcipher.IDSize]byte) {
	k.mu.Lock()
	k.active = &id
	k.mu.Unlock()
}

// create makes a new branch key with one inner GenerateDataKey, stores its
// key file, and holds it, acquired.
func (k *BranchKeyring) create(ctx context.Context) (*heldBranch, error) {
	return k.createAt(ctx, NewBranchID(k.now()))
}

// Rotate makes a new branch key, dated after every branch key in the
// store that a mount could take for new files, so that mounts wrap new
// files under it from now on. kmsfs rewrap ends with it: a branch key
// file it carried over to the new keys, whatever its date, then wraps no
// new file (one planted for a recovery recipient, which a recovery
// cannot tell from a genuine one, among them).
func (k *BranchKeyring) Rotate(ctx context.Context) ([blockcipher.IDSize]byte, error) {
	k.activeMu.Lock()
	defer k.activeMu.Unlock()
	ids, err := k.vol.BranchIDs()
	if err != nil {
		return [blockcipher.IDSize]byte{}, err
	}
	now := k.now()
	at := now
	for _, id := range ids {
		// Every one, not the first below the skew bound: the date is
		// the bound that matters, whatever order the store lists in.
		if c := BranchCreated(id); c.Sub(now) < MaxBranchClockSkew && !c.Before(at) {
			at = c.Add(time.Nanosecond)
		}
	}
	id := NewBranchID(at)
	h, err := k.createAt(ctx, id)
	if err != nil {
		return [blockcipher.IDSize]byte{}, err
	}
	k.release(h)
	return id, nil
}

func (k *BranchKeyring) createAt(ctx context.Context, id [blockcipher.IDSize]byte) (*heldBranch, error) {
	k.calls.Add(1)
	dk, wrapped, err := k.inner.GenerateDataKey(ctx, k.vol.BranchContext(id))
	if err != nil {
		return nil, fmt.Errorf("make a branch key: %w", err)
	}
	h, err := k.vol.NewBranchHeader(id, wrapped)
	if err == nil {
		var slot []byte
		var c *blockcipher.Cipher
		if slot, c, err = h.Seal(dk.Bytes()); err == nil {
			c.Wipe() // a branch key file has no blocks
			err = k.vol.WriteBranch(id, slot)
		}
	}
	if err != nil {
		dk.Wipe()
		return nil, fmt.Errorf("make a branch key: %w", err)
	}
	k.creates.Add(1)
	hb := &heldBranch{b: keyring.NewBranch(hex.EncodeToString(id[:]), dk), users: 1}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		hb.b.Wipe()
		return nil, errors.New("volume: branch keyring closed")
	}
	hb.expires = k.now().Add(k.ttl)
	if old := k.held[id]; old != nil {
		k.retire(old)
	}
	k.held[id] = hb
	k.active = &id
	return hb, nil
}

// acquire returns branch key id, unwrapping it if it is not held (one
// inner call, shared by concurrent callers). The caller must release it.
func (k *BranchKeyring) acquire(ctx context.Context, id [blockcipher.IDSize]byte) (*heldBranch, error) {
	k.mu.Lock()
	for {
		if k.closed {
			k.mu.Unlock()
			return nil, errors.New("volume: branch keyring closed")
		}
		if h := k.held[id]; h != nil && k.now().Before(h.expires) {
			h.users++
			k.mu.Unlock()
			return h, nil
		}
		if l := k.loading[id]; l != nil {
			k.mu.Unlock()
			select {
			case <-l.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if l.err != nil {
				return nil, l.err
			}
			k.mu.Lock()
			continue
		}
		l := &branchLoad{done: make(chan struct{})}
		k.loading[id] = l
		k.mu.Unlock()
		b, readOnly, err := k.unwrap(ctx, id)
		k.mu.Lock()
		delete(k.loading, id)
		l.err = err
		close(l.done)
		if err != nil {
			k.mu.Unlock()
			return nil, err
		}
		if k.closed {
			b.Wipe()
			continue
		}
		if old := k.held[id]; old != nil {
			k.retire(old)
		}
		k.held[id] = &heldBranch{b: b, readOnly: readOnly, expires: k.now().Add(k.ttl)}
	}
}

// unwrap reads the key file of branch id, unwraps it with the inner
// keyring and verifies it. readOnly: it was unwrapped under its read-only
// context (a key a rewrap carried over), so it wraps no new file.
func (k *BranchKeyring) unwrap(ctx context.Context, id [blockcipher.IDSize]byte) (b *keyring.Branch, readOnly bool, err error) {
	h, err := k.vol.ReadBranch(id)
	if err != nil {
		return nil, false, err
	}
	k.unwraps.Add(1)
	k.calls.Add(1)
	dk, err := k.inner.Decrypt(ctx, onePerKeyring(Entries(h)), k.vol.BranchKeyContext(h))
	if err != nil {
		return nil, false, fmt.Errorf("unwrap branch key %x: %w", id, err)
	}
	if err := h.Verify(dk.Bytes()); err != nil {
		dk.Wipe()
		return nil, false, fmt.Errorf("branch key %x: %w", id, err)
	}
	return keyring.NewBranch(hex.EncodeToString(id[:]), dk), ReadOnlyBranch(h), nil
}

// onePerKeyring drops every entry but the first of each keyring (kind
// and key ID): kmsfs writes a branch key file with one entry per keyring
// of the volume, and each further entry naming the volume's KMS key
// would cost a KMS call of its own.
func onePerKeyring(entries []keyring.WrappedKey) []keyring.WrappedKey {
	seen := make(map[[2]string]bool, len(entries))
	return slices.DeleteFunc(entries, func(w keyring.WrappedKey) bool {
		k := [2]string{string(w.Kind), w.KeyID}
		dup := seen[k]
		seen[k] = true
		return dup
	})
}

// release ends a use of h; an expired key is wiped by its last user.
func (k *BranchKeyring) release(h *heldBranch) {
	k.mu.Lock()
	defer k.mu.Unlock()
	h.users--
	if h.dead && h.users == 0 {
		h.b.Wipe()
	}
}

// retire drops h from use: wiped now if unused, else by its last user.
// Caller holds mu and has removed h from held (or is replacing it).
func (k *BranchKeyring) retire(h *heldBranch) {
	if h.users == 0 {
		h.b.Wipe()
	} else {
		h.dead = true
	}
}

// janitor wipes branch keys past their TTL.
func (k *BranchKeyring) janitor() {
	defer close(k.done)
	t := time.NewTicker(min(max(k.ttl/8, 10*time.Millisecond), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-t.C:
			k.expire()
		}
	}
}

// expire wipes the branch keys past their TTL.
func (k *BranchKeyring) expire() {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	for id, h := range k.held {
		if !now.Before(h.expires) {
			delete(k.held, id)
			k.retire(h)
		}
	}
}

// Close wipes every branch key held and stops the janitor. Idempotent.
func (k *BranchKeyring) Close() {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return
	}
	k.closed = true
	for id, h := range k.held {
		delete(k.held, id)
		k.retire(h)
	}
	k.mu.Unlock()
	close(k.stop)
	<-k.done
}

// Describe names the inner keyring.
func (k *BranchKeyring) Describe() string {
	if d, ok := k.inner.(keyring.Describer); ok {
		return "branch keys under " + d.Describe()
	}
	return "branch keys"
}
