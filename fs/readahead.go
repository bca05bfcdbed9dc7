package fs

import (
	"slices"
	"sync"
)

// Key readahead (on by default in per-file volumes, --key-readahead): a
// reader that opens the files of a directory one after the other (cat of
// a listing, find -exec, a backup tool) waits for one key service round
// trip per file. Readahead notices the scan and unwraps the next files'
// keys ahead, through keyring.Ahead, as the kernel reads ahead the blocks
// of a file: after readaheadAfter cold opens in a row, in the order the
// directory was last listed (or in name order, as tools that sort do),
// the next window files are asked for, and the window doubles, up to
// readaheadMax, each time the reader catches up with it. A listing alone
// (ls, stat, find without reads) asks for nothing, and a file open right
// now is not asked for. What a scan leaves unread at most one window of
// unused keys, which Ahead wipes after its TTL.
const (
	readaheadAfter = 3  // cold opens in order before the first window
	readaheadFirst = 4  // the first window
	readaheadMax   = 64 // the largest window: prefetchWorkers calls in flight
	listingMax     = 1 << 16
	listingsKept   = 16 // directories whose last listing is kept
)

// readahead keeps the last listings of recently listed directories and
// the scan state of each. Safe for concurrent use.
type readahead struct {
	r  *Root
	mu sync.Mutex
	// dirs are the listings, the most recently listed last. Guarded by mu.
	dirs []*listing
}

// listing is the regular files of a directory in two orders: as it was
// last listed, and by name.
type listing struct {
	dir   *node
	order [2][]string       // 0: as listed, 1: by name
	pos   [2]map[string]int // name -> index in order[i]

	// The scan in each order, guarded by readahead.mu.
	last, streak, frontier, window [2]int
}

// listed records the regular files of dir, in the order a listing gave
// them.
func (ra *readahead) listed(dir *node, names []string) {
	if len(names) == 0 {
		return
	}
	l := &listing{dir: dir}
	l.order[0] = names[:min(len(names), listingMax)]
	l.order[1] = slices.Sorted(slices.Values(l.order[0]))
	for o := range 2 {
		l.pos[o] = make(map[string]int, len(l.order[o]))
		for i, n := range l.order[o] {
			l.pos[o][n] = i
		}
		l.last[o] = -2
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	ra.dirs = slices.DeleteFunc(ra.dirs, func(x *listing) bool { return x.dir == dir })
	if len(ra.dirs) >= listingsKept {
		ra.dirs = ra.dirs[1:]
	}
	ra.dirs = append(ra.dirs, l)
}

// coldOpen notes that name in dir is about to have its key unwrapped, and
// asks for the keys of the files a scan will open next.
func (ra *readahead) coldOpen(dir *node, name string) {
	var want []string
	ra.mu.Lock()
	for _, l := range ra.dirs {
		if l.dir == dir {
			want = l.advance(name)
			break
		}
	}
	ra.mu.Unlock()
	for _, n := range want {
		if !dir.childOpen(n) {
			ra.r.prefetch(join(dir.relPath(), n))
		}
	}
}

// advance updates the scan state for an open of name and returns the
// names to prefetch. Caller holds readahead.mu.
func (l *listing) advance(name string) []string {
	var want []string
	for o := range 2 {
		i, ok := l.pos[o][name]
		if !ok {
			return nil
		}
		if i == l.last[o]+1 {
			l.streak[o]++
		} else {
			l.streak[o], l.frontier[o], l.window[o] = 1, i+1, readaheadFirst
		}
		l.last[o] = i
		if l.streak[o] < readaheadAfter || want != nil {
			continue
		}
		if l.window[o] == 0 {
			l.window[o] = readaheadFirst
		}
		if l.frontier[o]-i <= l.window[o]/2 {
			if l.frontier[o] > i+1 {
				l.window[o] = min(2*l.window[o], readaheadMax)
			}
			end := min(i+1+l.window[o], len(l.order[o]))
			from := max(l.frontier[o], i+1)
			if from < end {
				want = append(want, l.order[o][from:end]...)
			}
			l.frontier[o] = max(l.frontier[o], end)
		}
	}
	return want
}

// childOpen reports whether n's child name is a file open right now (its
// key is held: nothing to prefetch).
func (n *node) childOpen(name string) bool {
	child := n.GetChild(name)
	if child == nil {
		return false
	}
	c, ok := child.Operations().(*node)
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st != nil && (c.st.loaded || c.st.loading != nil)
}
