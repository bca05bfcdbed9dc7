package keyring

import (
	"context"
	"sync/atomic"
)

// servedKey is the context key of WithServedMark's mark.
type servedKey struct{}

// WithServedMark returns ctx carrying a mark, and what reads it: a
// keyring that answers from memory, without calling its key service (a
// Cache hit, a file key unwrapped under a branch key held already), sets
// the mark. A caller that watches the key service's
// health (fs, through an outage) learns nothing about it from such an
// answer.
func WithServedMark(ctx context.Context) (context.Context, func() bool) {
	var b atomic.Bool
	return context.WithValue(ctx, servedKey{}, &b), b.Load
}

// MarkServed sets ctx's mark, if it has one.
func MarkServed(ctx context.Context) {
	if b, ok := ctx.Value(servedKey{}).(*atomic.Bool); ok {
		b.Store(true)
	}
}
