package main

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Where an idle mount's memory goes, measured on 2 vCPUs after fio (8
// jobs of 4 KiB-1 MiB random reads and writes): 214 MB resident, of which
// about 195 MB was heap the runtime had freed but kept. A burst of large
// requests leaves go-fuse's and blockfile's buffer pools (sync.Pool) full
// of 1 MiB buffers and the heap goal at twice the burst's peak; once
// requests stop nothing allocates, so no collection runs, the pools are
// never emptied and the scavenger returns memory only down to that goal.
// Two collections (the first moves the pools' buffers to their victim
// caches, the second frees them) and a release bring it to 19.5 MB.
const (
	idleThreshold = 256 << 10 // bytes allocated per sample below which the mount counts as idle
	idleWorth     = 32 << 20  // memory kept (bytes) below which a release is not worth two collections
)

var idleSamples = []string{
	"/gc/heap/allocs:bytes",               // cumulative, to tell busy from idle
	"/memory/classes/total:bytes",         // all the runtime mapped
	"/memory/classes/heap/released:bytes", // returned to the system
}

// memSample is one reading of idleSamples.
type memSample struct {
	allocs, total, released uint64
}

// kept is the memory the runtime holds and has not returned: live
// objects, garbage, pooled buffers, stacks and its own structures.
func (s memSample) kept() uint64 {
	if s.total < s.released {
		return 0
	}
	return s.total - s.released
}

func readMem() memSample {
	ms := make([]metrics.Sample, len(idleSamples))
	for i, n := range idleSamples {
		ms[i].Name = n
	}
	metrics.Read(ms)
	v := func(i int) uint64 {
		if ms[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return ms[i].Value.Uint64()
	}
	return memSample{allocs: v(0), total: v(1), released: v(2)}
}

// releaseWhenIdle returns the memory a burst of work left behind to the
// system once the mount has allocated almost nothing for after (0: never):
// two collections and debug.FreeOSMemory, once per idle spell. A busy
// mount is left alone; the runtime's own pacing serves it better. It
// returns what stops it.
func releaseWhenIdle(after time.Duration, log *slog.Logger) (stop func()) {
	if after <= 0 {
		return func() {}
	}
	tick := max(after/4, 100*time.Millisecond)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(tick)
		defer t.Stop()
		last := readMem()
		var idleSince time.Time
		released := false
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				cur := readMem()
				busy := cur.allocs-last.allocs >= idleThreshold
				last = cur
				switch {
				case busy:
					idleSince, released = time.Time{}, false
				case idleSince.IsZero():
					idleSince = now
				case !released && now.Sub(idleSince) >= after:
					released = true
					if cur.kept() >= idleWorth {
						releaseMemory(cur, log)
						last = readMem() // the release's own allocations are not work
					}
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func releaseMemory(before memSample, log *slog.Logger) {
	runtime.GC()
	debug.FreeOSMemory()
	after := readMem()
	log.Debug("idle: returned memory to the system",
		"kept_before_mib", before.kept()>>20, "kept_after_mib", after.kept()>>20)
}
