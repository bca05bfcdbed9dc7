//go:build soak

package fs

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// The soak test runs the stress mix for minutes and checks that memory,
// descriptors, goroutines and live keys stay flat. Not in CI:
//
//	go test -tags soak ./fs -run TestSoak -soak 5m
var soak = flag.Duration("soak", 2*time.Minute, "how long TestSoak runs")

// TestSoak runs the stress mix for -soak and checks resources stay flat:
// heap, descriptors and goroutines after each round are compared with the
// first round's, and no data key outlives its files.
func TestSoak(t *testing.T) {
	v, kr := testVolume(t, 4096)
	mnt, root := mountInProcess(t, Options{Volume: v, Keyring: kr, KeyPool: 4})
	end := time.Now().Add(*soak)
	type usage struct {
		heap            uint64
		fds, goroutines int
	}
	var base usage
	for round := 0; time.Now().Before(end); round++ {
		sub := filepath.Join(mnt, fmt.Sprintf("round%d", round))
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		runStress(t, sub, uint64(round), 500, time.Time{})
		if err := os.RemoveAll(sub); err != nil {
			t.Fatal(err)
		}
		waitNoLiveKeys(t, root)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fds, _ := os.ReadDir("/proc/self/fd")
		cur := usage{ms.HeapInuse, len(fds), runtime.NumGoroutine()}
		t.Logf("round %d: heap %d KiB, %d fds, %d goroutines", round, cur.heap>>10, cur.fds, cur.goroutines)
		if round == 1 {
			base = cur
		}
		if round > 1 {
			if cur.heap > base.heap*2+16<<20 || cur.fds > base.fds+8 || cur.goroutines > base.goroutines+16 {
				t.Fatalf("round %d: resources grew: %+v, after round 1 %+v", round, cur, base)
			}
		}
	}
}
