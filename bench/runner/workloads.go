package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// workload is one measurement. Values are "higher is better" when unit is
// MB/s or IOPS, "lower is better" for seconds.
type workload struct {
	name string
	unit string // "MB/s", "IOPS", "s"
	kms  bool   // KMS-bound: also run on kmsSystems
	run  func(w *wctx) (float64, error)
}

func (w workload) higherBetter() bool { return w.unit != "s" }

type wctx struct {
	e       *env
	dir     string // mountpoint
	backing string // where the system stores (for syncfs)
	tree    string // the source tarball
	md5     string // its md5sum list
	small   string // the tarball of 10k small files in 100 directories
	cfg     config
}

// syncfs flushes the filesystems of the mount and of its backing
// directory: a FUSE daemon writes through to its backing filesystem, and
// syncfs of the mount alone does not reach it (go-fuse answers SYNCFS
// with ENOSYS), so the writeback of what a workload stored is timed only
// with the backing filesystem's own syncfs.
func syncfs(dirs ...string) error {
	for _, d := range dirs {
		fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = unix.Syncfs(fd)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("syncfs %s: %v", d, err)
		}
	}
	return nil
}

func dropCaches() {
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

func timed(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return time.Since(start).Seconds(), err
}

func ddWrite(w *wctx, mib int) (float64, error) {
	p := filepath.Join(w.dir, "seq")
	secs, err := timed(func() error {
		_, err := run(nil, "dd", "if=/dev/zero", "of="+p, "bs=128k", fmt.Sprintf("count=%d", mib*8), "conv=fsync")
		return err
	})
	return float64(mib) * 1.048576 / secs, err
}

func fioIOPS(w *wctx, rw string, direct int) (float64, error) {
	p := filepath.Join(w.dir, "fio.dat")
	out, err := run(nil, "fio", "--name=bench", "--filename="+p, "--size=256M", "--bs=4k", "--rw="+rw,
		fmt.Sprintf("--direct=%d", direct), "--ioengine=psync", "--numjobs=1", "--iodepth=1", "--time_based",
		fmt.Sprintf("--runtime=%d", w.cfg.fioSeconds), "--ramp_time=1", "--output-format=json")
	if err != nil {
		return 0, err
	}
	var res struct {
		Jobs []struct {
			Read  struct{ IOPS float64 } `json:"read"`
			Write struct{ IOPS float64 } `json:"write"`
		} `json:"jobs"`
	}
	if i := strings.Index(out, "{"); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Jobs) == 0 {
		return 0, fmt.Errorf("fio output: %v", err)
	}
	if rw == "randread" {
		return res.Jobs[0].Read.IOPS, nil
	}
	return res.Jobs[0].Write.IOPS, nil
}

func fsops(w *wctx, args ...string) (float64, error) {
	out, err := run(nil, w.e.path("fsops"), args...)
	if err != nil {
		return 0, err
	}
	return strconv.ParseFloat(strings.TrimSpace(out), 64)
}

var workloads = []workload{
	{name: "seq write 250 MiB", unit: "MB/s", run: func(w *wctx) (float64, error) { return ddWrite(w, 250) }},
	{name: "seq write 1 GiB", unit: "MB/s", run: func(w *wctx) (float64, error) { return ddWrite(w, w.cfg.bigMiB) }},
	{name: "seq read", unit: "MB/s", run: func(w *wctx) (float64, error) {
		p := filepath.Join(w.dir, "seq")
		st, err := os.Stat(p)
		if err != nil {
			return 0, err
		}
		dropCaches()
		secs, err := timed(func() error {
			_, err := run(nil, "dd", "if="+p, "of=/dev/null", "bs=128k")
			return err
		})
		os.Remove(p)
		return float64(st.Size()) / 1e6 / secs, err
	}},
	{name: "untar", unit: "s", run: func(w *wctx) (float64, error) {
		d := filepath.Join(w.dir, "src")
		if err := os.Mkdir(d, 0o755); err != nil {
			return 0, err
		}
		return timed(func() error { _, err := run(nil, "tar", "xf", w.tree, "-C", d); return err })
	}},
	{name: "md5sum -c", unit: "s", run: func(w *wctx) (float64, error) {
		dropCaches()
		return timed(func() error {
			_, err := run(nil, "sh", "-c", "cd "+filepath.Join(w.dir, "src")+" && md5sum -c --quiet "+w.md5)
			return err
		})
	}},
	{name: "ls -lR", unit: "s", run: func(w *wctx) (float64, error) {
		dropCaches()
		return timed(func() error {
			_, err := run(nil, "sh", "-c", "ls -lR "+filepath.Join(w.dir, "src")+" > /dev/null")
			return err
		})
	}},
	{name: "rm -rf", unit: "s", run: func(w *wctx) (float64, error) {
		return timed(func() error { return os.RemoveAll(filepath.Join(w.dir, "src")) })
	}},
	{name: "tar x 10k + syncfs", unit: "s", run: func(w *wctx) (float64, error) {
		d := filepath.Join(w.dir, "tree10k")
		if err := os.Mkdir(d, 0o755); err != nil {
			return 0, err
		}
		syncfs(w.dir, w.backing)
		return timed(func() error {
			if _, err := run(nil, "tar", "xf", w.small, "-C", d); err != nil {
				return err
			}
			return syncfs(w.dir, w.backing)
		})
	}},
	{name: "find -exec cat 10k, cold", unit: "s", run: func(w *wctx) (float64, error) {
		dropCaches()
		return timed(func() error {
			_, err := run(nil, "sh", "-c", "find "+filepath.Join(w.dir, "tree10k")+" -type f -exec cat {} + > /dev/null")
			return err
		})
	}},
	{name: "rm -rf 10k + syncfs", unit: "s", run: func(w *wctx) (float64, error) {
		return timed(func() error {
			if _, err := run(nil, "rm", "-rf", filepath.Join(w.dir, "tree10k")); err != nil {
				return err
			}
			return syncfs(w.dir, w.backing)
		})
	}},
	{name: "fio 4k rand read", unit: "IOPS", run: func(w *wctx) (float64, error) { return fioIOPS(w, "randread", 1) }},
	{name: "fio 4k rand read, buffered", unit: "IOPS", run: func(w *wctx) (float64, error) { return fioIOPS(w, "randread", 0) }},
	{name: "fio 4k rand write", unit: "IOPS", run: func(w *wctx) (float64, error) {
		v, err := fioIOPS(w, "randwrite", 1)
		os.Remove(filepath.Join(w.dir, "fio.dat"))
		return v, err
	}},
	{name: "create 10k files", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
		return fsops(w, "create", filepath.Join(w.dir, "small"), strconv.Itoa(w.cfg.smallFiles), "4000")
	}},
	{name: "read 10k files, serial", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
		dropCaches()
		return fsops(w, "read", filepath.Join(w.dir, "small"), "1")
	}},
	{name: "read 10k files, 8 readers", unit: "s", kms: true, run: func(w *wctx) (float64, error) {
		dropCaches()
		v, err := fsops(w, "read", filepath.Join(w.dir, "small"), "8")
		os.RemoveAll(filepath.Join(w.dir, "small"))
		return v, err
	}},
}
