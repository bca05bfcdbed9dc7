package fs

import (
	"errors"
	"sync/atomic"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// stats are counters for tests and the metrics endpoint.
type stats struct {
	generates atomic.Int64 // GenerateDataKey calls made
	decrypts  atomic.Int64 // Decrypt calls made (a prefetch may have made them already)
	liveKeys  atomic.Int64 // data keys held by open files (fileKey)
	stale     atomic.Int64 // uses of a node refused with ESTALE: its stored file was replaced

	// Integrity failures, by kind (IntegrityStats).
	blockAuth, headerAuth, format   atomic.Int64
	journalIgnored, journalRepaired atomic.Int64
}

// Stats is a snapshot of a Root's counters.
type Stats struct {
	Generates, Decrypts int64
	LiveKeys            int64 // data keys held by open files
	Prefetched          int64 // data keys unwrapped ahead of an open, not yet taken
	KeptForOutage       int64 // keys of files this mount wrote, kept past their close (outage.go)
	Pooled              int64 // data keys for new files waiting in the key pool
	Integrity           IntegrityStats
	// Prefetch counts the keys unwrapped ahead of their opens (key
	// readahead or --prefetch-keys) and handed to them; zero without.
	Prefetch keyring.AheadStats
}

// IntegrityStats counts what CIPHERDIR held that did not authenticate.
// A damaged block is counted at every operation that fails on it (the
// log says it once): the counts measure failed work, not damaged places.
type IntegrityStats struct {
	BlockAuth  int64 // operations failed on a block that does not authenticate (blockcipher.ErrAuth)
	HeaderAuth int64 // opens failed on a header that does not match its key (blockcipher.ErrHeaderAuth)
	Format     int64 // operations failed on bytes that do not follow the format (*blockcipher.FormatError)
	// JournalIgnored counts journal records erased because they do not
	// authenticate; JournalRepaired, blocks repaired from their record
	// (a write a crash interrupted, finished on the next open).
	JournalIgnored, JournalRepaired int64
}

// Stats returns the current counters.
func (r *Root) Stats() Stats {
	s := Stats{
		Generates: r.stats.generates.Load(),
		Decrypts:  r.stats.decrypts.Load(),
		LiveKeys:  r.stats.liveKeys.Load(),
		Integrity: IntegrityStats{
			BlockAuth:       r.stats.blockAuth.Load(),
			HeaderAuth:      r.stats.headerAuth.Load(),
			Format:          r.stats.format.Load(),
			JournalIgnored:  r.stats.journalIgnored.Load(),
			JournalRepaired: r.stats.journalRepaired.Load(),
		},
	}
	if r.ahead != nil {
		// Held, not Len: Len counts unwraps still in flight too.
		s.Prefetch = r.ahead.Stats()
		s.Prefetched = int64(s.Prefetch.Held)
	}
	s.KeptForOutage = int64(r.outage.len())
	if r.pool != nil {
		s.Pooled = int64(len(r.pool.keys))
	}
	return s
}

// countIntegrity counts err if it is an integrity failure.
func (s *stats) countIntegrity(err error) {
	var fe *blockcipher.FormatError
	switch {
	case errors.Is(err, blockcipher.ErrHeaderAuth):
		s.headerAuth.Add(1)
	case errors.Is(err, blockcipher.ErrAuth):
		s.blockAuth.Add(1)
	case errors.As(err, &fe):
		s.format.Add(1)
	}
}
