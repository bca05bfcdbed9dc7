package main

import (
	"encoding/json"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The KMS part of the benchmark: kmsfs with the aws-kms keyring against
// bench/fastkms, a KMS endpoint whose own CPU per call is small (it shares
// the two cores with the workload) and which adds its latency on a timer.
// Every KMS workload records the Decrypt and GenerateDataKey calls the
// endpoint answered during it, and the mount's CPU time, beside its time.

// kmsLatency is the latency of the KMS-latency systems: an in-region
// round trip.
const kmsLatency = 10 * time.Millisecond

// kmsSystems run the KMS-bound workloads (kmsWorkloads) against fastkms
// with kmsLatency.
var kmsSystems = []system{
	// The default mount: key pool for creates, key readahead for scans.
	{name: "kmsfs-kms10ms", kms: true, setup: func(e *env, base string) (*mounted, error) {
		return kmsfsSetup(e, base, "kmsfs-kms10ms", kmsInit(e.kmsSlow), nil)
	}},
	// Eager prefetch for backup tools: helps readers of a listing, not
	// md5sum (no listing), so the tree workloads are not repeated. The
	// serial read is left out too, to keep the run short. (It once
	// left the 8 readers after it with no key ahead: a listing's
	// prefetch skips keys taken moments before, and key readahead was
	// off under --prefetch-keys; since 4a1df1e it runs beside it.)
	{name: "kmsfs-kms10ms-prefetch", kms: true, skip: map[string]bool{"untar": true, "md5sum -c": true, md5FindOrder.name: true, "read 10k files, serial": true},
		setup: func(e *env, base string) (*mounted, error) {
			return kmsfsSetup(e, base, "kmsfs-kms10ms-prefetch", kmsInit(e.kmsSlow), []string{"--prefetch-keys"})
		}},
	// Branch keys: one KMS call per branch key and mount.
	{name: "kmsfs-branch10ms", kms: true, setup: func(e *env, base string) (*mounted, error) {
		return kmsfsSetup(e, base, "kmsfs-branch10ms", append(kmsInit(e.kmsSlow), "--branch-keys"), nil)
	}},
}

func kmsInit(endpoint string) []string {
	return []string{"--kms-key", "alias/kmsfs-bench", "--kms-endpoint", endpoint}
}

// kmsAlsoRun are workloads of the main table that the KMS systems run
// besides those marked kms: the 30k-file tree, for md5sum -c.
var kmsAlsoRun = map[string]bool{"untar": true, "md5sum -c": true}

// kmsExtra are workloads only kmsfs runs, with its local key and on the
// KMS systems: a tree of 3000 files in 210 directories, written, read
// serially by find -exec cat, and backed up by restic.
var kmsExtra = []workload{
	{name: "untar 3k files", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
		d := filepath.Join(w.dir, "t3k")
		if err := os.Mkdir(d, 0o755); err != nil {
			return 0, err
		}
		return timed(func() error { _, err := run(nil, "tar", "xf", kmsTree.tarball, "-C", d); return err })
	}},
	{name: "find -exec cat, 3k files", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
		dropCaches()
		return timed(func() error {
			_, err := run(nil, "sh", "-c", "find "+filepath.Join(w.dir, "t3k")+" -type f -exec cat {} + > /dev/null")
			return err
		})
	}},
	{name: "restic backup, 3k files", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
		repo := filepath.Join(filepath.Dir(w.dir), "restic-repo")
		os.RemoveAll(repo)
		defer os.RemoveAll(repo)
		env := []string{"RESTIC_PASSWORD=kmsfs-bench", "RESTIC_REPOSITORY=" + repo}
		if _, err := run(env, "restic", "init", "-q"); err != nil {
			return 0, err
		}
		dropCaches()
		return timed(func() error {
			_, err := run(env, "restic", "backup", "-q", "--no-cache", filepath.Join(w.dir, "t3k"))
			return err
		})
	}},
}

// md5FindOrder is md5sum -c of the source tree with its list in the
// order find lists the mount (written before the timing), as a list made
// by find has it. The main table's md5sum -c list is in creation order,
// each file in a random one of 1600 directories: key readahead sees a
// scan only within a directory there. Run by kmsfs and the KMS systems
// right after md5sum -c, to measure what the order costs.
var md5FindOrder = workload{name: "md5sum -c, find order", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
	src := filepath.Join(w.dir, "src")
	list, err := findOrderList(w.md5, src)
	if err != nil {
		return 0, err
	}
	defer os.Remove(list)
	dropCaches()
	return timed(func() error {
		_, err := run(nil, "sh", "-c", "cd "+src+" && md5sum -c --quiet "+list)
		return err
	})
}}

// findOrderList writes the lines of the md5sum list sums in the order
// find lists dir, to a temporary file it returns.
func findOrderList(sums, dir string) (string, error) {
	b, err := os.ReadFile(sums)
	if err != nil {
		return "", err
	}
	line := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		_, name, _ := strings.Cut(l, "  ")
		line[name] = l
	}
	cmd := exec.Command("find", ".", "-type", "f")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("find: %v", err)
	}
	var list strings.Builder
	for _, name := range strings.Fields(string(out)) {
		l, ok := line[strings.TrimPrefix(name, "./")]
		if !ok {
			return "", fmt.Errorf("find listed %s, not in %s", name, sums)
		}
		list.WriteString(l + "\n")
	}
	f, err := os.CreateTemp("", "kmsfs-bench-find-order-")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.WriteString(list.String()); err != nil {
		return "", err
	}
	return f.Name(), f.Close()
}

// systemWorkloads returns what sys runs, in order.
func systemWorkloads(sys system, kmsOnly bool) []workload {
	var out []workload
	for _, wl := range workloads {
		if !kmsOnly || wl.kms || kmsAlsoRun[wl.name] {
			out = append(out, wl)
		}
		if wl.name == "md5sum -c" && (kmsOnly || sys.name == "kmsfs") {
			out = append(out, md5FindOrder)
		}
	}
	if kmsOnly || sys.name == "kmsfs" {
		out = append(out, kmsExtra...)
	}
	return out
}

// kmsTree is the 3000-file tree of kmsExtra.
var kmsTree struct {
	tarball string
	files   int
	dirs    int
}

// makeKMSTree writes the tree: 14 directories of 14 subdirectories each
// (210 with the top level), files spread over all of them at random
// (fixed seed), sized like makeTree's.
func makeKMSTree(work string) {
	src := filepath.Join(work, "t3k-src")
	rng := rand.New(rand.NewPCG(3, 4))
	var dirs []string
	for a := range 14 {
		dirs = append(dirs, fmt.Sprintf("a%02d", a))
		for b := range 14 {
			dirs = append(dirs, fmt.Sprintf("a%02d/b%02d", a, b))
		}
	}
	const files = 3000
	for i := range files {
		size := int(rng.ExpFloat64() * 6000)
		b := make([]byte, size)
		for j := range b {
			b[j] = byte('a' + rng.IntN(26))
		}
		p := filepath.Join(src, dirs[rng.IntN(len(dirs))], fmt.Sprintf("f%04d.txt", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	for _, d := range dirs {
		os.MkdirAll(filepath.Join(src, d), 0o755)
	}
	kmsTree.tarball = filepath.Join(work, "t3k.tar")
	kmsTree.files, kmsTree.dirs = files, len(dirs)
	if out, err := exec.Command("tar", "cf", kmsTree.tarball, "-C", src, ".").CombinedOutput(); err != nil {
		log.Fatalf("tar: %v %s", err, out)
	}
	os.RemoveAll(src)
}

// fastKMS is a running bench/fastkms.
type fastKMS struct {
	url     string
	cmd     *exec.Cmd
	latency time.Duration
}

// startKMS runs two fastkms endpoints: one with no added latency
// (e.kmsEndpoint, for the main table's kmsfs-kms) and one with kmsLatency
// (e.kmsSlow, for kmsSystems).
func startKMS(e *env) func() {
	e.awsEnv = []string{"AWS_ACCESS_KEY_ID=bench", "AWS_SECRET_ACCESS_KEY=bench", "AWS_REGION=eu-west-2",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true"}
	var stops []func()
	for _, latency := range []time.Duration{0, kmsLatency} {
		cmd, url, err := startReady(nil, "http://", e.path("fastkms"), "-latency", latency.String())
		if err != nil {
			log.Fatalf("fastkms: %v", err)
		}
		f := &fastKMS{url: url, cmd: cmd, latency: latency}
		kmsEndpoints[url] = f
		if latency == 0 {
			e.kmsEndpoint = url
		} else {
			e.kmsSlow = url
		}
		stops = append(stops, func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

var kmsEndpoints = map[string]*fastKMS{}

// kmsStats is what fastkms's GET /stats answers.
type kmsStats struct {
	Calls  map[string]int64 `json:"calls"`
	Failed int64            `json:"failed"`
	CPUNs  int64            `json:"cpu_ns"`
}

func (s kmsStats) total() int64 {
	var n int64
	for _, v := range s.Calls {
		n += v
	}
	return n
}

func endpointStats(url string) (kmsStats, error) {
	var st kmsStats
	resp, err := http.Get(url + "/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// kmsRun is the endpoints' work over the whole run: calls and CPU time.
var kmsRun struct {
	start, end map[string]kmsStats
}

func snapshotKMS() map[string]kmsStats {
	out := map[string]kmsStats{}
	for url := range kmsEndpoints {
		if st, err := endpointStats(url); err == nil {
			out[url] = st
		}
	}
	return out
}

// Metrics recorded per workload beside its value, under metricKey.
const (
	metDecrypt  = "Decrypt calls"
	metGenerate = "GenerateDataKey calls"
	metOther    = "other KMS calls"
	metMountCPU = "mount CPU s"
	metKMSCPU   = "endpoint CPU s"
)

func metricKey(wl, metric string) string { return wl + " · " + metric }

// probe measures one workload of a kmsfs system: the endpoint's calls and
// the mount process's CPU time.
type probe struct {
	url string
	st  kmsStats
	pid int     // the mount's daemon
	cpu float64 // its CPU seconds at the start
}

// kmsURL is the fastkms endpoint sys calls, "" for none.
func kmsURL(e *env, sys system) string {
	switch {
	case sys.name == "kmsfs-kms":
		return e.kmsEndpoint
	case sys.kms:
		return e.kmsSlow
	}
	return ""
}

func startProbe(e *env, sys system, m *mounted) *probe {
	if !strings.HasPrefix(sys.name, "kmsfs") {
		return nil
	}
	p := &probe{pid: m.pid(), url: kmsURL(e, sys)}
	p.cpu = cpuTime(p.pid).Seconds()
	if p.url != "" {
		p.st, _ = endpointStats(p.url)
	}
	return p
}

func (p *probe) record(res result, backing, sys, wl string) {
	if p == nil {
		return
	}
	if p.pid > 0 {
		res.add(backing, sys, metricKey(wl, metMountCPU), cpuTime(p.pid).Seconds()-p.cpu)
	}
	if p.url == "" {
		return
	}
	st, err := endpointStats(p.url)
	if err != nil {
		return
	}
	recordCalls(res, backing, sys, wl, p.st, st)
}

// recordCalls records the calls the endpoint answered from a to b.
func recordCalls(res result, backing, sys, wl string, a, b kmsStats) {
	dec := b.Calls["Decrypt"] - a.Calls["Decrypt"]
	gen := b.Calls["GenerateDataKey"] - a.Calls["GenerateDataKey"]
	res.add(backing, sys, metricKey(wl, metDecrypt), float64(dec))
	res.add(backing, sys, metricKey(wl, metGenerate), float64(gen))
	res.add(backing, sys, metricKey(wl, metOther), float64(b.total()-a.total()-dec-gen))
	res.add(backing, sys, metricKey(wl, metKMSCPU), float64(b.CPUNs-a.CPUNs)/1e9)
}

// The pseudo-workloads under which a KMS system's calls outside its
// workloads are recorded: its init, and the rest of its life (mount,
// every workload, unmount). A branch-key volume makes its calls there.
const (
	initCalls  = "init"
	wholeMount = "mount, every workload, unmount"
)

// mountCalls counts what a KMS system's init and whole mount cost at
// the endpoint: it sets e.initDone for kmsfsSetup, and its done records
// both.
func mountCalls(e *env, sys system) (done func(res result, backing string)) {
	url := kmsURL(e, sys)
	e.initDone = nil
	if url == "" || sys.name == "kmsfs-kms" {
		return func(result, string) {}
	}
	var mid kmsStats
	a, err := endpointStats(url)
	e.initDone = func() {
		var err2 error
		if mid, err2 = endpointStats(url); err2 != nil {
			err = err2
		}
	}
	return func(res result, backing string) {
		b, err2 := endpointStats(url)
		if err == nil && err2 == nil && mid.Calls != nil {
			recordCalls(res, backing, sys.name, initCalls, a, mid)
			recordCalls(res, backing, sys.name, wholeMount, mid, b)
		}
	}
}
