package fs

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The stress test, in the spirit of fsx/fsstress: goroutines run random
// create/write/read/truncate/rename/link/unlink/fsync/stat on a shared
// tree through an in-process mount (so -race sees the filesystem), each
// checked against an in-memory model. Each goroutine owns the names with
// its prefix (so its model is exact) but all share the directories, and
// all write disjoint slices of one shared file.
//
// -stress.ops sets the operations per goroutine: 1500 in the long run
// (KMSFS_LONG=1), 400 in the default one, which stays under two minutes
// on 2 cores. The soak variant is in soak_test.go, behind the "soak" build
// tag.
var stressOps = flag.Int("stress.ops", 0, "operations per goroutine in TestStress (0: 400, or 1500 with KMSFS_LONG=1)")

const stressWorkers = 4

var stressDirs = []string{"", "a", "a/b", "c"}

// fileModel is the expected content of one inode; names sharing it are
// hard links.
type fileModel struct{ data []byte }

type stresser struct {
	t      testing.TB
	mnt    string
	id     int
	rng    *rand.Rand
	names  map[string]*fileModel // relative path → inode model
	shared *os.File
	region [2]int64 // this worker's slice of the shared file
	sdata  []byte   // what it wrote there
	ops    map[string]int
}

func (s *stresser) path(rel string) string { return filepath.Join(s.mnt, rel) }

func (s *stresser) randomName() string {
	dir := stressDirs[s.rng.IntN(len(stressDirs))]
	return filepath.Join(dir, fmt.Sprintf("w%d-%d", s.id, s.rng.IntN(12)))
}

func (s *stresser) existing() (string, *fileModel, bool) {
	if len(s.names) == 0 {
		return "", nil, false
	}
	keys := make([]string, 0, len(s.names))
	for k := range s.names {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	k := keys[s.rng.IntN(len(keys))]
	return k, s.names[k], true
}

func (s *stresser) fail(format string, args ...any) {
	s.t.Errorf("worker %d: "+format, append([]any{s.id}, args...)...)
	runtime.Goexit()
}

func (s *stresser) randomData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(s.rng.IntN(256))
	}
	return b
}

func (s *stresser) step() {
	switch op := s.rng.IntN(100); {
	case op < 12:
		s.ops["create"]++
		name := s.randomName()
		f, err := os.OpenFile(s.path(name), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
		if _, exists := s.names[name]; exists {
			if !errors.Is(err, os.ErrExist) {
				s.fail("create of existing %s: %v", name, err)
			}
			return
		}
		if err != nil {
			s.fail("create %s: %v", name, err)
		}
		f.Close()
		s.names[name] = &fileModel{}
	case op < 40:
		s.ops["write"]++
		name, m, ok := s.existing()
		if !ok {
			return
		}
		off := s.rng.Int64N(int64(len(m.data)) + 9000)
		p := s.randomData(1 + s.rng.IntN(10000))
		f, err := os.OpenFile(s.path(name), os.O_WRONLY, 0)
		if err != nil {
			s.fail("open %s for writing: %v", name, err)
		}
		_, err = f.WriteAt(p, off)
		f.Close()
		if err != nil {
			s.fail("write %s at %d: %v", name, off, err)
		}
		if end := off + int64(len(p)); end > int64(len(m.data)) {
			m.data = append(m.data, make([]byte, end-int64(len(m.data)))...)
		}
		copy(m.data[off:], p)
	case op < 58:
		s.ops["read"]++
		name, m, ok := s.existing()
		if !ok {
			return
		}
		got, err := os.ReadFile(s.path(name))
		if err != nil {
			s.fail("read %s: %v", name, err)
		}
		if !bytes.Equal(got, m.data) {
			s.fail("read %s: %d bytes differ from the model's %d", name, len(got), len(m.data))
		}
	case op < 66:
		s.ops["truncate"]++
		name, m, ok := s.existing()
		if !ok {
			return
		}
		size := s.rng.Int64N(int64(len(m.data))*2 + 5000)
		if err := os.Truncate(s.path(name), size); err != nil {
			s.fail("truncate %s to %d: %v", name, size, err)
		}
		if size <= int64(len(m.data)) {
			m.data = m.data[:size]
		} else {
			m.data = append(m.data, make([]byte, size-int64(len(m.data)))...)
		}
	case op < 74:
		s.ops["rename"]++
		from, m, ok := s.existing()
		if !ok {
			return
		}
		to := s.randomName()
		if err := os.Rename(s.path(from), s.path(to)); err != nil {
			s.fail("rename %s to %s: %v", from, to, err)
		}
		if from != to && s.names[to] != m {
			delete(s.names, from)
			s.names[to] = m
		}
	case op < 80:
		s.ops["link"]++
		from, m, ok := s.existing()
		if !ok {
			return
		}
		to := s.randomName()
		err := os.Link(s.path(from), s.path(to))
		if _, exists := s.names[to]; exists {
			if !errors.Is(err, os.ErrExist) {
				s.fail("link onto existing %s: %v", to, err)
			}
			return
		}
		if err != nil {
			s.fail("link %s to %s: %v", from, to, err)
		}
		s.names[to] = m
	case op < 88:
		s.ops["unlink"]++
		name, _, ok := s.existing()
		if !ok {
			return
		}
		if err := os.Remove(s.path(name)); err != nil {
			s.fail("unlink %s: %v", name, err)
		}
		delete(s.names, name)
	case op < 92:
		s.ops["fsync"]++
		name, _, ok := s.existing()
		if !ok {
			return
		}
		f, err := os.OpenFile(s.path(name), os.O_RDWR, 0)
		if err != nil {
			s.fail("open %s: %v", name, err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			s.fail("fsync %s: %v", name, err)
		}
	case op < 96:
		s.ops["stat"]++
		name, m, ok := s.existing()
		if !ok {
			return
		}
		st, err := os.Stat(s.path(name))
		if err != nil {
			s.fail("stat %s: %v", name, err)
		}
		if st.Size() != int64(len(m.data)) {
			s.fail("stat %s: size %d, model %d", name, st.Size(), len(m.data))
		}
		links := 0
		for _, o := range s.names {
			if o == m {
				links++
			}
		}
		if nl := st.Sys().(*syscall.Stat_t).Nlink; int(nl) != links {
			s.fail("stat %s: %d links, model %d", name, nl, links)
		}
	default:
		s.ops["shared"]++
		off := s.region[0] + s.rng.Int64N(s.region[1]-s.region[0]-1)
		n := min(int64(1+s.rng.IntN(6000)), s.region[1]-off)
		p := s.randomData(int(n))
		if _, err := s.shared.WriteAt(p, off); err != nil {
			s.fail("write shared file at %d: %v", off, err)
		}
		copy(s.sdata[off-s.region[0]:], p)
	}
}

// verify compares the worker's whole namespace with its model.
func (s *stresser) verify() {
	for name, m := range s.names {
		got, err := os.ReadFile(s.path(name))
		if err != nil {
			s.fail("final read %s: %v", name, err)
		}
		if !bytes.Equal(got, m.data) {
			s.fail("final content of %s differs", name)
		}
	}
	for _, dir := range stressDirs {
		ents, err := os.ReadDir(s.path(dir))
		if err != nil {
			s.fail("readdir %s: %v", dir, err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), fmt.Sprintf("w%d-", s.id)) {
				continue
			}
			if _, ok := s.names[filepath.Join(dir, e.Name())]; !ok {
				s.fail("%s exists but the model has no such name", filepath.Join(dir, e.Name()))
			}
		}
	}
}

// runStress runs the workers until each did ops operations or until
// deadline, and returns the operation counts.
func runStress(t testing.TB, mnt string, seed uint64, ops int, deadline time.Time) map[string]int {
	for _, d := range stressDirs[1:] {
		if err := os.MkdirAll(filepath.Join(mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const regionSize = 64 << 10
	shared, err := os.OpenFile(filepath.Join(mnt, "shared"), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	// Regions are not block aligned, so neighbours share blocks and
	// their read-modify-writes race unless the inode lock serialises them.
	workers := make([]*stresser, stressWorkers)
	for i := range workers {
		workers[i] = &stresser{
			t: t, mnt: mnt, id: i, rng: rand.New(rand.NewPCG(seed, uint64(i))),
			names: map[string]*fileModel{}, shared: shared,
			region: [2]int64{int64(i)*regionSize + 100, int64(i+1)*regionSize + 100},
			sdata:  make([]byte, regionSize), ops: map[string]int{},
		}
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			for n := 0; n < ops || time.Now().Before(deadline); n++ {
				if ops > 0 && n >= ops {
					break
				}
				w.step()
			}
			w.verify()
		})
	}
	wg.Wait()
	total := map[string]int{}
	for _, w := range workers {
		got := make([]byte, w.region[1]-w.region[0])
		if _, err := shared.ReadAt(got, w.region[0]); err != nil && err != io.EOF {
			t.Fatalf("read shared file: %v", err)
		}
		if !bytes.Equal(got, w.sdata) {
			t.Errorf("worker %d's region of the shared file differs", w.id)
		}
		for k, v := range w.ops {
			total[k] += v
		}
	}
	return total
}

func TestStress(t *testing.T) {
	nops := *stressOps
	if nops == 0 {
		switch v := os.Getenv("KMSFS_LONG"); v {
		case "", "0":
			nops = 400
			t.Logf("%d operations per goroutine; the long run (KMSFS_LONG=1) makes 1500", nops)
		case "1":
			nops = 1500
		default:
			t.Fatalf("KMSFS_LONG=%q: want 1 for the long run, or unset", v)
		}
	}
	for _, bs := range []int{4096, 512} {
		t.Run(fmt.Sprintf("bs%d", bs), func(t *testing.T) {
			v, kr := testVolume(t, bs)
			mnt, root := mountInProcess(t, Options{Volume: v, Keyring: kr, KeyPool: 4})
			ops := runStress(t, mnt, uint64(bs), nops, time.Time{})
			sum := 0
			for _, n := range ops {
				sum += n
			}
			t.Logf("%d operations: %v", sum, ops)
			waitNoLiveKeys(t, root)
		})
	}
}
