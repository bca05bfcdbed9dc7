package main

import (
	"log/slog"
	"os"
	"runtime"
)

// setProcs gives the mount process half of the CPUs it may use (at least
// one), unless GOMAXPROCS is set in the environment. Every FUSE request
// has an application thread waiting for it, and each request is a short
// burst of work between two blocking reads of /dev/fuse. With a P for
// every CPU the mount is much slower on small machines; the likely cause
// (measured, not proven) is the scheduler waking threads to look for work
// on the idle Ps, which take the CPUs the applications need. Measured on 2
// vCPUs (tmpfs, same run, bench/README.md): 4 KiB random reads 23-26k ->
// 37k IOPS, untar of 30k files 14.2-14.4 s -> 7.8-8.4 s, creating 10k
// files 2.2-2.3 s -> 1.4-1.5 s; sequential reads lose (1.6 -> 1.3 GB/s),
// since decryption then runs on one core.
func setProcs(log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	lo := max(1, runtime.GOMAXPROCS(0)/2)
	runtime.GOMAXPROCS(lo)
	log.Debug("scheduler", "gomaxprocs", lo, "cpus", runtime.NumCPU())
}
