package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/keyring/agekey"
	"github.com/kmsfs/kmsfs/keyring/awskms"
)

// The metrics endpoint (--metrics-addr). keyring and fs keep plain
// counters (atomics and snapshots) and know nothing of Prometheus;
// mountCollector reads them at each scrape and hands them to
// client_golang, beside its Go runtime and process collectors. The
// metrics are listed in README.md, "Metrics".

// newMetricsRegistry returns the registry the endpoint serves.
func newMetricsRegistry(keys *mountKeys, root *kfs.Root) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newMountCollector(keys, root),
	)
	return reg
}

// maxMetricsConns bounds the metrics endpoint's open connections.
const maxMetricsConns = 16

// serveMetrics serves /metrics in the Prometheus text format.
func serveMetrics(addr string, keys *mountKeys, root *kfs.Root, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return serveMetricsOn(ln, keys, root, log), nil
}

// serveMetricsOn serves /metrics on ln until stop is called.
func serveMetricsOn(ln net.Listener, keys *mountKeys, root *kfs.Root, log *slog.Logger) (stop func()) {
	// Anyone who can reach addr can connect: connections past the limit
	// wait in the kernel's backlog, not on the mount's descriptors, and
	// the timeouts close the ones that idle or trickle.
	ln = netutil.LimitListener(ln, maxMetricsConns)
	reg := newMetricsRegistry(keys, root)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// A scrape never waits for another: each reads atomics.
		MaxRequestsInFlight: 4,
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 16 << 10}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Warn("metrics server stopped", "err", err.Error())
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}
}

// keyringLabel names one of the volume's keyrings for the keyring label:
// its kind and its key, as kmsfs.json and kmsfs inspect spell them (a KMS
// key's ARN, a local key's ID, an age recipient).
func keyringLabel(k keyring.Keyring) string {
	switch k := k.(type) {
	case *awskms.Keyring:
		if arn := k.KeyARN(); arn != "" {
			return string(keyring.KindAWSKMS) + ":" + arn
		}
		// Configured by alias and not resolved yet (a volume's config
		// records the ARN, so not at a mount): Describe starts with it.
		if f := strings.Fields(k.Describe()); len(f) > 1 {
			return string(keyring.KindAWSKMS) + ":" + f[1]
		}
	case *keyring.Local:
		return string(keyring.KindLocal) + ":" + k.KeyID()
	case *agekey.Recipient:
		return string(keyring.KindAge) + ":" + k.KeyID()
	}
	return fmt.Sprintf("%T", k)
}

// mountCollector exports a mount's counters.
type mountCollector struct {
	keys *mountKeys
	root *kfs.Root

	keyringCalls, keyringSeconds, keyRequests        *prometheus.Desc
	cacheRequests, prefetchRequests, prefetchUnwraps *prometheus.Desc
	prefetchUnused, branchUnwraps, branchCreated     *prometheus.Desc
	liveKeys, keysHeld, integrity, journalRepairs    *prometheus.Desc
	fuseRequests, openHandles                        *prometheus.Desc
}

func newMountCollector(keys *mountKeys, root *kfs.Root) *mountCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("kmsfs_"+name, help, labels, nil)
	}
	return &mountCollector{
		keys: keys, root: root,
		keyringCalls:     d("keyring_calls_total", "Calls that reached each of the volume's keyrings (a KMS key, a local key), by operation and result (ok or an error class).", "keyring", "op", "result"),
		keyringSeconds:   d("keyring_call_seconds", "Latency of the calls that reached each of the volume's keyrings.", "keyring", "op"),
		keyRequests:      d("key_requests_total", "Data key requests the file system made (creates, first opens, prefetches), by operation and result, before the key cache and branch keys answer them.", "op", "result"),
		cacheRequests:    d("key_cache_requests_total", "Unwraps asked of the key cache (--key-cache-ttl): hit, answered from it; miss, passed on.", "result"),
		prefetchRequests: d("prefetch_requests_total", "First opens that found their key unwrapped ahead (hit) or not (miss), with key readahead or --prefetch-keys.", "result"),
		prefetchUnwraps:  d("prefetch_unwraps_total", "Keys unwrapped ahead of their first open."),
		prefetchUnused:   d("prefetch_unused_total", "Keys unwrapped ahead and wiped unused after 30 s."),
		branchUnwraps:    d("branch_key_unwraps_total", "Branch keys unwrapped by the volume's keyrings."),
		branchCreated:    d("branch_keys_created_total", "Branch keys made."),
		liveKeys:         d("live_keys", "Data and branch keys held in memory by the process, by anyone: the holders of kmsfs_keys_held and calls in flight."),
		keysHeld:         d("keys_held", "Keys held in memory, by holder: open_files, pool (keys for new files made ahead), prefetch, outage (keys of files this mount wrote, kept past their close while the key service may be down), cache, branch.", "holder"),
		integrity:        d("integrity_failures_total", "Stored data that failed its check, by kind: block_auth and format count each operation that failed (EIO) on a block or on malformed bytes, header_auth each open on a header that does not match its key, journal_record each journal record erased because it does not authenticate.", "kind"),
		journalRepairs:   d("journal_repairs_total", "Blocks repaired from their journal record: writes a crash interrupted, finished on the next open."),
		fuseRequests:     d("fuse_requests_total", "FUSE requests served, but FORGET and what df sends (STATFS; the root's GETATTR, STATX, OPENDIR, RELEASEDIR)."),
		openHandles:      d("open_handles", "File and directory handles open on the mount.", "kind"),
	}
}

func (c *mountCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.keyringCalls, c.keyringSeconds, c.keyRequests, c.cacheRequests,
		c.prefetchRequests, c.prefetchUnwraps, c.prefetchUnused, c.branchUnwraps, c.branchCreated,
		c.liveKeys, c.keysHeld, c.integrity, c.journalRepairs, c.fuseRequests, c.openHandles} {
		ch <- d
	}
}

func (c *mountCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for _, s := range c.keys.services {
		for _, op := range s.m.Snapshot() {
			for result, n := range op.Results {
				counter(c.keyringCalls, n, s.name, op.Op, result)
			}
			buckets := make(map[float64]uint64, len(op.Buckets))
			for i, n := range op.Buckets {
				buckets[keyring.LatencyBuckets[i]] = uint64(n)
			}
			ch <- prometheus.MustNewConstHistogram(c.keyringSeconds, uint64(op.Count), op.Sum.Seconds(), buckets, s.name, op.Op)
		}
	}
	for _, op := range c.keys.requests.Snapshot() {
		for result, n := range op.Results {
			counter(c.keyRequests, n, op.Op, result)
		}
	}
	st := c.root.Stats()
	gauge(c.liveKeys, keyring.LiveKeys())
	gauge(c.keysHeld, st.LiveKeys, "open_files")
	gauge(c.keysHeld, st.Pooled, "pool")
	gauge(c.keysHeld, int64(st.Prefetch.Held), "prefetch")
	gauge(c.keysHeld, st.KeptForOutage, "outage")
	if c.keys.cache != nil {
		cs := c.keys.cache.Stats()
		counter(c.cacheRequests, cs.Hits, "hit")
		counter(c.cacheRequests, cs.Misses, "miss")
		gauge(c.keysHeld, int64(cs.Held), "cache")
	}
	if c.keys.branch != nil {
		bs := c.keys.branch.Stats()
		counter(c.branchUnwraps, bs.Unwraps)
		counter(c.branchCreated, bs.Creates)
		gauge(c.keysHeld, int64(bs.Held), "branch")
	}
	counter(c.prefetchRequests, st.Prefetch.Hits, "hit")
	counter(c.prefetchRequests, st.Prefetch.Misses, "miss")
	counter(c.prefetchUnwraps, st.Prefetch.Unwraps)
	counter(c.prefetchUnused, st.Prefetch.Unused)
	in := st.Integrity
	counter(c.integrity, in.BlockAuth, "block_auth")
	counter(c.integrity, in.HeaderAuth, "header_auth")
	counter(c.integrity, in.Format, "format")
	counter(c.integrity, in.JournalIgnored, "journal_record")
	counter(c.journalRepairs, in.JournalRepaired)
	a := c.root.Activity()
	counter(c.fuseRequests, int64(a.Requests))
	gauge(c.openHandles, a.OpenFiles, "file")
	gauge(c.openHandles, a.OpenDirs, "dir")
}
