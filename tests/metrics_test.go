package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// metricsOf finds the metrics address a mount started with --metrics-addr
// logged, for scrape.
func metricsOf(t testing.TB, m *mount) *kmsMount {
	t.Helper()
	var addr string
	pollUntil(t, 10*time.Second, "the metrics address in the mount's log", func() bool {
		if mm := metricsAddrLine.FindStringSubmatch(m.log.String()); mm != nil {
			addr = mm[1]
			return true
		}
		return false
	})
	return &kmsMount{mount: m, metrics: "http://" + addr + "/metrics"}
}

// waitSeries polls until series has the value want.
func (k *kmsMount) waitSeries(t testing.TB, series string, want float64) {
	t.Helper()
	pollUntil(t, 10*time.Second, fmt.Sprintf("%s to be %v", series, want), func() bool {
		return k.scrape(t)[series] == want
	})
}

// TestMetricsKeysAndIntegrity: the keys held in memory are counted by
// holder (open files, the key pool, prefetching), handles and requests are
// counted, and damaged stored files are counted by kind of failure; the
// Go and process collectors are served beside them.
func TestMetricsKeysAndIntegrity(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	const pool, n = 3, 4
	k := metricsOf(t, mountVolume(t, v, "--key-pool", fmt.Sprint(pool), "--prefetch-keys", "--metrics-addr", "127.0.0.1:0"))
	k.waitSeries(t, `kmsfs_keys_held{holder="pool"}`, pool)
	size := 2*4096 + 10
	for i := range n {
		writeFile(t, k.path(fmt.Sprintf("f%d", i)), patterned(i, size))
	}
	k.waitSeries(t, `kmsfs_keys_held{holder="pool"}`, pool) // refilled
	k.idle(t)

	f, err := os.Open(k.path("f0"))
	if err != nil {
		t.Fatal(err)
	}
	s := k.scrape(t)
	if s[`kmsfs_open_handles{kind="file"}`] != 1 || s[openSeries] != 1 {
		t.Errorf("with one file open: %v open file handles, %v keys held by open files; want 1, 1",
			s[`kmsfs_open_handles{kind="file"}`], s[openSeries])
	}
	if s[liveSeries] < 1+pool {
		t.Errorf("kmsfs_live_keys = %v with a file open and a full pool of %d", s[liveSeries], pool)
	}
	f.Close()
	k.idle(t)
	k.waitSeries(t, `kmsfs_open_handles{kind="file"}`, 0)

	// A listing unwraps the files' keys ahead, but f0's, unwrapped by its
	// open within the last 30 s; their opens take them.
	if _, err := os.ReadDir(k.Dir); err != nil {
		t.Fatal(err)
	}
	k.waitSeries(t, `kmsfs_keys_held{holder="prefetch"}`, n-1)
	for i := range n {
		if got := readFile(t, k.path(fmt.Sprintf("f%d", i))); !bytes.Equal(got, patterned(i, size)) {
			t.Fatalf("f%d: content differs", i)
		}
	}
	k.idle(t)
	s = k.scrape(t)
	for series, want := range map[string]float64{
		`kmsfs_keys_held{holder="prefetch"}`:           0,
		`kmsfs_prefetch_unwraps_total`:                 n - 1,
		`kmsfs_prefetch_requests_total{result="hit"}`:  n - 1,
		`kmsfs_prefetch_requests_total{result="miss"}`: 2, // f0's opens
	} {
		if s[series] != want {
			t.Errorf("%s = %v, want %v", series, s[series], want)
		}
	}
	if s["kmsfs_fuse_requests_total"] < 3*n {
		t.Errorf("kmsfs_fuse_requests_total = %v after %d creates and %d reads", s["kmsfs_fuse_requests_total"], n, n)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_open_fds"} {
		if _, ok := s[name]; !ok {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}

	// Damage: a block of f1, the key commitment of f2's header, the
	// format version of f3's.
	g := geometryOf(t, v)
	cipherFile{t, filepath.Join(v.Dir, "f1")}.flip(g.blockOff(0) + 40)
	cipherFile{t, filepath.Join(v.Dir, "f2")}.flip(60)
	cipherFile{t, filepath.Join(v.Dir, "f3")}.flip(7)
	k = metricsOf(t, mountVolume(t, v, "--key-pool", "0", "--metrics-addr", "127.0.0.1:0"))
	k.AllowWarnings = true
	for _, name := range []string{"f1", "f2", "f3"} {
		if _, err := os.ReadFile(k.path(name)); errnoFrom(err) != syscall.EIO {
			t.Errorf("read of the damaged %s: %v, want EIO", name, err)
		}
	}
	s = k.scrape(t)
	if s[`kmsfs_integrity_failures_total{kind="block_auth"}`] < 1 {
		t.Errorf("a block that does not authenticate was read: block_auth = %v", s[`kmsfs_integrity_failures_total{kind="block_auth"}`])
	}
	for series, want := range map[string]float64{
		`kmsfs_integrity_failures_total{kind="header_auth"}`:    1,
		`kmsfs_integrity_failures_total{kind="format"}`:         1,
		`kmsfs_integrity_failures_total{kind="journal_record"}`: 0,
		`kmsfs_journal_repairs_total`:                           0,
		`kmsfs_keys_held{holder="pool"}`:                        0,
	} {
		if s[series] != want {
			t.Errorf("%s = %v, want %v", series, s[series], want)
		}
	}
}
