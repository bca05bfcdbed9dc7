package main

import (
	"log/slog"
	"os"
	"runtime"
)

// setProcs gives the mount process half of the CPUs it may use (at least
// one), unless GOMAXPROCS is set in the environment. Every FUSE request
// has an application thread waiting for it, and each request is a short
// burst of work between two blocking reads of /dev/fuse: with fewer Ps
// the daemon leaves more of the CPUs to the applications it serves.
//
// Measured on 2 vCPUs, tmpfs, 22 interleaved pairs of bench/runner with
// GOMAXPROCS unset (1 P) and GOMAXPROCS=2 (bench/README.md, "GOMAXPROCS at
// mount"): untar of 30k files 10.4 s against 12.1 s and a 1 GiB write 728
// against 682 MB/s (medians; one P faster in 17 of 22 pairs); 4 KiB random
// reads (33.8k against 31.2k IOPS), creating 10k files and sequential
// reads within noise. While other processes kept the CPUs busy, random
// reads fell to 7-16k IOPS with two Ps in 4 pairs, never below 19.5k with
// one. Only measured on 2 vCPUs.
func setProcs(log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	lo := max(1, runtime.GOMAXPROCS(0)/2)
	runtime.GOMAXPROCS(lo)
	log.Debug("scheduler", "gomaxprocs", lo, "cpus", runtime.NumCPU())
}
