package main

import (
	"context"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsfs/kmsfs/blockcipher"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/volume"
)

// TestMetricsCollector: the keyring chain's and the file system's
// counters reach the registry under the documented names, with the Go and
// process collectors beside them, and pass promlint.
func TestMetricsCollector(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	dir := filepath.Join(t.TempDir(), "vol")
	if err := cmdInit([]string{dir}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	vol, err := volume.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	inner, _, err := buildKeyring(ctx, vol.Config, keyOverrides{})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := assembleKeyring(vol, inner, mountFlags{keyCacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer keys.stop()
	root, err := kfs.NewRoot(kfs.Options{Volume: vol, Keyring: keys.kr})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	// A create's key (cached as it is made), its reopen (a cache hit),
	// another file's key made beneath the cache and opened (a miss), and
	// an unwrap under the wrong context (a miss the key service refuses).
	ec := vol.FileContext(blockcipher.NewID())
	dk, wrapped, err := keys.kr.GenerateDataKey(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	if dk, err = keys.kr.Decrypt(ctx, wrapped, ec); err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	other := vol.FileContext(blockcipher.NewID())
	dk, wrapped2, err := inner.GenerateDataKey(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	if dk, err = keys.kr.Decrypt(ctx, wrapped2, other); err != nil {
		t.Fatal(err)
	}
	dk.Wipe()
	if _, err := keys.kr.Decrypt(ctx, wrapped2, ec); err == nil {
		t.Fatal("a key opened under another file's context")
	}

	mfs, err := newMetricsRegistry(keys, root).Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := samples(mfs)
	local := "local:" + vol.Config.Keyrings[0].KeyID
	for series, want := range map[string]float64{
		`kmsfs_keyring_calls_total{keyring="` + local + `",op="generate_data_key",result="ok"}`:       1,
		`kmsfs_keyring_calls_total{keyring="` + local + `",op="decrypt",result="ok"}`:                 1,
		`kmsfs_keyring_calls_total{keyring="` + local + `",op="decrypt",result="invalid_ciphertext"}`: 1,
		`kmsfs_keyring_call_seconds_count{keyring="` + local + `",op="decrypt"}`:                      2,
		`kmsfs_key_requests_total{op="generate_data_key",result="ok"}`:                                1,
		`kmsfs_key_requests_total{op="decrypt",result="ok"}`:                                          2,
		`kmsfs_key_requests_total{op="decrypt",result="invalid_ciphertext"}`:                          1,
		`kmsfs_key_cache_requests_total{result="hit"}`:                                                1,
		`kmsfs_key_cache_requests_total{result="miss"}`:                                               2,
		`kmsfs_keys_held{holder="cache"}`:                                                             2,
		`kmsfs_keys_held{holder="open_files"}`:                                                        0,
		`kmsfs_integrity_failures_total{kind="block_auth"}`:                                           0,
		`kmsfs_fuse_requests_total`:                                                                   0,
		`kmsfs_open_handles{kind="file"}`:                                                             0,
	} {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s = %v (present: %v), want %v", series, v, ok, want)
		}
	}
	if got["kmsfs_live_keys"] < 2 {
		t.Errorf("kmsfs_live_keys = %v with two keys cached", got["kmsfs_live_keys"])
	}
	for _, name := range []string{"go_goroutines", "process_open_fds", "go_memstats_alloc_bytes"} {
		if _, ok := got[name]; !ok {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// samples spells each gathered series as the text format does, labels
// sorted by name: histograms as their _count and _sum.
func samples(mfs []*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			series := func(name string) string {
				if len(labels) == 0 {
					return name
				}
				return name + "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[series(mf.GetName())] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[series(mf.GetName())] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[series(mf.GetName()+"_count")] = float64(m.Histogram.GetSampleCount())
				out[series(mf.GetName()+"_sum")] = m.Histogram.GetSampleSum()
			case m.Untyped != nil:
				out[series(mf.GetName())] = m.Untyped.GetValue()
			}
		}
	}
	return out
}
