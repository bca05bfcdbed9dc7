package main

import (
	"fmt"
	"strings"
)

// kmsGoal is one of issue 17's goals for KMS latency: a system's time on
// a workload at most maxRatio times kmsfs's with its local key, and
// optionally a bound on the KMS calls the endpoint answered.
type kmsGoal struct {
	what      string
	systems   []string // the best of these counts
	workloads []string // nil: every workload the system ran
	maxRatio  float64
	maxCalls  func(wl string) (int, string) // nil: no bound
	callsOnly bool                          // a bound on calls alone (workloads: wholeMount)
}

func kmsGoals() []kmsGoal {
	filesPlusWindow := func(string) (int, string) {
		return kmsTree.files + 64, fmt.Sprintf("Decrypt ≤ %d files + 64", kmsTree.files)
	}
	return []kmsGoal{
		{what: "create, default mount", systems: []string{"kmsfs-kms10ms"}, workloads: []string{"create 10k files"}, maxRatio: 1.5},
		{what: "8 readers (--prefetch-keys allowed)", systems: []string{"kmsfs-kms10ms", "kmsfs-kms10ms-prefetch"}, workloads: []string{"read 10k files, 8 readers"}, maxRatio: 2},
		{what: "md5sum -c of the 30k-file tree, default mount", systems: []string{"kmsfs-kms10ms"}, workloads: []string{"md5sum -c"}, maxRatio: 2},
		{what: "(for comparison, not a goal) md5sum -c with the list in find order, default mount", systems: []string{"kmsfs-kms10ms"}, workloads: []string{md5FindOrder.name}, maxRatio: 2},
		{what: "serial find -exec cat, default mount", systems: []string{"kmsfs-kms10ms"}, workloads: []string{"find -exec cat, 3k files"}, maxRatio: 2, maxCalls: filesPlusWindow},
		{what: "restic backup, default mount", systems: []string{"kmsfs-kms10ms"}, workloads: []string{"restic backup, 3k files"}, maxRatio: 2, maxCalls: filesPlusWindow},
		{what: "branch keys, every workload", systems: []string{"kmsfs-branch10ms"}, maxRatio: 1.1,
			maxCalls: func(string) (int, string) { return 2, "≤ 2 KMS calls" }},
		{what: "branch keys, a mount's life", systems: []string{"kmsfs-branch10ms"}, workloads: []string{wholeMount}, callsOnly: true,
			maxCalls: func(string) (int, string) { return 2, "≤ 2 KMS calls" }},
	}
}

// medianOf is the median of v, or 0.
func medianOf(v []float64) float64 {
	m, _, _ := median(v)
	return m
}

// renderKMS writes the KMS latency section of one backing.
func renderKMS(w func(string, ...any), cfg config, r map[string]map[string][]float64) {
	if r["kmsfs-kms10ms"] == nil && r["kmsfs-kms10ms-prefetch"] == nil && r["kmsfs-branch10ms"] == nil {
		return
	}
	w("### KMS latency (bench/fastkms, %v per call)\n\n", kmsLatency)
	w("Each cell: median time (min–max) and the KMS calls bench/fastkms answered during the workload (median of the rounds: Decrypt / GenerateDataKey, + others). ÷ local = time ÷ kmsfs's with its local key.\n\n")
	cols := []string{"kmsfs-kms10ms", "kmsfs-kms10ms-prefetch", "kmsfs-branch10ms"}
	heads := []string{"aws-kms, default mount", "aws-kms, --prefetch-keys", "aws-kms, branch keys"}
	w("| workload | kmsfs (local key) |")
	for _, h := range heads {
		w(" %s | ÷ local | KMS calls |", h)
	}
	w(" kmsfs CPU per KMS call, default mount | fastkms CPU per call, default mount |\n|---|---|%s---|---|\n", strings.Repeat("---|---|---|", len(cols)))
	loc := r["kmsfs"]
	for _, wl := range systemWorkloads(system{}, true) {
		ran := false
		for _, c := range cols {
			ran = ran || len(r[c][wl.name]) > 0
		}
		if !ran {
			continue
		}
		w("| %s | %s |", wl.name, cell(loc[wl.name], "s"))
		for _, c := range cols {
			w(" %s | %s | %s |", cell(r[c][wl.name], "s"), timeRatio(r[c][wl.name], loc[wl.name]), callsCell(r[c], wl.name))
		}
		w(" %s | %s |\n", cpuPerCall(r["kmsfs-kms10ms"], loc, wl.name), endpointCPU(r["kmsfs-kms10ms"], wl.name))
	}
	for _, pseudo := range []string{initCalls, wholeMount} {
		w("| %s | – |", pseudo)
		for _, c := range cols {
			w(" – | – | %s |", callsCell(r[c], pseudo))
		}
		w(" – | – |\n")
	}
	w("\nkmsfs CPU per KMS call: the mount's CPU time during the workload minus the local-key mount's, over the KMS calls answered (from /proc/PID/stat, 10 ms ticks).\n\n")

	renderKMSGoals(w, r, loc)
	w("\n")
	if c := cfg.ceiling; c.Generate > 0 {
		w("Through kmsfs's own keyring with nothing else running, %d callers get %.0f GenerateDataKey and %.0f Decrypt calls a second from fastkms at %v on this machine; a call costs the keyring %.0f µs of CPU and fastkms %.0f µs. At that rate 10000 calls need %.2f s.\n\n",
			ceilingClients, c.Generate, c.Decrypt, kmsLatency, c.ClientCPU, c.ServerCPU, 10000/c.Decrypt)
	}
}

// renderKMSGoals writes the table of issue 17's goals, each with its
// measured figure and verdict.
func renderKMSGoals(w func(string, ...any), r map[string]map[string][]float64, loc map[string][]float64) {
	w("Goals (issue 17):\n\n| goal | workload | measured | bound | |\n|---|---|---|---|---|\n")
	for _, g := range kmsGoals() {
		wls := g.workloads
		if wls == nil {
			for _, wl := range systemWorkloads(system{}, true) {
				if len(r[g.systems[0]][wl.name]) > 0 {
					wls = append(wls, wl.name)
				}
			}
		}
		for _, wl := range wls {
			if g.callsOnly {
				s := g.systems[0]
				if len(r[s][metricKey(wl, metDecrypt)]) == 0 {
					w("| %s | %s | – | – | not run |\n", g.what, wl)
					continue
				}
				limit, what := g.maxCalls(wl)
				calls := medianOf(r[s][metricKey(wl, metDecrypt)]) + medianOf(r[s][metricKey(wl, metGenerate)]) + medianOf(r[s][metricKey(wl, metOther)])
				verdict := "met"
				if calls > float64(limit) {
					verdict = fmt.Sprintf("**missed**: %.0f calls", calls)
				}
				w("| %s | %s | %s calls (Decrypt / GenerateDataKey + other) | %s | %s |\n", g.what, wl, callsCell(r[s], wl), what, verdict)
				continue
			}
			best, bestSys := 0.0, ""
			for _, s := range g.systems {
				v, l := medianOf(r[s][wl]), medianOf(loc[wl])
				if v > 0 && l > 0 && (bestSys == "" || v/l < best) {
					best, bestSys = v/l, s
				}
			}
			if bestSys == "" {
				w("| %s | %s | – | ≤ %.1f× | not run |\n", g.what, wl, g.maxRatio)
				continue
			}
			measured := fmt.Sprintf("%.2f× (%.2f s ÷ %.2f s", best, medianOf(r[bestSys][wl]), medianOf(loc[wl]))
			if len(g.systems) > 1 {
				measured += ", " + bestSys
			}
			measured += ")"
			bound := fmt.Sprintf("≤ %.1f×", g.maxRatio)
			verdict := "met"
			if best > g.maxRatio {
				verdict = fmt.Sprintf("**missed** by %.0f%%", (best/g.maxRatio-1)*100)
			}
			if g.maxCalls != nil {
				limit, what := g.maxCalls(wl)
				calls := medianOf(r[bestSys][metricKey(wl, metDecrypt)])
				if strings.HasPrefix(what, "≤") {
					calls += medianOf(r[bestSys][metricKey(wl, metGenerate)]) + medianOf(r[bestSys][metricKey(wl, metOther)])
				}
				measured += fmt.Sprintf("; %.0f calls", calls)
				bound += "; " + what
				if calls > float64(limit) {
					if verdict == "met" {
						verdict = ""
					} else {
						verdict += "; "
					}
					verdict += fmt.Sprintf("**missed**: %.0f calls", calls)
				}
			}
			w("| %s | %s | %s | %s | %s |\n", g.what, wl, measured, bound, verdict)
		}
	}
}

// callsCell is the median calls a workload cost: "Decrypt / GenerateDataKey",
// "+ n" for others.
func callsCell(r map[string][]float64, wl string) string {
	d, g, o := r[metricKey(wl, metDecrypt)], r[metricKey(wl, metGenerate)], r[metricKey(wl, metOther)]
	if len(d) == 0 {
		return "–"
	}
	s := fmt.Sprintf("%.0f / %.0f", medianOf(d), medianOf(g))
	if n := medianOf(o); n > 0 {
		s += fmt.Sprintf(" + %.0f", n)
	}
	return s
}

// cpuPerCall is the mount's extra CPU per KMS call on a workload, against
// the local-key mount's: "" when there were no calls.
func cpuPerCall(kms, loc map[string][]float64, wl string) string {
	calls := medianOf(kms[metricKey(wl, metDecrypt)]) + medianOf(kms[metricKey(wl, metGenerate)])
	a, b := kms[metricKey(wl, metMountCPU)], loc[metricKey(wl, metMountCPU)]
	if calls < 100 || len(a) == 0 || len(b) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", (medianOf(a)-medianOf(b))*1e6/calls)
}

// endpointCPU is fastkms's CPU per call during a workload.
func endpointCPU(r map[string][]float64, wl string) string {
	calls := medianOf(r[metricKey(wl, metDecrypt)]) + medianOf(r[metricKey(wl, metGenerate)]) + medianOf(r[metricKey(wl, metOther)])
	if calls < 100 || len(r[metricKey(wl, metKMSCPU)]) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", medianOf(r[metricKey(wl, metKMSCPU)])*1e6/calls)
}

// renderKMSRun writes a line on the endpoints: what they are and what
// they did over the whole run.
func renderKMSRun(w func(string, ...any)) {
	var parts []string
	for url, f := range kmsEndpoints {
		a, b := kmsRun.start[url], kmsRun.end[url]
		n := b.total() - a.total()
		if n <= 0 {
			continue
		}
		lat := "no added latency"
		if f.latency > 0 {
			lat = f.latency.String() + " latency"
		}
		parts = append(parts, fmt.Sprintf("%.1f µs over %d calls (%s)", float64(b.CPUNs-a.CPUNs)/1e3/float64(n), n, lat))
	}
	w("- kmsfs-kms: the aws-kms keyring against bench/fastkms (a KMS endpoint for benchmarks) with no added latency")
	if len(parts) > 0 {
		w("; fastkms's own CPU per call over the rounds (process CPU time ÷ calls answered): %s", strings.Join(parts, "; "))
	}
	w("\n")
}
