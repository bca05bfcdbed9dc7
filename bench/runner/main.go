// Command runner is kmsfs's peer benchmark (run it through bench/run.sh):
// the same workloads on the native backing filesystem, go-fuse's loopback
// with kernel passthrough off, gocryptfs, securefs and kmsfs (local key,
// and aws-kms against bench/fastkms), over tmpfs and over disk, interleaved
// round by round; it reports medians with min–max and kmsfs's ratio to
// each peer as Markdown.
package main

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

type config struct {
	rounds     int
	backings   []string
	bigMiB     int
	fioSeconds int
	smallFiles int
	treeFiles  int
	only       map[string]bool
	ceiling    kmsCeiling // the rate of KMS calls through kmsfs's keyring at kmsLatency
	workloads  map[string]bool
	commit     string // what was built, taken before the build
}

// result holds every measured value: backing → system → workload → values.
type result map[string]map[string]map[string][]float64

func (r result) add(backing, sys, wl string, v float64) {
	if r[backing] == nil {
		r[backing] = map[string]map[string][]float64{}
	}
	if r[backing][sys] == nil {
		r[backing][sys] = map[string][]float64{}
	}
	r[backing][sys][wl] = append(r[backing][sys][wl], v)
}

func main() {
	rounds := flag.Int("rounds", 3, "rounds; each runs every system once, interleaved")
	backings := flag.String("backings", "tmpfs,disk", "backing filesystems: tmpfs, disk")
	quick := flag.Bool("quick", false, "smaller sizes, for a trial run")
	out := flag.String("out", "bench/RESULTS.md", "Markdown report")
	raw := flag.String("json", "bench/results.json", "raw results (read back as the previous run, then rewritten)")
	only := flag.String("only", "", "comma-separated systems to run (default all)")
	diskDir := flag.String("disk-dir", "/var/tmp/kmsfs-bench", "directory on a disk filesystem")
	onlyWl := flag.String("workloads", "", "semicolon-separated workload names to run (default all; for trials; names contain commas)")
	kmsfsArgs := flag.String("kmsfs-args", "", "space-separated flags added to every kmsfs mount (for trials; the report does not show them)")
	flag.Parse()
	cfg := config{rounds: *rounds, backings: strings.Split(*backings, ","), bigMiB: 1024, fioSeconds: 8, smallFiles: 10000, treeFiles: 30000}
	if *quick {
		cfg.bigMiB, cfg.fioSeconds, cfg.smallFiles, cfg.treeFiles = 512, 3, 3000, 8000
	}
	if *onlyWl != "" {
		cfg.workloads = map[string]bool{}
		for _, s := range strings.Split(*onlyWl, ";") {
			cfg.workloads[s] = true
		}
	}
	if *only != "" {
		cfg.only = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			cfg.only[s] = true
		}
	}
	if os.Geteuid() != 0 {
		log.Fatal("the benchmark needs root (tmpfs mounts, dropping caches)")
	}
	work, err := os.MkdirTemp("", "kmsfs-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	// The commit the binaries are built from, read before building: the
	// tree may move on during a long run.
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		cfg.commit = strings.TrimSpace(string(out))
	}
	e := &env{bin: filepath.Join(work, "bin"), mountArgs: strings.Fields(*kmsfsArgs)}
	build(e)
	stopKMS := startKMS(e)
	defer stopKMS()
	for _, kv := range e.awsEnv {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	if c, err := measureKMSCeiling(e.kmsSlow, 10000, ceilingClients); err != nil {
		log.Printf("KMS ceiling: %v", err)
	} else {
		cfg.ceiling = c
		log.Printf("KMS ceiling at %v: %.0f GenerateDataKey/s, %.0f Decrypt/s (%d callers); kmsfs's keyring %.0f µs of CPU per call, fastkms %.0f µs", kmsLatency, c.Generate, c.Decrypt, ceilingClients, c.ClientCPU, c.ServerCPU)
	}
	makeKMSTree(work)
	tree, sums := makeTree(work, cfg.treeFiles)

	res := result{}
	started := time.Now()
	kmsRun.start = snapshotKMS()
	for round := 1; round <= cfg.rounds; round++ {
		for _, b := range cfg.backings {
			base, cleanup := backingDir(b, *diskDir, work)
			for _, sys := range append(append([]system{}, systems...), kmsSystems...) {
				if cfg.only != nil && !cfg.only[sys.name] {
					continue
				}
				kmsOnly := false
				for _, k := range kmsSystems {
					kmsOnly = kmsOnly || k.name == sys.name
				}
				runSystem(e, cfg, res, round, b, base, sys, kmsOnly, tree, sums)
			}
			cleanup()
		}
	}
	kmsRun.end = snapshotKMS()
	prev := result{}
	if b, err := os.ReadFile(*raw); err == nil {
		json.Unmarshal(b, &prev)
	}
	report := render(cfg, res, prev, time.Since(started))
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		log.Fatal(err)
	}
	b, _ := json.MarshalIndent(res, "", " ")
	os.WriteFile(*raw, b, 0o644)
	fmt.Print(report)
}

func runSystem(e *env, cfg config, res result, round int, backing, base string, sys system, kmsOnly bool, tree, sums string) {
	dir := filepath.Join(base, sys.name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	m, err := sys.setup(e, dir)
	if err != nil {
		log.Printf("round %d %s %s: setup: %v", round, backing, sys.name, err)
		return
	}
	w := &wctx{e: e, dir: m.dir, tree: tree, md5: sums, cfg: cfg}
	for _, wl := range systemWorkloads(sys, kmsOnly) {
		if sys.skip[wl.name] || cfg.workloads != nil && !cfg.workloads[wl.name] {
			continue
		}
		p := startProbe(e, sys, m)
		v, err := wl.run(w)
		if err != nil {
			log.Printf("round %d %s %s %s: %v", round, backing, sys.name, wl.name, err)
			continue
		}
		res.add(backing, sys.name, wl.name, v)
		p.record(res, backing, sys.name, wl.name)
		log.Printf("round %d %-5s %-24s %-26s %10.2f %s", round, backing, sys.name, wl.name, v, wl.unit)
	}
	if err := m.stop(); err != nil {
		log.Printf("%s: %v", sys.name, err)
	}
	os.RemoveAll(dir)
}

// backingDir returns a fresh directory on the backing filesystem kind.
func backingDir(kind, diskDir, work string) (string, func()) {
	switch kind {
	case "tmpfs":
		d := filepath.Join(work, "tmpfs")
		os.MkdirAll(d, 0o755)
		if err := syscall.Mount("tmpfs", d, "tmpfs", 0, "size=8g"); err != nil {
			log.Fatalf("mount tmpfs: %v", err)
		}
		return d, func() { syscall.Unmount(d, syscall.MNT_DETACH) }
	case "disk":
		d := filepath.Join(diskDir, "run")
		os.RemoveAll(d)
		if err := os.MkdirAll(d, 0o755); err != nil {
			log.Fatal(err)
		}
		return d, func() { os.RemoveAll(d) }
	}
	log.Fatalf("unknown backing %q", kind)
	return "", nil
}

// build compiles kmsfs, the passthrough-free loopback, fsops and fastkms.
func build(e *env) {
	for _, pkg := range []string{"./cmd/kmsfs", "./bench/loopback", "./bench/fsops", "./bench/fastkms"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(e.bin, filepath.Base(pkg)), pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			log.Fatalf("build %s: %v", pkg, err)
		}
	}
}

// makeTree writes a source-like tree (a fixed seed: same files every run)
// as a tarball plus its md5sum list.
func makeTree(work string, files int) (string, string) {
	src := filepath.Join(work, "tree-src")
	rng := rand.New(rand.NewPCG(1, 2))
	sums, err := os.Create(filepath.Join(work, "tree.md5"))
	if err != nil {
		log.Fatal(err)
	}
	defer sums.Close()
	words := []string{"static", "int", "return", "struct", "void", "if", "for", "unsigned", "const", "char", "#include", "{", "}", ";", "\n"}
	for i := 0; i < files; i++ {
		dir := fmt.Sprintf("d%02d/s%02d/t%02d", rng.IntN(20), rng.IntN(10), rng.IntN(8))
		name := filepath.Join(dir, fmt.Sprintf("file%05d.c", i))
		// Sizes like a source tree: mostly a few KiB, some large.
		size := int(rng.ExpFloat64() * 6000)
		if rng.IntN(100) == 0 {
			size += 200000
		}
		var b strings.Builder
		for b.Len() < size {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(' ')
		}
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			log.Fatal(err)
		}
		h := md5.Sum([]byte(b.String()))
		fmt.Fprintf(sums, "%s  %s\n", hex.EncodeToString(h[:]), name)
	}
	tarball := filepath.Join(work, "tree.tar")
	if out, err := exec.Command("tar", "cf", tarball, "-C", src, ".").CombinedOutput(); err != nil {
		log.Fatalf("tar: %v %s", err, out)
	}
	os.RemoveAll(src)
	return tarball, sums.Name()
}

func median(v []float64) (med, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	if n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			return strings.TrimSpace(line[strings.Index(line, ":")+1:])
		}
	}
	return "unknown"
}

func version(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}
