package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// Key readahead (per-file volumes, on by default), counted at the KMS
// proxy: listing, stat and find cost no Decrypt; a serial reader of a
// directory, in listing order or in name order, costs at most one Decrypt
// per file read plus one window of keys it did not use (64); a tree
// listed twice before it is read (as restic does) no more; a serial
// reader of a whole tree (find -exec cat) no more either; a reader in
// random order one Decrypt per file.
func TestKeyReadahead(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	const n = 150
	k := env.mount(t)
	for _, d := range []string{"a", "b", "c"} {
		if err := os.Mkdir(k.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			writeFile(t, k.path(d, fmt.Sprintf("f%03d", i)), patterned(i, 200))
		}
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	const window = 64

	k = env.mount(t, "--read-only")
	env.proxy.Reset()
	for _, d := range []string{"a", "b", "c"} {
		ents, err := os.ReadDir(k.path(d))
		if err != nil || len(ents) != n {
			t.Fatalf("ls %s: %d, %v", d, len(ents), err)
		}
		for _, e := range ents {
			if _, err := e.Info(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if c := env.proxy.Count("Decrypt"); c != 0 {
		t.Errorf("listing and stat of %d files: %d Decrypt, want 0", 3*n, c)
	}

	read := func(d string, names []string) {
		t.Helper()
		for _, name := range names {
			var i int
			fmt.Sscanf(name, "f%03d", &i)
			if got := readFile(t, k.path(d, name)); !bytes.Equal(got, patterned(i, 200)) {
				t.Fatalf("%s/%s differs", d, name)
			}
		}
	}
	listed := func(d string) []string {
		ents, _ := os.ReadDir(k.path(d)) // ReadDir sorts; the kernel's order is getdents'
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	dirOrder := func(d string) []string {
		f, err := os.Open(k.path(d))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		names, err := f.Readdirnames(-1)
		if err != nil {
			t.Fatal(err)
		}
		return names
	}

	// In the order the directory lists them (find -exec cat {} +).
	env.proxy.Reset()
	read("a", dirOrder("a"))
	checkReadahead(t, env.proxy, "a serial read in listing order", n, window)

	// In name order, after two listings (restic lists twice and sorts).
	dirOrder("b")
	names := listed("b")
	slices.Sort(names)
	env.proxy.Reset()
	read("b", names)
	checkReadahead(t, env.proxy, "a serial read in name order after two listings", n, window)

	// Random order: no scan, no readahead, one Decrypt per file. A fresh
	// mount: the scan of b, in name order, walked on into c.
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, "--read-only")
	names = dirOrder("c")
	rng := []int{7, 3, 120, 55, 1, 99, 42, 13, 140, 77}
	var pick []string
	for _, i := range rng {
		pick = append(pick, names[i])
	}
	env.proxy.Reset()
	read("c", pick)
	if c := env.proxy.Count("Decrypt"); c != len(pick) {
		t.Errorf("%d reads in no order: %d Decrypt, want %d", len(pick), c, len(pick))
	}

	// The whole tree, depth first in listing order, as find -exec cat
	// reads it: the scan goes on from one directory to the next.
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, "--read-only")
	var tree [][2]string
	for _, d := range dirOrder("") {
		for _, name := range dirOrder(d) {
			tree = append(tree, [2]string{d, name})
		}
	}
	env.proxy.Reset()
	for _, f := range tree {
		read(f[0], []string{f[1]})
	}
	checkReadahead(t, env.proxy, "a serial read of the tree", len(tree), window)
}

func checkReadahead(t *testing.T, p *kmstest.Proxy, what string, files, window int) {
	t.Helper()
	c := p.Count("Decrypt")
	t.Logf("%s of %d files: %d Decrypt", what, files, c)
	if c < files || c > files+window {
		t.Errorf("%s of %d files: %d Decrypt, want %d to %d", what, files, c, files, files+window)
	}
}

// TestPrefetchKeysOnce: with --prefetch-keys, listing a directory twice
// unwraps each key once.
func TestPrefetchKeysOnce(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	const n = 100
	k := env.mount(t)
	for i := range n {
		writeFile(t, k.path(fmt.Sprintf("f%03d", i)), patterned(i, 100))
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, "--prefetch-keys", "--read-only")
	env.proxy.Reset()
	for range 2 {
		if _, err := os.ReadDir(k.Dir); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if got := readFile(t, k.path(fmt.Sprintf("f%03d", i))); !bytes.Equal(got, patterned(i, 100)) {
			t.Fatalf("f%03d differs", i)
		}
	}
	if c := env.proxy.Count("Decrypt"); c != n {
		t.Errorf("two listings and a read of %d files with --prefetch-keys: %d Decrypt, want %d", n, c, n)
	}
}

// TestKeyReadaheadDirectoryStarts: a reader that jumps between
// directories but reads each from its first file on, in name order
// (md5sum -c of a list in creation order), gets its keys ahead once it
// has begun a few directories: the first 8 directories it opens at their
// first file and the first 4 it comes back to wait for their own
// Decrypt, and at most a few more cold opens (16 of 192 in all; 29
// before a row of first files counted), and no key is unwrapped twice.
func TestKeyReadaheadDirectoryStarts(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	const dirs, per = 24, 8
	// Creation order: round r writes file r of every directory, the
	// directories in a different order each round.
	var order [][2]string
	for r := range per {
		for j := range dirs {
			d := (j*7 + r*5) % dirs
			order = append(order, [2]string{fmt.Sprintf("d%02d", d), fmt.Sprintf("f%02d", r)})
		}
	}
	k := env.mount(t)
	for d := range dirs {
		if err := os.Mkdir(k.path(fmt.Sprintf("d%02d", d)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range order {
		writeFile(t, k.path(f[0], f[1]), patterned(i, 100))
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}

	k = env.mount(t, "--read-only")
	env.proxy.Reset()
	for i, f := range order {
		if got := readFile(t, k.path(f[0], f[1])); !bytes.Equal(got, patterned(i, 100)) {
			t.Fatalf("%s/%s differs", f[0], f[1])
		}
	}
	files := len(order)
	checkReadahead(t, env.proxy, "a read of every directory from its start, jumping between them", files, 64)
	m := k.scrape(t)
	hits, misses := m[`kmsfs_prefetch_requests_total{result="hit"}`], m[`kmsfs_prefetch_requests_total{result="miss"}`]
	t.Logf("%d files in %d directories: %.0f keys ahead, %.0f unwrapped by their open", files, dirs, hits, misses)
	if misses > 16 {
		t.Errorf("%d files in %d directories: %.0f opens unwrapped their own key, want at most 16", files, dirs, misses)
	}
}

// TestKeyReadaheadStreams: 8 readers of one directory, each reading its
// own run of the sorted listing (xargs -P 8 cat), get their keys ahead:
// each run is a scan of its own.
func TestKeyReadaheadStreams(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	const readers, per = 8, 50
	k := env.mount(t)
	var names []string
	for i := range readers * per {
		name := fmt.Sprintf("f%04d", i)
		names = append(names, name)
		writeFile(t, k.path(name), patterned(i, 100))
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, "--read-only")
	env.proxy.Reset()
	var wg sync.WaitGroup
	for r := range readers {
		wg.Go(func() {
			for i := r * per; i < (r+1)*per; i++ {
				got, err := os.ReadFile(k.path(names[i]))
				if err != nil || !bytes.Equal(got, patterned(i, 100)) {
					t.Errorf("%s: %v, or it differs", names[i], err)
					return
				}
			}
		})
	}
	wg.Wait()
	files := readers * per
	checkReadahead(t, env.proxy, "8 readers, each of its own run of the directory", files, 64)
	m := k.scrape(t)
	hits, misses := m[`kmsfs_prefetch_requests_total{result="hit"}`], m[`kmsfs_prefetch_requests_total{result="miss"}`]
	t.Logf("%d files: %.0f keys ahead, %.0f unwrapped by their open", files, hits, misses)
	// 24-31 of 400 on a quiet machine, 112 once in CI with the other
	// tests running beside it (the readers' opens then arrive further
	// out of order); the code before streams left 399.
	if misses > float64(files/2) {
		t.Errorf("%d files read by 8 readers, each its own run: %.0f opens unwrapped their own key, want at most %d", files, misses, files/2)
	}
}

// TestKeyReadaheadSecondPass: a reader of a tree that another scan read
// moments before gets its keys ahead too: find -exec cat run twice in a
// row, then restic right after (name order). The finished scan neither
// keeps the directories to itself nor takes the next pass's opens as its
// own, and the keys its reader took are asked for again.
func TestKeyReadaheadSecondPass(t *testing.T) {
	t.Parallel()
	secondPass(t, "--read-only")
}

// TestPrefetchKeysSecondPass: the same with --prefetch-keys. A listing's
// prefetch skips the keys taken in the last 2 s (so restic's second
// listing unwraps nothing again), so a pass right after another got no
// key ahead before key readahead ran beside it: 8 readers of 10k files
// at 10 ms took 15 s after a serial pass instead of 2.1 s, every open
// unwrapping its own key.
func TestPrefetchKeysSecondPass(t *testing.T) {
	t.Parallel()
	secondPass(t, "--read-only", "--prefetch-keys")
}

func secondPass(t *testing.T, flags ...string) {
	env := newKMSEnv(t)
	const dirs, per = 3, 50
	k := env.mount(t)
	for d := range dirs {
		if err := os.Mkdir(k.path(fmt.Sprintf("d%d", d)), 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range per {
			writeFile(t, k.path(fmt.Sprintf("d%d", d), fmt.Sprintf("f%03d", (i*37)%per)), patterned(i, 100))
		}
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, flags...)
	readAll := func(sorted bool) {
		t.Helper()
		for d := range dirs {
			dir := k.path(fmt.Sprintf("d%d", d))
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			names, err := f.Readdirnames(-1)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if sorted {
				slices.Sort(names)
			}
			for _, name := range names {
				if _, err := os.ReadFile(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	files := dirs * per
	for i, pass := range []struct {
		what   string
		sorted bool
	}{
		{"a first pass, in listing order (find -exec cat)", false},
		{"the same pass again at once", false},
		{"a pass in name order right after (restic)", true},
	} {
		before := k.scrape(t)
		env.proxy.Reset()
		readAll(pass.sorted)
		after := k.scrape(t)
		checkReadahead(t, env.proxy, pass.what, files, 64)
		misses := after[`kmsfs_prefetch_requests_total{result="miss"}`] - before[`kmsfs_prefetch_requests_total{result="miss"}`]
		t.Logf("%s, %d files: %.0f opens unwrapped their own key", pass.what, files, misses)
		if i > 0 && misses > float64(files/4) {
			t.Errorf("%s, %d files: %.0f opens unwrapped their own key, want at most %d", pass.what, files, misses, files/4)
		}
	}
}

// TestKeyReadaheadFirstFilesOnly: a reader of only the first file of
// each directory (find -name README -exec cat, in name order: README
// sorts first) unwraps no key it does not read, though its opens begin
// one new directory after another as md5sum -c's do.
func TestKeyReadaheadFirstFilesOnly(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	const dirs, per = 40, 8
	k := env.mount(t)
	for d := range dirs {
		dir := fmt.Sprintf("d%02d", d)
		if err := os.Mkdir(k.path(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, k.path(dir, "README"), patterned(d, 100))
		for i := range per - 1 {
			writeFile(t, k.path(dir, fmt.Sprintf("f%02d", i)), patterned(i, 100))
		}
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	k = env.mount(t, "--read-only")
	env.proxy.Reset()
	for _, d := range []int{7, 31, 2, 19, 36, 11, 25, 0, 14, 33, 5, 28, 21, 9, 38, 16, 3, 30, 12, 24} {
		if got := readFile(t, k.path(fmt.Sprintf("d%02d", d), "README")); !bytes.Equal(got, patterned(d, 100)) {
			t.Fatalf("d%02d/README differs", d)
		}
	}
	t.Logf("20 READMEs of %d directories: %d Decrypt", dirs, env.proxy.Count("Decrypt"))
	// The first files of the other 20 directories may be asked for
	// ahead (they are what this reader reads); nothing else.
	if c := env.proxy.Count("Decrypt"); c > dirs {
		t.Errorf("20 READMEs of %d directories: %d Decrypt, want at most %d", dirs, c, dirs)
	}
}
