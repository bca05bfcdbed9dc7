package main

import (
	"log/slog"
	"os"
	"runtime"

	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// setProcs gives the mount process half of the CPUs it may use (at least
// one), unless GOMAXPROCS is set in the environment or the volume's
// files are opened through a key service (see keepProcs). Every FUSE request
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
	all := runtime.GOMAXPROCS(0)
	lo := max(1, all/2)
	runtime.GOMAXPROCS(lo)
	restoreProcs = func() {
		runtime.GOMAXPROCS(all)
		log.Debug("scheduler", "gomaxprocs", all, "cpus", runtime.NumCPU())
	}
	log.Debug("scheduler", "gomaxprocs", lo, "cpus", runtime.NumCPU())
}

// restoreProcs undoes setProcs.
var restoreProcs = func() {}

// keepProcs gives the mount back every P when the volume's files are
// opened through a key service: a per-file volume with an aws-kms
// keyring. There a scan keeps up to 64 key unwraps in flight (key
// readahead, the key pool), and with one P their answers wait behind the
// FUSE requests, which themselves wait for those keys: on 2 vCPUs with 10
// ms round trips (bench/fastkms), a KMS call measured 17 ms on average
// instead of 11, and find -exec cat of 3000 files took 1.22-1.45 s with
// one P against 0.88-0.99 s with two (3 pairs each; creating them, 1.74-
// 2.06 s both ways). Branch-key and local volumes make no call per file.
func keepProcs(cfg *volume.Config) {
	if cfg.Branch() {
		return
	}
	for _, k := range cfg.Keyrings {
		if k.Kind == keyring.KindAWSKMS {
			restoreProcs()
			return
		}
	}
}
