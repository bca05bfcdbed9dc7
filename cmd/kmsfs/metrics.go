package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/keyring"
)

// serveMetrics serves /metrics in the Prometheus text format: keyring calls,
// errors and latency, and the filesystem's live key count.
func serveMetrics(addr string, keys *mountKeys, root *kfs.Root, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		keys.metrics.WritePrometheus(w)
		if keys.branch != nil {
			b := keys.branch.Stats()
			fmt.Fprintln(w, "# HELP kmsfs_branch_key_unwraps_total Branch keys unwrapped by the key service.")
			fmt.Fprintln(w, "# TYPE kmsfs_branch_key_unwraps_total counter")
			fmt.Fprintf(w, "kmsfs_branch_key_unwraps_total %d\n", b.Unwraps)
			fmt.Fprintln(w, "# HELP kmsfs_branch_keys_created_total Branch keys made.")
			fmt.Fprintln(w, "# TYPE kmsfs_branch_keys_created_total counter")
			fmt.Fprintf(w, "kmsfs_branch_keys_created_total %d\n", b.Creates)
			fmt.Fprintln(w, "# HELP kmsfs_branch_keys_held Branch keys unwrapped in memory.")
			fmt.Fprintln(w, "# TYPE kmsfs_branch_keys_held gauge")
			fmt.Fprintf(w, "kmsfs_branch_keys_held %d\n", b.Held)
		}
		fmt.Fprintln(w, "# HELP kmsfs_live_keys Data keys held in memory: by open files, the key pool, prefetching and the key cache.")
		fmt.Fprintln(w, "# TYPE kmsfs_live_keys gauge")
		fmt.Fprintf(w, "kmsfs_live_keys %d\n", keyring.LiveKeys())
		fmt.Fprintln(w, "# HELP kmsfs_open_file_keys Data keys held by open files (of kmsfs_live_keys).")
		fmt.Fprintln(w, "# TYPE kmsfs_open_file_keys gauge")
		st := root.Stats()
		fmt.Fprintf(w, "kmsfs_open_file_keys %d\n", st.LiveKeys)
		fmt.Fprintln(w, "# HELP kmsfs_outage_keys Keys of files this mount wrote, kept past their close while the key service may be down (of kmsfs_live_keys).")
		fmt.Fprintln(w, "# TYPE kmsfs_outage_keys gauge")
		fmt.Fprintf(w, "kmsfs_outage_keys %d\n", st.KeptForOutage)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
	}, nil
}
