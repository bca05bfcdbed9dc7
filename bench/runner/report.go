package main

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// peers are the encrypted filesystems kmsfs is compared with.
var peers = []string{"gocryptfs", "securefs"}

func cell(v []float64, unit string) string {
	if len(v) == 0 {
		return "–"
	}
	med, lo, hi := median(v)
	f := "%.0f"
	if unit == "s" {
		f = "%.2f"
	}
	if len(v) == 1 {
		return fmt.Sprintf(f, med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", med, lo, hi)
}

// speedRatio is how many times faster a is than b (>1: a faster).
func speedRatio(wl workload, a, b []float64) (float64, bool) {
	if len(a) == 0 || len(b) == 0 {
		return 0, false
	}
	ma, _, _ := median(a)
	mb, _, _ := median(b)
	if ma == 0 || mb == 0 {
		return 0, false
	}
	if wl.higherBetter() {
		return ma / mb, true
	}
	return mb / ma, true
}

func ratioCell(r float64, ok bool, min float64) string {
	if !ok {
		return "–"
	}
	mark := ""
	if r < min {
		mark = " ✗"
	}
	return fmt.Sprintf("%.2f×%s", r, mark)
}

func render(cfg config, res result, prev result, elapsed time.Duration, counts []syscallCount, syscallFiles int) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	kernel, _ := exec.Command("uname", "-r").Output()
	w("# kmsfs benchmark results\n\n")
	w("Produced by `bench/run.sh` on %s in %s: %d rounds, systems interleaved round by round; each cell is the median (min–max).\n\n",
		time.Now().UTC().Format("2006-01-02"), elapsed.Round(time.Second), cfg.rounds)
	w("- CPU: %s, %d cores; kernel %s\n", cpuModel(), runtime.NumCPU(), strings.TrimSpace(string(kernel)))
	w("- kmsfs %s (%s); %s; %s; go-fuse loopback with kernel passthrough off (bench/loopback)\n",
		cfg.commit, runtime.Version(), version("gocryptfs", "-version"), version("securefs", "version"))
	w("- every system with its defaults (securefs caches attributes for 30 s, the others 1 s); kmsfs with its default key pool\n")
	w("- ratio = how many times faster kmsfs (local key) is than the peer; ✗ marks a miss of the goal (≥ 1.0× gocryptfs, ≥ 0.9× the best peer)\n")
	renderKMSRun(w)
	w("- workloads: dd bs=128k conv=fsync; dd read after drop_caches; tar x / md5sum -c / ls -lR / rm -rf of a %d-file source-like tree (fixed seed); "+
		"tar x of %d files of 1–16 KiB in 100 directories then syncfs of the mount and of its backing filesystem, `find -type f -exec cat {} +` of them after drop_caches, `rm -rf` of them then syncfs; "+
		"fio 4 KiB psync random reads on a 256 MiB file, %d s, direct=1 and buffered (direct=0), and random writes direct=1; %d files of 4000 B created and read back by one process (bench/fsops)\n\n",
		cfg.treeFiles, cfg.tree10k, cfg.fioSeconds, cfg.smallFiles)

	renderSyscalls(w, counts, syscallFiles)

	for _, backing := range cfg.backings {
		r := res[backing]
		if r == nil {
			continue
		}
		w("## %s\n\n", backing)
		cols := []string{}
		for _, s := range systems {
			if r[s.name] != nil {
				cols = append(cols, s.name)
			}
		}
		w("| workload | unit | %s | ÷ gocryptfs | ÷ securefs | ÷ best peer |\n", strings.Join(cols, " | "))
		w("|---|---|%s---|---|---|\n", strings.Repeat("---|", len(cols)))
		var first []string
		for _, wl := range workloads {
			w("| %s | %s |", wl.name, wl.unit)
			for _, c := range cols {
				w(" %s |", cell(r[c][wl.name], wl.unit))
			}
			k := r["kmsfs"][wl.name]
			g, gok := speedRatio(wl, k, r["gocryptfs"][wl.name])
			s, sok := speedRatio(wl, k, r["securefs"][wl.name])
			best, bok := 0.0, false
			for _, p := range peers {
				if v, ok := speedRatio(wl, k, r[p][wl.name]); ok && (!bok || v < best) {
					best, bok = v, true
				}
			}
			w(" %s | %s | %s |\n", ratioCell(g, gok, 1.0), ratioCell(s, sok, 0.9), ratioCell(best, bok, 0.9))
			if bok && best >= 1.0 {
				first = append(first, wl.name)
			}
		}
		w("\nkmsfs is first among the encrypted filesystems on: %s.\n\n", orNone(first))

		renderKMS(w, cfg, r)

		// Regressions against the previous run.
		if pr := prev[backing]; pr != nil {
			var regress []string
			for _, s := range append(append([]system{}, systems...), kmsSystems...) {
				if !strings.HasPrefix(s.name, "kmsfs") {
					continue
				}
				for _, wl := range workloads {
					if v, ok := speedRatio(wl, r[s.name][wl.name], pr[s.name][wl.name]); ok && v < 0.9 {
						regress = append(regress, fmt.Sprintf("%s %s: %.0f%% slower", s.name, wl.name, (1-v)*100))
					}
				}
			}
			w("Compared with the previous results.json: %s.\n\n", orNone(regress))
		}
	}
	return b.String()
}

func timeRatio(a, b []float64) string {
	if len(a) == 0 || len(b) == 0 {
		return "–"
	}
	ma, _, _ := median(a)
	mb, _, _ := median(b)
	return fmt.Sprintf("%.2f×", ma/mb)
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}
