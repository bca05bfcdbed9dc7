package fs

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// pooledKey is a data key for one new file, generated under that file's
// encryption context: it can be used for exactly that file ID.
type pooledKey struct {
	fileID  [blockcipher.IDSize]byte
	dk      *keyring.DataKey
	wrapped []keyring.WrappedKey
}

// generateKey makes one GenerateDataKey call for a fresh file ID.
func (r *Root) generateKey(ctx context.Context) (*pooledKey, error) {
	id := blockcipher.NewID()
	r.stats.generates.Add(1)
	dk, wrapped, err := r.keyring.GenerateDataKey(ctx, r.vol.FileContext(id))
	if err != nil {
		return nil, err
	}
	return &pooledKey{fileID: id, dk: dk, wrapped: wrapped}, nil
}

// maxPoolWorkers bounds the GenerateDataKey calls the pool has in flight:
// at a 10 ms KMS round trip, 64 keep up with about 6000 creates a second.
// 32 capped a mount at 3,200 (10k files in 3.1 s at best) where kmsfs
// creates 4,000-6,000 small files a second with a local key. Past the
// smallest regional KMS quota (5,500 cryptographic requests a second per
// account) KMS throttles and the SDK retries; --key-pool 32 halves it.
const maxPoolWorkers = 64

// keyPool keeps up to size data keys for new files, generated in the
// background, so a create does not wait for a keyring round trip. A key
// in the pool or being generated holds one of size slots, so at most size
// keys exist that no file uses yet. Keys sit in locked memory
// (keyring.DataKey) and are wiped on close.
type keyPool struct {
	r      *Root
	keys   chan *pooledKey
	slots  chan struct{}
	stop   chan struct{}
	ctx    context.Context // cancelled by close, so an unmount does not wait for KMS
	cancel context.CancelFunc
	done   sync.WaitGroup

	failing atomic.Bool // the last generate failed
}

func newKeyPool(r *Root, size int) *keyPool {
	p := &keyPool{
		r:     r,
		keys:  make(chan *pooledKey, size),
		slots: make(chan struct{}, size),
		stop:  make(chan struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for range min(size, maxPoolWorkers) {
		p.done.Go(p.worker)
	}
	return p
}

// poolWait is how long a new file waits for the pool when it is empty but
// its workers are healthy: with keys in flight, one usually lands within
// a KMS round trip.
const poolWait = 50 * time.Millisecond

// take returns a pooled key. An empty pool is waited for up to wait while
// its workers succeed; while they fail (KMS unreachable) it returns nil at
// once and the caller calls the keyring itself, reporting its error.
func (p *keyPool) take(wait time.Duration) *pooledKey {
	select {
	case k := <-p.keys:
		<-p.slots
		return k
	default:
	}
	if p.failing.Load() {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case k := <-p.keys:
		<-p.slots
		return k
	case <-t.C:
		return nil
	}
}

// worker generates a key whenever a slot is free. After a failure it backs
// off (up to 30s) so an unreachable keyring is not hammered; creates then
// call the keyring themselves and report its error.
func (p *keyPool) worker() {
	backoff := 100 * time.Millisecond
	for {
		select {
		case p.slots <- struct{}{}:
		case <-p.stop:
			return
		}
		for {
			ctx, cancel := context.WithTimeout(p.ctx, keyringTimeout)
			k, err := p.r.generateKey(ctx)
			cancel()
			p.failing.Store(err != nil)
			if err == nil {
				backoff = 100 * time.Millisecond
				p.keys <- k // never blocks: this key holds a slot
				break
			}
			p.r.log.Debug("key pool: generate failed", "err", err.Error())
			select {
			case <-p.stop:
				<-p.slots
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

// close stops the workers and wipes every pooled key.
func (p *keyPool) close() {
	p.cancel()
	close(p.stop)
	p.done.Wait()
	for {
		select {
		case k := <-p.keys:
			k.dk.Wipe()
		default:
			return
		}
	}
}
