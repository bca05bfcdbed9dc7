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
	tree10k    int // files of the small-file tree (100 directories)
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
	diskDir := flag.String("disk-dir", "/var/tmp/kmsfs-bench", "directory on a disk filesystem, for the image file of the disk backing (16 GiB, sparse)")
	onlyWl := flag.String("workloads", "", "semicolon-separated workload names to run (default all; for trials; names contain commas)")
	kmsfsArgs := flag.String("kmsfs-args", "", "space-separated flags added to every kmsfs mount (for trials; the report does not show them)")
	kmsfsAlt := flag.String("kmsfs-alt", "", "a second kmsfs binary, run as system kmsfs-alt beside this tree's in every round (for A/B trials)")
	syscallFiles := flag.Int("syscall-files", 2000, "files per operation in the syscall count step (0: skip the step)")
	flag.Parse()
	cfg := config{rounds: *rounds, backings: strings.Split(*backings, ","), bigMiB: 1024, fioSeconds: 8, smallFiles: 10000, treeFiles: 30000, tree10k: 10000}
	if *quick {
		cfg.bigMiB, cfg.fioSeconds, cfg.smallFiles, cfg.treeFiles, cfg.tree10k = 512, 3, 3000, 8000, 3000
	}
	cfg.workloads = setOf(*onlyWl, ";")
	cfg.only = setOf(*only, ",")
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
	if *kmsfsAlt != "" {
		if e.altBin, err = filepath.Abs(*kmsfsAlt); err != nil {
			log.Fatal(err)
		}
	}
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
	small := makeSmallTree(work, cfg.tree10k)

	res := result{}
	started := time.Now()
	var counts []syscallCount
	if *syscallFiles > 0 && (cfg.workloads == nil || cfg.workloads[syscallStep]) {
		counts = countSyscalls(e, cfg, work, *syscallFiles)
	}
	kmsRun.start = snapshotKMS()
	runRounds(e, cfg, res, *diskDir, work, tree, sums, small)
	kmsRun.end = snapshotKMS()
	prev := result{}
	if b, err := os.ReadFile(*raw); err == nil {
		json.Unmarshal(b, &prev)
	}
	report := render(cfg, res, prev, time.Since(started), counts, *syscallFiles)
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		log.Fatal(err)
	}
	b, _ := json.MarshalIndent(res, "", " ")
	os.WriteFile(*raw, b, 0o644)
	fmt.Print(report)
}

func runSystem(e *env, cfg config, res result, round int, backing, base string, sys system, kmsOnly bool, tree, sums, small string) {
	dir := filepath.Join(base, sys.name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	calls := mountCalls(e, sys)
	m, err := sys.setup(e, dir)
	if err != nil {
		log.Printf("round %d %s %s: setup: %v", round, backing, sys.name, err)
		return
	}
	w := &wctx{e: e, dir: m.dir, backing: m.backing, tree: tree, md5: sums, small: small, cfg: cfg}
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
	calls(res, backing)
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
		return diskBacking(diskDir, work)
	}
	log.Fatalf("unknown backing %q", kind)
	return "", nil
}

// diskBacking makes a fresh ext4 filesystem in an image file in diskDir,
// on a loop device, and mounts it. Its own filesystem keeps the syncfs of
// the small-file workloads to what the system under test stored: a
// syncfs of the disk's root filesystem would also write back whatever
// other processes on this shared machine left dirty. The loop device is
// buffered: with direct I/O every write the filesystem on it made, its
// journal's included, went to the disk at once (gocryptfs's untar took
// 96 s, native untar 3.2 s), which is no disk a filesystem is used on. A
// flush of it (syncfs, fsync) writes the image back, and drop_caches
// empties both page caches; only O_DIRECT I/O (native and loopback under
// fio) now stops at the machine's page cache.
func diskBacking(diskDir, work string) (string, func()) {
	if err := os.MkdirAll(diskDir, 0o755); err != nil {
		log.Fatal(err)
	}
	img := filepath.Join(diskDir, "kmsfs-bench.img")
	os.Remove(img)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Truncate(img, 16<<30); err != nil {
		log.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		log.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		log.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	d := filepath.Join(work, "disk")
	os.MkdirAll(d, 0o755)
	if out, err := exec.Command("mount", loop, d).CombinedOutput(); err != nil {
		exec.Command("losetup", "-d", loop).Run()
		log.Fatalf("mount %s: %v %s", loop, err, out)
	}
	return d, func() {
		if err := syscall.Unmount(d, 0); err != nil {
			syscall.Unmount(d, syscall.MNT_DETACH)
		}
		exec.Command("losetup", "-d", loop).Run()
		os.Remove(img)
	}
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

// makeSmallTree writes a tarball of files small files of 1 to 16 KiB
// (uniform, fixed seed) in 100 directories: a tree whose cost is per file.
func makeSmallTree(work string, files int) string {
	name := fmt.Sprintf("small%d", files)
	src := filepath.Join(work, name+"-src")
	rng := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 16<<10)
	for i := 0; i < files; i++ {
		p := filepath.Join(src, fmt.Sprintf("d%02d", i%100), fmt.Sprintf("f%05d", i))
		if i < 100 {
			os.MkdirAll(filepath.Dir(p), 0o755)
		}
		b := buf[:1024+rng.IntN(15<<10+1)]
		for j := range b {
			b[j] = byte('a' + rng.IntN(26))
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	tarball := filepath.Join(work, name+".tar")
	if out, err := exec.Command("tar", "cf", tarball, "-C", src, ".").CombinedOutput(); err != nil {
		log.Fatalf("tar: %v %s", err, out)
	}
	os.RemoveAll(src)
	return tarball
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

// setOf is the set of the sep-separated names in list; nil (everything)
// for an empty list.
func setOf(list, sep string) map[string]bool {
	if list == "" {
		return nil
	}
	set := map[string]bool{}
	for _, s := range strings.Split(list, sep) {
		set[s] = true
	}
	return set
}

// runRounds runs every chosen system on every backing, round after round,
// so that the systems are interleaved in time.
func runRounds(e *env, cfg config, res result, diskDir, work, tree, sums, small string) {
	for round := 1; round <= cfg.rounds; round++ {
		for _, b := range cfg.backings {
			base, cleanup := backingDir(b, diskDir, work)
			for _, sys := range append(append([]system{}, systems...), kmsSystems...) {
				if cfg.only != nil && !cfg.only[sys.name] || sys.name == "kmsfs-alt" && e.altBin == "" {
					continue
				}
				kmsOnly := false
				for _, k := range kmsSystems {
					kmsOnly = kmsOnly || k.name == sys.name
				}
				runSystem(e, cfg, res, round, b, base, sys, kmsOnly, tree, sums, small)
			}
			cleanup()
		}
	}
}
