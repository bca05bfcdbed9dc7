package fs

import "sync/atomic"

// stats are counters for tests and the metrics endpoint.
type stats struct {
	generates  atomic.Int64 // GenerateDataKey calls made
	decrypts   atomic.Int64 // Decrypt calls made
	liveKeys   atomic.Int64 // data keys held by open files
	prefetched atomic.Int64 // data keys unwrapped ahead of an open
	stale      atomic.Int64 // uses of a node refused with ESTALE: its stored file was replaced
}

// Stats is a snapshot of a Root's counters.
type Stats struct {
	Generates, Decrypts, LiveKeys, Prefetched int64
}

// Stats returns the current counters.
func (r *Root) Stats() Stats {
	return Stats{
		Generates:  r.stats.generates.Load(),
		Decrypts:   r.stats.decrypts.Load(),
		LiveKeys:   r.stats.liveKeys.Load(),
		Prefetched: r.stats.prefetched.Load(),
	}
}
