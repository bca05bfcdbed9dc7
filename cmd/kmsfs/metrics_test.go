package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsfs/kmsfs/blockcipher"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// TestMetricsCollector: the keyring chain's and the file system's
// counters reach the registry under the documented names, with the Go and
// process collectors beside them, and pass promlint.
func TestMetricsCollector(t *testing.T) {
	vol, inner, keys, root := metricsFixture(t)
	ctx := context.Background()

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

// TestMetricsConnectionLimit: connections that send nothing take at most
// maxMetricsConns of the endpoint's descriptors, and only until the
// server's header timeout closes them; a scrape past them waits in the
// backlog and is answered then (about 5 s).
func TestMetricsConnectionLimit(t *testing.T) {
	_, _, keys, root := metricsFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := serveMetricsOn(ln, keys, root, slog.New(slog.DiscardHandler))
	defer stop()
	addr := ln.Addr().String()

	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	// The listen backlog hands connections out in the order they came,
	// so the idle ones are accepted before the scrape's.
	for range maxMetricsConns + 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	scraped := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		scraped <- err
	}()
	select {
	case err := <-scraped:
		t.Fatalf("a scrape was answered past %d idle connections (err %v)", maxMetricsConns, err)
	case <-time.After(200 * time.Millisecond):
	}
	// The server closes a connection that sends no request header
	// within its timeout, which frees the slots the silent ones hold:
	// the scrape is answered without any of them closing on its own.
	if err := <-scraped; err != nil {
		t.Fatalf("the scrape once the silent connections timed out: %v", err)
	}
}

// metricsFixture opens a new local-key volume and builds a mount's
// keyring chain and file system over it, as a mount does, without FUSE.
func metricsFixture(t *testing.T) (*volume.Volume, keyring.Keyring, *mountKeys, *kfs.Root) {
	t.Helper()
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
	t.Cleanup(keys.stop)
	root, err := kfs.NewRoot(kfs.Options{Volume: vol, Keyring: keys.kr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return vol, inner, keys, root
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
