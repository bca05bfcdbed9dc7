package fs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A scan's walk through a CIPHERDIR of many directories with no files
// (whoever can write CIPHERDIR can make one) visits a bounded number of
// entries per open, under the readahead lock, and goes on at the next.
func TestReadaheadWalkBounded(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) { mustOK(t, err) }
	must(os.Mkdir(filepath.Join(dir, "a"), 0o755))
	for i := range 4 {
		must(os.WriteFile(filepath.Join(dir, "a", fmt.Sprintf("f%d", i)), nil, 0o644))
	}
	const empty = 3 * walkEntries
	for i := range empty {
		must(os.Mkdir(filepath.Join(dir, fmt.Sprintf("e%05d", i)), 0o755))
	}
	must(os.Mkdir(filepath.Join(dir, "z"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "z", "last"), nil, 0o644))
	ra := testReadahead(t, dir)

	ra.mu.Lock()
	defer ra.mu.Unlock()
	a := ra.listing("a")
	c := &chain{order: 1, window: readaheadMax, at: a, idx: 0, used: time.Now()}
	calls := 0
	var got []string
	for !c.done && calls < 100 {
		before := len(ra.dirs)
		got = append(got, ra.walk(c, readaheadMax)...)
		calls++
		if read := len(ra.dirs) - before; read > walkEntries {
			t.Fatalf("one walk read %d listings, want at most %d", read, walkEntries)
		}
	}
	if calls < 2 {
		t.Errorf("the walk through %d empty directories took %d call, want it spread over several", empty, calls)
	}
	want := []string{"a/f0", "a/f1", "a/f2", "a/f3", "z/last"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the walk asked for %v, want %v", got, want)
	}
}

// The tree walk's stack keeps the listings it is in alive, also those the
// readahead has let go: it enters no directory that would take them past
// treeHeld entries (found by review: a chain of 128 directories of 65k
// entries each held 8M names, past the readahead's own bound of 1M). It
// still reaches the end of the tree, and asks for the first file of every
// directory it entered.
func TestReadaheadTreeWalkHoldsBounded(t *testing.T) {
	dir := t.TempDir()
	const depth, files = 10, 20
	p := dir
	for d := range depth {
		p = filepath.Join(p, fmt.Sprintf("d%d", d))
		mustOK(t, os.Mkdir(p, 0o755))
		for i := range files {
			mustOK(t, os.WriteFile(filepath.Join(p, fmt.Sprintf("f%02d", i)), nil, 0o644))
		}
	}
	old := treeHeld
	treeHeld = 4 * (files + 1)
	t.Cleanup(func() { treeHeld = old })
	ra := testReadahead(t, dir)
	ra.mu.Lock()
	defer ra.mu.Unlock()
	const o = 0
	ra.passNum = 1 // as after the first cold open
	ra.tree[o] = treeScan{starts: 1000, at: time.Now()}
	var asked []string
	for range 100 {
		if ra.tree[o].done {
			break
		}
		asked = append(asked, ra.walkStarts(o)...)
		held := 0
		for _, pos := range ra.tree[o].stack {
			held += len(pos.l.ents[0])
		}
		if held != ra.tree[o].held || held > treeHeld {
			t.Fatalf("the walk's stack holds %d entries (counted %d), want at most %d", held, ra.tree[o].held, treeHeld)
		}
	}
	if !ra.tree[o].done {
		t.Fatal("the walk did not reach the end of the tree")
	}
	// The root (one entry) and the directories d0 to d2 (21 each) fit.
	if len(asked) != 3 {
		t.Errorf("the walk asked for %v, want the first files of d0, d1 and d2", asked)
	}
}

// Entries that are neither files nor directories (symlinks here) cost a
// walk what files do: directories full of them end a walk's call as soon
// as it has read walkEntries entries, not walkEntries listings.
func TestReadaheadWalkCountsEveryEntry(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) { mustOK(t, err) }
	must(os.Mkdir(filepath.Join(dir, "a"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a", "f"), nil, 0o644))
	const dirs, links = 4, walkEntries / 2
	for i := range dirs {
		d := filepath.Join(dir, fmt.Sprintf("s%02d", i))
		must(os.Mkdir(d, 0o755))
		for j := range links {
			must(os.Symlink("x", filepath.Join(d, fmt.Sprintf("l%04d", j))))
		}
	}
	ra := testReadahead(t, dir)
	ra.mu.Lock()
	defer ra.mu.Unlock()
	c := &chain{order: 1, window: readaheadMax, at: ra.listing("a"), idx: 0, used: time.Now()}
	before := len(ra.dirs)
	ra.walk(c, readaheadMax)
	// At most walkEntries entries, and the listing that passed it.
	if read := len(ra.dirs) - before; read > walkEntries/links+1 {
		t.Errorf("one walk read %d directories of %d symlinks each, want at most %d", read, links, walkEntries/links+1)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dirOfFiles returns a backing directory holding a directory "a" of n
// empty files, f0000 and on.
func dirOfFiles(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	mustOK(t, os.Mkdir(filepath.Join(dir, "a"), 0o755))
	for i := range n {
		mustOK(t, os.WriteFile(filepath.Join(dir, "a", fmt.Sprintf("f%04d", i)), nil, 0o644))
	}
	return dir
}

// testReadahead returns a readahead over the backing directory dir.
func testReadahead(t *testing.T, dir string) *readahead {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	mustOK(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return &readahead{r: &Root{rootFd: fd}}
}

// Concurrent readers in name order, in a directory the backing
// filesystem lists in the reverse order (tmpfs lists newest first), go
// backwards in the listing's order: opens a little behind the furthest
// count as in order there only for the jitter of concurrent opens, and
// must not make a scan in that order, which would walk on past the
// directory and, walking it, keep a scan in the readers' order from
// starting (found by the benchmark: 8 readers of 10k files at 10 ms got
// no key ahead in some rounds, 15 s instead of 3).
func TestReadaheadConcurrentReadersAgainstListingOrder(t *testing.T) {
	const files = 200
	ra := testReadahead(t, dirOfFiles(t, files))
	ra.mu.Lock()
	defer ra.mu.Unlock()
	l := ra.listing("a")
	// The listing order, newest first.
	l.ents[0] = slices.Clone(l.ents[1])
	slices.Reverse(l.ents[0])
	for i, e := range l.ents[0] {
		l.pos[0][e.name] = i
	}
	for i := range files {
		name := fmt.Sprintf("f%04d", i)
		ra.notePass(l, name)
		for o := range 2 {
			ra.advance(l, o, name, true)
		}
	}
	for _, s := range l.sc[0] {
		if s.chain != nil {
			t.Errorf("a scan in the listing's order, which the readers go against (from %d, streak %d)", s.from, s.streak)
		}
	}
	running := false
	for _, s := range l.sc[1] {
		running = running || s.chain.running(1)
	}
	if !running {
		t.Error("no scan in name order, the readers' own")
	}
}

// A serial reader that reads a whole directory from its first file, while
// the mount takes the reader to be one that starts directories (learned
// from a tree read just before: md5sum -c, then a create, then a read of
// the new directory within chainIdle), gets a window that grows as it
// reads, as any scan's does. A directory start's window stayed at
// treeWindow: 8 keys in flight, so 10k files at 10 ms took 15.7 s in place
// of 2.5 (found by the benchmark, in the rounds whose create was fast
// enough to begin the read within chainIdle of the tree's last start).
func TestReadaheadDirectoryStartWindowGrows(t *testing.T) {
	const files = 400
	ra := testReadahead(t, dirOfFiles(t, files))
	ra.mu.Lock()
	defer ra.mu.Unlock()
	const o = 1 // name order
	ra.passNum = 1
	ra.tree[o] = treeScan{starts: 100, real: 100, at: time.Now()}
	if !ra.confirmed(o) {
		t.Fatal("the test's reader is not taken for one that starts directories")
	}
	l := ra.listing("a")
	var c *chain
	asked := 0
	for i := range files {
		name := fmt.Sprintf("f%04d", i)
		ra.notePass(l, name)
		if got := ra.advance(l, o, name, false); got != nil {
			c = got
			asked += len(ra.extend(c))
		}
	}
	if c == nil || !c.confined {
		t.Fatalf("the reader's opens made no directory start (chain %+v)", c)
	}
	if c.window != readaheadMax {
		t.Errorf("after %d files read in order, the window is %d keys, want %d", files, c.window, readaheadMax)
	}
	if asked != files-1 {
		t.Errorf("the scan asked for %d keys, want %d: every file after the first, none beyond the directory", asked, files-1)
	}
}
