package tests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// KMS call counts, measured at the wire by kmstest.Proxy (every request
// counts, retries included) and, for each phase, cross-checked against the
// mount's own /metrics counters. Mounts use --key-pool 0 unless the test is
// about the pool, so every GenerateDataKey is caused by a create.

// kmsEnv is a local-kms, a counting proxy in front of it, and an aws-kms
// volume on key A whose kmsfs.json names the proxy as its endpoint.
type kmsEnv struct {
	srv   *kmstest.Server
	proxy *kmstest.Proxy
	vol   *volume
}

func newKMSEnv(t testing.TB) *kmsEnv {
	t.Helper()
	srv := kmstest.Start(t)
	p := kmstest.NewProxy(t, srv.Endpoint())
	vol := newVolume(t, srv.Env(), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", p.Endpoint())
	return &kmsEnv{srv: srv, proxy: p, vol: vol}
}

// kmsMount is a mount of a kmsEnv's volume serving /metrics on a port the
// kernel picked.
type kmsMount struct {
	*mount
	p       *kmstest.Proxy
	metrics string // http://host:port/metrics

	baseGen, baseDec float64 // metrics counters at the last reset
}

var metricsAddrLine = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)

func (e *kmsEnv) mount(t testing.TB, flags ...string) *kmsMount {
	t.Helper()
	m := mountVolume(t, e.vol, append([]string{"--metrics-addr", "127.0.0.1:0"}, flags...)...)
	// The child logs the address before it mounts; its stderr is copied
	// into m.log by a goroutine, so the line may land a moment later.
	var addr string
	pollUntil(t, 10*time.Second, "the metrics address in the mount's log", func() bool {
		if mm := metricsAddrLine.FindStringSubmatch(m.log.String()); mm != nil {
			addr = mm[1]
			return true
		}
		return false
	})
	return &kmsMount{mount: m, p: e.proxy, metrics: "http://" + addr + "/metrics"}
}

// pollUntil polls cond until it holds, failing t after timeout.
func pollUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrape fetches /metrics: series (name with labels) to value.
func (k *kmsMount) scrape(t testing.TB) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(k.metrics)
	if err != nil {
		t.Fatalf("scrape %s: %v", k.metrics, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", k.metrics, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("metrics line %q: want NAME VALUE", line)
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[f[0]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return out
}

const (
	liveSeries = `kmsfs_live_keys`
	openSeries = `kmsfs_keys_held{holder="open_files"}`
)

// total sums the series of metric name whose labels include every one of
// labels (each spelled name="value").
func total(s map[string]float64, name string, labels ...string) float64 {
	sum := 0.0
	for series, v := range s {
		n, rest, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && (strings.HasPrefix(rest, l+",") || strings.HasPrefix(rest, l+"}") || strings.Contains(rest, ","+l+",") || strings.Contains(rest, ","+l+"}"))
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// keyringCalls counts the calls of op that reached the volume's keyrings
// (every result).
func keyringCalls(s map[string]float64, op string) float64 {
	return total(s, "kmsfs_keyring_calls_total", `op="`+op+`"`)
}

// idle waits until no open file holds a data key (every handle the test
// closed has been released: the kernel sends RELEASE after close returns)
// and no key of a file the mount wrote is kept for an outage (fs/outage.go:
// the next open of such a file then needs KMS, as the tests expect).
func (k *kmsMount) idle(t testing.TB) {
	t.Helper()
	k.waitLiveKeys(t, 0)
	pollUntil(t, 10*time.Second, `kmsfs_keys_held{holder="outage"} to be 0`, func() bool {
		return k.scrape(t)[`kmsfs_keys_held{holder="outage"}`] == 0
	})
}

// waitLiveKeys waits until open files hold exactly n data keys.
func (k *kmsMount) waitLiveKeys(t testing.TB, n int) {
	t.Helper()
	pollUntil(t, 10*time.Second, fmt.Sprintf("%s to be %d", openSeries, n), func() bool {
		return k.scrape(t)[openSeries] == float64(n)
	})
}

// reset zeroes the proxy's counts and takes the metrics baseline.
func (k *kmsMount) reset(t testing.TB) {
	t.Helper()
	k.p.Reset()
	s := k.scrape(t)
	k.baseGen, k.baseDec = keyringCalls(s, "generate_data_key"), keyringCalls(s, "decrypt")
}

// expectCalls checks the KMS requests since the last reset: exactly gen
// GenerateDataKey and dec Decrypt, nothing else, and the mount's metrics
// counted the same calls.
func (k *kmsMount) expectCalls(t testing.TB, what string, gen, dec int) {
	t.Helper()
	g, d, all := k.p.Count("GenerateDataKey"), k.p.Count("Decrypt"), k.p.Total()
	if g != gen || d != dec || all != gen+dec {
		t.Errorf("%s: KMS saw %d GenerateDataKey, %d Decrypt, %d requests in all; want %d, %d, %d", what, g, d, all, gen, dec, gen+dec)
	}
	s := k.scrape(t)
	if mg, md := keyringCalls(s, "generate_data_key")-k.baseGen, keyringCalls(s, "decrypt")-k.baseDec; mg != float64(gen) || md != float64(dec) {
		t.Errorf("%s: metrics counted %v generate_data_key and %v decrypt calls, want %d and %d", what, mg, md, gen, dec)
	}
	t.Logf("%s: %d GenerateDataKey, %d Decrypt", what, g, d)
}

// patterned is the deterministic plaintext of test file i.
func patterned(i, size int) []byte {
	b := make([]byte, size)
	x := uint32(2654435761*uint32(i+1)) | 1
	for j := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[j] = byte(x)
	}
	return b
}

func errnoFrom(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

func TestKMSCallCounts(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	env.proxy.Reset()
	// Exact counts per operation: no key pool, and no key readahead,
	// whose keys asked ahead of a reader of several of these files in
	// a row (bounded by a window) TestKeyReadahead counts.
	k := env.mount(t, "--key-pool", "0", "--key-readahead=false")
	// The mount proves the key works: one GenerateDataKey and one
	// Decrypt, through the proxy named in kmsfs.json.
	if g, d, all := env.proxy.Count("GenerateDataKey"), env.proxy.Count("Decrypt"), env.proxy.Total(); g != 1 || d != 1 || all != 2 {
		t.Errorf("mount's key check: %d GenerateDataKey, %d Decrypt, %d in all through the proxy; want 1, 1, 2", g, d, all)
	}
	if s := k.scrape(t); keyringCalls(s, "generate_data_key") != 0 || keyringCalls(s, "decrypt") != 0 {
		t.Errorf("metrics count the mount's own key check: %v", s)
	}

	const n = 8
	const size = 3*4096 + 100
	names := make([]string, n)
	if err := os.Mkdir(k.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}

	k.reset(t)
	for i := range n {
		names[i] = fmt.Sprintf("d/f%d", i)
		writeFile(t, k.path(names[i]), patterned(i, size))
	}
	writeFile(t, k.path("d/scratch"), patterned(99, 5000))
	k.idle(t)
	k.expectCalls(t, fmt.Sprintf("%d creates with writes", n+1), n+1, 0)

	t.Run("metadata", func(t *testing.T) {
		k.reset(t)
		for _, name := range names {
			st, err := os.Stat(k.path(name))
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != size {
				t.Errorf("stat %s: size %d, want %d", name, st.Size(), size)
			}
		}
		if ents, err := os.ReadDir(k.path("d")); err != nil || len(ents) != n+1 {
			t.Errorf("readdir: %d entries, %v; want %d", len(ents), err, n+1)
		}
		for _, cmd := range [][]string{{"ls", "-lR", k.Dir}, {"find", k.Dir, "-ls"}, {"du", "-a", k.Dir}} {
			out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
			if err != nil {
				t.Errorf("%s: %v\n%s", cmd[0], err, out)
			}
			if !bytes.Contains(out, []byte("f7")) {
				t.Errorf("%s does not list f7:\n%s", cmd[0], out)
			}
		}
		p := k.path
		steps := []struct {
			name string
			f    func() error
		}{
			{"rename", func() error { return os.Rename(p("d/f0"), p("d/f0.renamed")) }},
			{"rename into a new directory", func() error {
				if err := os.Mkdir(p("e"), 0o755); err != nil {
					return err
				}
				return os.Rename(p("d/f1"), p("e/f1"))
			}},
			{"chmod", func() error { return os.Chmod(p("d/f2"), 0o600) }},
			{"chown", func() error { return os.Chown(p("d/f2"), 1000, 1000) }},
			{"utimes", func() error {
				ts := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
				return os.Chtimes(p("d/f3"), ts, ts)
			}},
			{"link", func() error { return os.Link(p("d/f4"), p("d/f4.link")) }},
			{"symlink", func() error { return os.Symlink("f5", p("d/f5.sym")) }},
			{"readlink", func() error {
				got, err := os.Readlink(p("d/f5.sym"))
				if err == nil && got != "f5" {
					err = fmt.Errorf("readlink = %q", got)
				}
				return err
			}},
			{"stat through a symlink", func() error { _, err := os.Stat(p("d/f5.sym")); return err }},
			{"setxattr", func() error { return unix.Setxattr(p("d/f6"), "user.kmsfs-test", []byte("v"), 0) }},
			{"getxattr", func() error { _, err := unix.Getxattr(p("d/f6"), "user.kmsfs-test", make([]byte, 16)); return err }},
			{"listxattr", func() error { _, err := unix.Listxattr(p("d/f6"), make([]byte, 256)); return err }},
			{"unlink of a link", func() error { return os.Remove(p("d/f4.link")) }},
			{"unlink of a symlink", func() error { return os.Remove(p("d/f5.sym")) }},
			{"truncate to 0 by path", func() error { return os.Truncate(p("d/scratch"), 0) }},
			{"unlink", func() error { return os.Remove(p("d/scratch")) }},
			{"mkdir, rmdir", func() error {
				if err := os.Mkdir(p("d/sub"), 0o700); err != nil {
					return err
				}
				return os.Remove(p("d/sub"))
			}},
			{"statfs", func() error { var st unix.Statfs_t; return unix.Statfs(p("d"), &st) }},
		}
		for _, s := range steps {
			if err := s.f(); err != nil {
				t.Errorf("%s: %v", s.name, err)
			}
		}
		k.expectCalls(t, "stat, readdir, ls -lR, find, du, rename, chmod, chown, utimes, link, symlink, xattrs, unlink, truncate to 0", 0, 0)
	})
	names[0], names[1] = "d/f0.renamed", "e/f1"

	t.Run("read each file once", func(t *testing.T) {
		k.reset(t)
		for i, name := range names {
			if got := readFile(t, k.path(name)); !bytes.Equal(got, patterned(i, size)) {
				t.Errorf("%s: content differs", name)
			}
		}
		k.idle(t)
		k.expectCalls(t, fmt.Sprintf("reading %d files", n), 0, n)
	})

	t.Run("two descriptors share one key", func(t *testing.T) {
		k.reset(t)
		a, err := os.Open(k.path(names[2]))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.OpenFile(k.path(names[2]), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 10)
		if _, err := a.ReadAt(buf, 4096); err != nil || !bytes.Equal(buf, patterned(2, size)[4096:4106]) {
			t.Errorf("read through the first descriptor: %v", err)
		}
		if _, err := b.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, patterned(2, size)[:10]) {
			t.Errorf("read through the second descriptor: %v", err)
		}
		a.Close()
		b.Close()
		k.idle(t)
		k.expectCalls(t, "two descriptors open at once", 0, 1)
	})

	t.Run("last close wipes the key", func(t *testing.T) {
		for range 2 {
			k.reset(t)
			if got := readFile(t, k.path(names[3])); !bytes.Equal(got, patterned(3, size)) {
				t.Error("content differs")
			}
			k.idle(t)
			k.expectCalls(t, "open after the last close", 0, 1)
		}
	})

	t.Run("concurrent first opens share one Decrypt", func(t *testing.T) {
		const latency = 100 * time.Millisecond
		const g = 16
		k.p.SetFault(kmstest.Fault{Op: "Decrypt", Latency: latency})
		defer k.p.Heal()
		k.reset(t)
		start := make(chan struct{})
		var opened, done sync.WaitGroup
		files := make([]*os.File, g)
		errs := make([]error, g)
		for i := range g {
			opened.Add(1)
			done.Go(func() {
				<-start
				f, err := os.Open(k.path(names[4]))
				files[i], errs[i] = f, err
				opened.Done()
			})
		}
		t0 := time.Now()
		close(start)
		opened.Wait()
		elapsed := time.Since(t0)
		done.Wait()
		for i, f := range files {
			if errs[i] != nil {
				t.Errorf("open %d: %v", i, errs[i])
				continue
			}
			buf := make([]byte, 8)
			if _, err := f.ReadAt(buf, 100); err != nil || !bytes.Equal(buf, patterned(4, size)[100:108]) {
				t.Errorf("read %d: %v", i, err)
			}
		}
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		t.Logf("%d concurrent opens with %v Decrypt latency took %v", g, latency, elapsed)
		if elapsed < latency {
			t.Errorf("the opens took %v, less than the injected latency %v: the fault did not apply", elapsed, latency)
		}
		k.idle(t)
		k.expectCalls(t, fmt.Sprintf("%d concurrent opens of one file", g), 0, 1)
	})

	// Every handle is closed: the same volume with the key cache.
	if err := k.unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	t.Run("key cache", func(t *testing.T) {
		kc := env.mount(t, "--key-pool", "0", "--key-cache-ttl", "1m")
		kc.p.Reset()
		kc.reset(t)
		for round, want := range []int{1, 0, 0} {
			if got := readFile(t, kc.path(names[5])); !bytes.Equal(got, patterned(5, size)) {
				t.Error("content differs")
			}
			kc.idle(t)
			if d := kc.p.Count("Decrypt"); d != want {
				t.Errorf("open %d with --key-cache-ttl 1m: %d Decrypt, want %d", round+1, d, want)
			}
			kc.p.Reset()
		}
		// A key made by a create is cached too: its first reopen needs
		// no Decrypt.
		writeFile(t, kc.path("cached-new"), patterned(50, 100))
		kc.idle(t)
		kc.p.Reset()
		if got := readFile(t, kc.path("cached-new")); !bytes.Equal(got, patterned(50, 100)) {
			t.Error("content differs")
		}
		kc.idle(t)
		if g, d := kc.p.Count("GenerateDataKey"), kc.p.Count("Decrypt"); g != 0 || d != 0 {
			t.Errorf("reopening a new file with the key cache: %d GenerateDataKey, %d Decrypt; want 0, 0", g, d)
		}
		// The metrics sit beneath the cache: they count what reached
		// KMS, and the cache counts what it answered.
		s := kc.scrape(t)
		for _, c := range []struct {
			what      string
			got, want float64
		}{
			{"decrypt calls that reached KMS", keyringCalls(s, "decrypt") - kc.baseDec, 1},
			{"generate_data_key calls that reached KMS", keyringCalls(s, "generate_data_key") - kc.baseGen, 1},
			{"cache hits", s[`kmsfs_key_cache_requests_total{result="hit"}`], 3},
			{"cache misses", s[`kmsfs_key_cache_requests_total{result="miss"}`], 1},
			{"keys cached", s[`kmsfs_keys_held{holder="cache"}`], 2},
			{"decrypt requests of the file system", total(s, "kmsfs_key_requests_total", `op="decrypt"`), 4},
		} {
			if c.got != c.want {
				t.Errorf("with --key-cache-ttl 1m: %s = %v, want %v", c.what, c.got, c.want)
			}
		}
	})
}

// TestKMSKeyPool: the pool fills in the background and stops at its size;
// creates take their keys from it without a KMS call; and creates cost one
// key each, pooled or not: n creates and a refill make n + pool keys, never
// more. All of it is counted (proxy and metrics), not timed.
func TestKMSKeyPool(t *testing.T) {
	t.Parallel()
	const pool = 4
	env := newKMSEnv(t)
	env.proxy.Reset()
	k := env.mount(t, "--key-pool", strconv.Itoa(pool))
	// Metrics count a call when it returns; the mount's own key check is
	// not counted there (TestKMSCallCounts), only at the proxy.
	gen := func() (ok, failed float64) {
		s := k.scrape(t)
		return total(s, "kmsfs_keyring_calls_total", `op="generate_data_key"`, `result="ok"`),
			total(s, "kmsfs_keyring_calls_total", `op="generate_data_key"`, `result="access_denied"`)
	}
	pollUntil(t, 10*time.Second, "the key pool to fill", func() bool {
		ok, _ := gen()
		return ok >= pool
	})
	// Full, the pool's workers wait for a free slot: no further call.
	if g := env.proxy.Count("GenerateDataKey") - 1; g != pool {
		t.Errorf("the pool of %d filled with %d GenerateDataKey calls", pool, g)
	}

	// KMS now refuses every GenerateDataKey: only pooled keys can serve
	// the next creates. (The pool's refills fail meanwhile and back off.)
	env.proxy.SetFault(kmstest.Fault{Op: "GenerateDataKey", ErrorCode: "AccessDeniedException"})
	for i := range pool {
		if err := os.WriteFile(k.path(fmt.Sprintf("p%d", i)), patterned(i, 1000), 0o644); err != nil {
			t.Errorf("create %d with a full pool and GenerateDataKey refused: %v; its key did not come from the pool", i, err)
		}
	}
	env.proxy.Heal()
	// Drained (and maybe backing off), the pool leaves creates to call
	// KMS themselves.
	const n = 2 * pool
	for i := pool; i < n; i++ {
		writeFile(t, k.path(fmt.Sprintf("p%d", i)), patterned(i, 1000))
	}
	// The pool refills to its size and stops. After the refusals its
	// workers back off for up to 30 s (fs/keypool.go): a bound well past
	// that, not a speed.
	pollUntil(t, 90*time.Second, "the pool to refill", func() bool {
		ok, _ := gen()
		return ok >= n+pool
	})
	ok, failed := gen()
	if ok != n+pool {
		t.Errorf("%d creates with --key-pool %d made %v GenerateDataKey calls that succeeded, want %d", n, pool, ok, n+pool)
	}
	// Refused calls are not retried: one request each.
	if g := env.proxy.Count("GenerateDataKey") - 1; float64(g) != ok+failed {
		t.Errorf("the proxy saw %d GenerateDataKey requests, the metrics count %v calls (%v refused)", g, ok+failed, failed)
	}
	t.Logf("%d creates, --key-pool %d: %v GenerateDataKey, %v refused while the pool was being used", n, pool, ok, failed)
	for i := range n {
		if got := readFile(t, k.path(fmt.Sprintf("p%d", i))); !bytes.Equal(got, patterned(i, 1000)) {
			t.Errorf("p%d: content differs", i)
		}
	}
}

// TestKMSParallelFirstOpens: first opens of different files unwrap their
// keys in parallel. With latency on every Decrypt, the proxy then holds
// several at once; opens that waited for each other would never overlap
// there (MaxInFlight 1), however fast or slow the machine.
func TestKMSParallelFirstOpens(t *testing.T) {
	t.Parallel()
	const n = 8
	const latency = 300 * time.Millisecond
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	for i := range n {
		writeFile(t, k.path(fmt.Sprintf("f%d", i)), patterned(i, 5000))
	}
	k.idle(t)
	env.proxy.SetFault(kmstest.Fault{Op: "Decrypt", Latency: latency})
	k.reset(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			b, err := os.ReadFile(k.path(fmt.Sprintf("f%d", i)))
			if err == nil && !bytes.Equal(b, patterned(i, 5000)) {
				err = errors.New("content differs")
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("f%d: %v", i, err)
		}
	}
	par := env.proxy.MaxInFlight("Decrypt")
	t.Logf("first opens of %d files with %v Decrypt latency: at most %d Decrypt calls in flight at once", n, latency, par)
	if par < 2 {
		t.Errorf("first opens of %d files: at most %d Decrypt in flight at once; the opens waited for each other", n, par)
	}
	env.proxy.Heal()
	k.idle(t)
	k.expectCalls(t, fmt.Sprintf("first opens of %d files", n), 0, n)
}

func TestKMSMetrics(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	k.AllowWarnings = true // one injected failure below
	env.proxy.Reset()
	for i := range 3 {
		writeFile(t, k.path(fmt.Sprintf("m%d", i)), patterned(i, 2000))
	}
	var open []*os.File
	for i := range 3 {
		f, err := os.Open(k.path(fmt.Sprintf("m%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, f)
	}
	s := k.scrape(t)
	if s[liveSeries] != 3 {
		t.Errorf("kmsfs_live_keys = %v with 3 files open, want 3", s[liveSeries])
	}
	for _, f := range open {
		f.Close()
	}
	k.idle(t)

	// A refused Decrypt is a call and an error of its class.
	env.proxy.SetFault(kmstest.Fault{Op: "Decrypt", ErrorCode: "AccessDeniedException"})
	if _, err := os.Open(k.path("m0")); errnoFrom(err) != syscall.EACCES {
		t.Errorf("open with AccessDeniedException: %v, want EACCES", err)
	}
	env.proxy.Heal()

	s = k.scrape(t)
	arn := `keyring="aws-kms:` + kmstest.KeyAARN + `"`
	checks := []struct {
		series string
		got    float64
		want   int
	}{
		{"calls of generate_data_key", keyringCalls(s, "generate_data_key"), env.proxy.Count("GenerateDataKey")},
		{"calls of decrypt", keyringCalls(s, "decrypt"), env.proxy.Count("Decrypt")},
		{`kmsfs_keyring_calls_total{` + arn + `,op="decrypt",result="access_denied"}`, s[`kmsfs_keyring_calls_total{`+arn+`,op="decrypt",result="access_denied"}`], 1},
		{`kmsfs_keyring_calls_total{` + arn + `,op="decrypt",result="ok"}`, s[`kmsfs_keyring_calls_total{`+arn+`,op="decrypt",result="ok"}`], env.proxy.Count("Decrypt") - 1},
		{`kmsfs_keyring_call_seconds_count{` + arn + `,op="decrypt"}`, s[`kmsfs_keyring_call_seconds_count{`+arn+`,op="decrypt"}`], env.proxy.Count("Decrypt")},
		{`kmsfs_keyring_call_seconds_count{` + arn + `,op="generate_data_key"}`, s[`kmsfs_keyring_call_seconds_count{`+arn+`,op="generate_data_key"}`], env.proxy.Count("GenerateDataKey")},
		// The file system asked for as many keys as reached KMS: no
		// cache, no branch keys.
		{`kmsfs_key_requests_total{op="decrypt",result="access_denied"}`, s[`kmsfs_key_requests_total{op="decrypt",result="access_denied"}`], 1},
		{"key requests of generate_data_key", total(s, "kmsfs_key_requests_total", `op="generate_data_key"`), env.proxy.Count("GenerateDataKey")},
		{liveSeries, s[liveSeries], 0},
	}
	for _, c := range checks {
		if c.got != float64(c.want) {
			t.Errorf("%s = %v, want %d", c.series, c.got, c.want)
		}
	}
	if env.proxy.Count("GenerateDataKey") != 3 || env.proxy.Count("Decrypt") != 4 {
		t.Errorf("proxy saw %d GenerateDataKey and %d Decrypt, want 3 and 4", env.proxy.Count("GenerateDataKey"), env.proxy.Count("Decrypt"))
	}
	t.Logf("metrics: %v generate_data_key, %v decrypt calls; proxy: %d GenerateDataKey, %d Decrypt", keyringCalls(s, "generate_data_key"), keyringCalls(s, "decrypt"),
		env.proxy.Count("GenerateDataKey"), env.proxy.Count("Decrypt"))
}
