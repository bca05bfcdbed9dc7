package tests

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// An idle mount gives back what a heavy run left behind (issue 14.16): 8
// workers of random 4 KiB-1 MiB reads and writes, then no requests; the
// mount process must go back under 64 MB resident. Without the release
// it stayed at its peak (about 215 MB after the same work from fio).
func TestIdleMemory(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolumeWith(t, plainBinary(t), v, "--release-memory-after", "1s")
	const (
		workers  = 8
		fileSize = 16 << 20
		ops      = 120
	)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			if err := heavyIO(m.path(fmt.Sprintf("w%d", w)), fileSize, ops, uint64(w)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	pid := m.cmd.Process.Pid
	peak := procStatusKB(t, pid, "VmHWM")
	const limit = 64 << 10 // KiB
	deadline := time.Now().Add(60 * time.Second)
	for {
		// The release first (the scavenger alone may bring a lighter
		// run under the limit), then the memory it gave back.
		released := strings.Contains(m.log.String(), "idle: returned memory")
		rss := procStatusKB(t, pid, "VmRSS")
		if released && rss < limit {
			t.Logf("resident: peak %d MB, %d MB once idle", peak>>10, rss>>10)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an idle mount holds %d MB resident (peak %d MB; release logged: %v); want under %d MB", rss>>10, peak>>10, released, limit>>10)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if peak < limit {
		t.Logf("the run peaked at %d MB only: the check above proved little", peak>>10)
	}
}

// heavyIO makes a file of size bytes and runs ops random reads and
// writes of 4 KiB to 1 MiB on it, checking each read against what was
// written.
func heavyIO(path string, size, ops int, seed uint64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(seed, 14))
	want := make([]byte, size)
	if _, err := f.Write(want); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for range ops {
		n := 4<<10 + r.IntN(1<<20-4<<10+1)
		off := r.IntN(size - n + 1)
		p := buf[:n]
		if r.IntN(2) == 0 {
			for i := range p {
				p[i] = byte(r.Uint32())
			}
			if _, err := f.WriteAt(p, int64(off)); err != nil {
				return err
			}
			copy(want[off:], p)
			continue
		}
		if _, err := f.ReadAt(p, int64(off)); err != nil {
			return err
		}
		if string(p) != string(want[off:off+n]) {
			return fmt.Errorf("%s: read %d bytes at %d: not what was written", path, n, off)
		}
	}
	return f.Close()
}

// procStatusKB reads a "kB" field of /proc/PID/status.
func procStatusKB(t testing.TB, pid int, field string) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		if err != nil {
			t.Fatalf("/proc/%d/status %s: %v", pid, field, err)
		}
		return kb
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}
