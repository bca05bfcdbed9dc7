package fs

import (
	"context"
	"sync"
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
	dk, wrapped, err := r.opts.Keyring.GenerateDataKey(ctx, r.fileContext(id))
	if err != nil {
		return nil, err
	}
	return &pooledKey{fileID: id, dk: dk, wrapped: wrapped}, nil
}

// keyPool keeps up to size data keys for new files generated in the
// background, so a create does not wait for a keyring round trip. Keys sit
// in locked memory (keyring.DataKey) and are wiped on close.
type keyPool struct {
	r    *Root
	keys chan *pooledKey
	stop chan struct{}
	done sync.WaitGroup
	wake chan struct{}
}

func newKeyPool(r *Root, size int) *keyPool {
	p := &keyPool{
		r:    r,
		keys: make(chan *pooledKey, size),
		stop: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}
	p.done.Go(p.fill)
	return p
}

// take returns a pooled key, or nil at once if none is ready.
func (p *keyPool) take() *pooledKey {
	select {
	case k := <-p.keys:
		select {
		case p.wake <- struct{}{}:
		default:
		}
		return k
	default:
		select {
		case p.wake <- struct{}{}:
		default:
		}
		return nil
	}
}

// fill tops the pool up, one key at a time; after a failure it backs off
// (up to 30s) so an unreachable keyring is not hammered.
func (p *keyPool) fill() {
	backoff := 100 * time.Millisecond
	for {
		for len(p.keys) < cap(p.keys) {
			ctx, cancel := p.r.keyCtx()
			k, err := p.r.generateKey(ctx)
			cancel()
			if err != nil {
				p.r.log.Debug("key pool: generate failed; creates call the keyring directly", "err", err.Error())
				select {
				case <-p.stop:
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			select {
			case p.keys <- k:
			case <-p.stop:
				k.dk.Wipe()
				return
			}
		}
		select {
		case <-p.stop:
			return
		case <-p.wake:
		}
	}
}

// close stops the filler and wipes every pooled key.
func (p *keyPool) close() {
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
