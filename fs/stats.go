package fs

import "sync/atomic"

// stats are counters for tests and the metrics endpoint.
type stats struct {
	generates atomic.Int64 // GenerateDataKey calls made
	decrypts  atomic.Int64 // Decrypt calls made (a prefetch may have made them already)
	liveKeys  atomic.Int64 // data keys held by open files (fileKey)
	stale     atomic.Int64 // uses of a node refused with ESTALE: its stored file was replaced
}

// Stats is a snapshot of a Root's counters.
type Stats struct {
	Generates, Decrypts int64
	LiveKeys            int64 // data keys held by open files
	Prefetched          int64 // data keys unwrapped ahead of an open, not yet taken
	KeptForOutage       int64 // keys of files this mount wrote, kept past their close (outage.go)
}

// Stats returns the current counters.
func (r *Root) Stats() Stats {
	s := Stats{
		Generates: r.stats.generates.Load(),
		Decrypts:  r.stats.decrypts.Load(),
		LiveKeys:  r.stats.liveKeys.Load(),
	}
	if r.ahead != nil {
		s.Prefetched = int64(r.ahead.Len())
	}
	s.KeptForOutage = int64(r.outage.len())
	return s
}
