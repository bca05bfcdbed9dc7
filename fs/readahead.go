package fs

import (
	"os"
	"path"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Key readahead (on by default in per-file volumes, --key-readahead): a
// reader that opens files one after the other (cat of a listing, find
// -exec, md5sum -c of a list made by find, a backup tool) waits for one
// key service round trip per file. Readahead notices the scan and
// unwraps the next files' keys ahead, through keyring.Ahead, as the
// kernel reads ahead the blocks of a file.
//
// Order. A scan follows a directory tree depth first, each directory's
// entries (files and subdirectories) taken either in the order the
// directory lists them (find, which descends into a subdirectory where
// the listing names it) or by name (tools that sort: restic, rsync, tar
// of a sorted list). The mount reads the backing directories itself for
// this (no key service call; names are stored in plaintext), so a scan is
// seen whether or not the reader listed the directory through the mount.
//
// Seeing a scan. Each directory keeps, per order, up to readaheadStreams
// streams: where a reader's files were last opened (several readers may
// read one directory at different places, as xargs -P 8 cat of a listing
// does). After readaheadAfter cold opens in a row in one stream, each
// the file that follows the previous one, its scan starts: a chain
// that walks the tree from there, depth first in that order, into
// subdirectories and on to what follows the directory in its parent, and
// asks for the next window files' keys, and for more as the reader uses
// them. The window doubles, up to readaheadMax, each time the reader has
// used half of it, as the kernel's readahead window grows while a reader
// keeps reading: a reader that keeps up with 10 ms round trips needs
// 64 keys in flight, and one that stays within a smaller window wastes
// at most that window.
// Directories the walk entered accept their files' opens as part of the
// scan at once. Opens of several readers at once (8 readers of a listing,
// restic's two) arrive a little out of order: while another cold open in
// the directory is still waiting for its key, an open within
// readaheadJitter files of the last counts as in order too. A serial
// reader in random order never has two cold opens in flight, so it gets
// no readahead: one Decrypt per file.
//
// Directory starts. A tree read in an order that is neither (md5sum -c
// of a list in creation order) jumps between directories but reads each
// from its first file on, in one of the two orders: see readahead_tree.go.
//
// Passes. A cold open of a file opened cold before in this pass over the
// tree begins a new pass (a reader starts over: find -exec cat run twice,
// restic right after find): every scan of the last one ends, and the
// files need their keys again. Within a pass no scan asks for a file
// opened in it, whichever reader opened it: a reader taken for a second
// scan (by chance in the other order) unwraps nothing twice.
//
// Bounds. A listing alone (ls, stat, find without reads) asks for
// nothing. What a scan leaves unread is at most one window of keys, which
// Ahead wipes after its TTL.
const (
	readaheadAfter   = 3    // cold opens in order before the first window
	readaheadFirst   = 4    // the first window
	readaheadMax     = 64   // the largest window: prefetchWorkers calls in flight
	readaheadJitter  = 8    // how far out of order concurrent opens may come
	readaheadBatch   = 4    // keys used before the window is topped up
	readaheadStreams = 8    // streams followed in one directory and order
	walkEntries      = 4096 // entries a walk visits for one open
	listingMax       = 1 << 16
	listingsKept     = 4096             // directories whose listing and scan state are kept
	namesKept        = 1 << 20          // entries of those listings
	listingTTL       = 30 * time.Second // a listing older than this is read again
	chainIdle        = 5 * time.Second  // a scan whose files nobody opened for this long has ended
)

// readahead keeps the listings and scan states of recently used
// directories. Safe for concurrent use.
type readahead struct {
	r  *Root
	mu sync.Mutex
	// dirs are the listings by path (relative to CIPHERDIR). Guarded by
	// mu, as is every field of what they point to.
	dirs  map[string]*listing
	names int // entries in dirs
	clock uint64
	tree  [2]treeScan // per order
	// Passes over the tree: a cold open of a file that was opened in
	// this pass already begins the next one. pass is its number and
	// when it began; the scans begun in it end with it.
	passNum uint32
	pass    time.Time
	// adopted: files asked for by directories adopted as started when
	// the tree scan was learned, for coldOpen to prefetch.
	adopted []string
}

// listing is a directory's regular files and subdirectories in two
// orders: as the backing directory lists them, and by name.
type listing struct {
	path     string
	at       time.Time
	used     uint64 // readahead.clock at the last use, for eviction
	ents     [2][]dirent
	pos      [2]map[string]int // name -> index in ents[o]
	sc       [2][]scanState    // per order, up to readaheadStreams
	inflight *int              // cold opens here whose key is still loading (shared with the listing read again)
	listed   int               // entries the backing directory listed (ents holds its files and directories)
	// firstAsked: the pass in which the tree walk asked for the first
	// file's key in that order (readahead_tree.go), 0: none.
	firstAsked [2]uint32
	// sameStart: the first two files are the same in both orders, so a
	// start of the directory says nothing about which order a reader
	// follows.
	sameStart bool
	// opened: per entry of ents[0], the pass in which it was last
	// opened cold (0: never); nil until one is.
	opened []uint32
}

type dirent struct {
	name string
	dir  bool
}

// scanState is one reader's part in a scan of a directory in one order
// (a stream): a directory keeps up to readaheadStreams of them, as
// several readers (xargs -P 8 cat of a listing, each cat reading its own
// run of it) read one directory at different places.
type scanState struct {
	seen   uint64    // readahead.clock at its last open, for replacement
	at     time.Time // its last open
	last   int       // index of the furthest file opened in order, -1: none
	from   int       // index of the first open of the streak
	streak int       // cold opens in order so far
	chain  *chain    // the scan this directory is part of, nil: none yet
}

// chain is one scan: the walk's position and how much it asked for that
// the reader has not opened yet.
type chain struct {
	order  int
	window int
	ahead  int      // keys asked for, not yet used
	grown  int      // keys used since the window last doubled
	at     *listing // where the walk stopped: the next entry is at[idx]
	idx    int
	done   bool      // the walk reached the end of the tree
	used   time.Time // the last open of one of its files
	born   time.Time // when the scan began
	// confined: a directory start (readahead_tree.go): the walk stays in
	// its directory and the window does not grow.
	confined bool
	// pass: the pass it belongs to; cur points at the current one (nil:
	// always current).
	pass uint32
	cur  *uint32
}

// coldOpen notes that name in dir is about to have its key unwrapped, and
// asks for the keys of the files a scan will open next. The returned
// function is called once the key is loaded.
func (ra *readahead) coldOpen(dir *node, name string) (done func()) {
	p := dir.relPath()
	ra.mu.Lock()
	defer ra.mu.Unlock()
	l := ra.listing(p)
	if l == nil {
		return func() {}
	}
	ra.notePass(l, name)
	concurrent := *l.inflight > 0
	*l.inflight++
	inflight := l.inflight
	var want []string
	for o := range 2 {
		// Both orders follow the open; the first that asks for more
		// walks (a directory whose listing is in name order scans the
		// same in both).
		if c := ra.advance(l, o, name, concurrent); c != nil && want == nil {
			want = ra.extend(c)
		}
	}
	// The tree walk's first files go first: a reader that starts
	// directories reaches one of them sooner than the next file of the
	// directory it opened now (each open of a directory start asks for
	// a window of that directory: the walk must not wait for an open
	// that asks for nothing).
	var starts []string
	for o := range 2 {
		if starts == nil {
			starts = ra.walkStarts(o)
		}
	}
	want = append(append(starts, want...), ra.adopted...)
	ra.adopted = nil
	for _, f := range want {
		ra.r.readaheadPrefetch(f, ra.pass)
	}
	return func() {
		ra.mu.Lock()
		*inflight--
		ra.mu.Unlock()
	}
}

// advance updates l's scan state in order o for an open of name and
// returns the scan, if this directory is part of one.
func (ra *readahead) advance(l *listing, o int, name string, concurrent bool) *chain {
	i, ok := l.pos[o][name]
	if !ok || l.ents[o][i].dir {
		return nil
	}
	s, fresh := ra.stream(l, o, i, concurrent)
	switch {
	case fresh:
		*s = scanState{seen: ra.clock, last: i, from: i, streak: 1}
	case s.chain.running(o):
		// Part of a running scan (perhaps entered by its walk). Only
		// opens that move it on keep it running: a later pass over
		// files it has passed (restic after find) must not keep a
		// finished scan alive, and with it the rule that a directory a
		// scan in one order walks starts none in the other.
		if i > s.last {
			s.last = i
			s.chain.used = time.Now()
		}
		s.streak = max(s.streak+1, readaheadAfter)
		if s.chain.ahead > 0 {
			s.chain.ahead--
			s.chain.grown++
		}
	default:
		if s.streak == 0 {
			s.from = i
		}
		if s.streak == 0 || i > s.last {
			s.streak++
		}
		// An open behind the stream's furthest, taken as in order
		// only for the jitter of concurrent opens, does not count:
		// readers going the other way (8 readers in name order are,
		// in a tmpfs listing, going backwards) made a scan in this
		// order every few opens, which walked on past the directory
		// and, walking it, kept the readers' own order from starting
		// one: they got no key ahead (found by this stop's benchmark
		// run: 15 s instead of 3 for 10k files at 10 ms).
		s.last = max(s.last, i)
	}
	s.seen, s.at = ra.clock, time.Now()
	// A directory that a scan in the other order walks is that scan's:
	// its opens in this order are in order by chance, neither a start
	// nor a scan.
	otherWalks := l.walked(1 - o)
	fromStart := s.from == l.nextFile(o, -1) && !otherWalks
	if fresh && fromStart && !ra.learned(o) {
		ra.firstOpen(l, o)
	} else {
		ra.tree[o].row, ra.tree[o].rowOnly = 0, 0
	}
	confined := fromStart && ra.learned(o) && (s.streak >= treeStartStreak || ra.confirmed(o))
	switch {
	case fromStart && (s.streak == treeStartStreak || confined && s.streak == 1):
		ra.started(l, o)
	case fresh && fromStart && ra.learned(o):
		// Learned from a row of first files, not confirmed: the
		// tree walk's budget grows, no window.
		ra.credit(l, o)
	}
	if s.streak < readaheadAfter && !confined {
		return nil
	}
	c := s.chain
	if !c.running(o) {
		if otherWalks {
			return nil
		}
		c = ra.newChain(&chain{order: o, window: readaheadFirst, at: l, idx: s.last + 1, confined: confined})
		if confined {
			c.window = treeWindow
		}
		s.streak = max(s.streak, readaheadAfter)
		s.chain = c
	}
	if c.at == l && c.idx <= s.last {
		// Readers went past the walk (opens out of order): go on from
		// the furthest.
		c.idx, c.ahead = s.last+1, 0
	}
	return c
}

// running reports whether c is a scan in order o whose reader opened one
// of its files within chainIdle. c may be nil.
func (c *chain) running(o int) bool {
	return c != nil && c.order == o && (c.cur == nil || *c.cur == c.pass) && time.Since(c.used) < chainIdle
}

// notePass notes a cold open of name in l. A file opened cold in this
// pass already is read again: a reader starts over (find -exec cat run
// twice, restic after find), and a new pass begins. Its files need their
// keys again, and the scans of the last pass, which walked on past them,
// end: the readers' next opens start scans of their own. Within a pass,
// scans ask for no file opened in it (walk), whichever reader opened it
// and in whichever order: a reader seen as a second scan (by chance in
// the other order, or again after its stream was lost) must not make the
// mount unwrap again what the pass read.
func (ra *readahead) notePass(l *listing, name string) {
	i, ok := l.pos[0][name]
	if !ok {
		return
	}
	if l.opened == nil {
		l.opened = make([]uint32, len(l.ents[0]))
	}
	if ra.passNum == 0 || l.opened[i] == ra.passNum {
		ra.passNum++
		ra.pass = time.Now()
		ra.tree = [2]treeScan{}
	}
	l.opened[i] = ra.passNum
}

// openedInPass reports whether entry i of l in order o was opened cold in
// this pass.
func (ra *readahead) openedInPass(l *listing, o, i int) bool {
	if l.opened == nil {
		return false
	}
	if o != 0 {
		i = l.pos[0][l.ents[o][i].name]
	}
	return l.opened[i] == ra.passNum
}

// newChain starts scan c, as part of this pass.
func (ra *readahead) newChain(c *chain) *chain {
	c.used, c.born = time.Now(), time.Now()
	c.pass, c.cur = ra.passNum, &ra.passNum
	return c
}

// stream returns the stream of l in order o that an open of file i
// continues, or a fresh one (fresh: the caller sets it up) in place of
// the least recently used. An open continues a stream when it is the
// stream's next file; or comes a little out of order (within
// readaheadJitter) while another open in the directory is in flight,
// or, in a running scan, a little ahead (files with no key, empty ones,
// have no cold open); or, in a running scan, is a file behind it opened
// again.
func (ra *readahead) stream(l *listing, o, i int, concurrent bool) (s *scanState, fresh bool) {
	ss := l.sc[o]
	alive := func(s *scanState) bool { return s.chain.running(o) }
	better := func(a, b *scanState) bool {
		if alive(a) != alive(b) {
			return alive(a)
		}
		return a.streak > b.streak
	}
	for _, match := range []func(*scanState) bool{
		func(s *scanState) bool { return i == l.nextFile(o, s.last) },
		func(s *scanState) bool {
			return (concurrent && s.streak > 0 || alive(s)) && i > s.last-readaheadJitter && i <= s.last+readaheadJitter
		},
		func(s *scanState) bool { return alive(s) && i > s.last-readaheadMax && i <= s.last },
	} {
		// Of the streams the open continues, the one furthest into its
		// scan: a stream left by an earlier reader may sit at the same
		// place by chance.
		best := -1
		for j := range ss {
			if match(&ss[j]) && (best < 0 || better(&ss[j], &ss[best])) {
				best = j
			}
		}
		if best >= 0 {
			return &ss[best], false
		}
	}
	if i == l.nextFile(o, -1) {
		// A reader begins the directory: streams that no running scan
		// follows are what earlier readers left (a pass over the tree
		// just before this one); they would take this reader's opens.
		l.sc[o] = slices.DeleteFunc(ss, func(s scanState) bool { return !alive(&s) || s.chain.done })
	}
	return l.freshStream(o), true
}

// freshStream returns a new stream of l in order o, in place of the
// least recently used if l has readaheadStreams.
func (l *listing) freshStream(o int) *scanState {
	ss := l.sc[o]
	if len(ss) < readaheadStreams {
		l.sc[o] = append(ss, scanState{})
		return &l.sc[o][len(ss)]
	}
	old := 0
	for j := range ss {
		if ss[j].seen < ss[old].seen {
			old = j
		}
	}
	return &ss[old]
}

// enter puts l into c's walk in order o, as a stream whose reader is
// last opened file last, unless the walk is in it already.
func (ra *readahead) enter(l *listing, o int, c *chain, last int) {
	for j := range l.sc[o] {
		if l.sc[o][j].chain == c {
			return
		}
	}
	*l.freshStream(o) = scanState{seen: ra.clock, at: time.Now(), last: last, from: last + 1, chain: c}
}

// walked reports whether a scan in order o walks l now: its reader
// moved it on within readaheadRecent (a scan whose reader stopped a
// moment ago, an earlier pass over the tree, does not keep the
// directory from a reader in the other order).
func (l *listing) walked(o int) bool {
	for _, s := range l.sc[o] {
		if s.chain != nil && s.chain.order == o && !s.chain.done && time.Since(s.chain.used) < readaheadRecent {
			return true
		}
	}
	return false
}

// passed reports whether another reader's stream in l, in order o, has
// opened its files from its start up to file i or past it while c's
// scan runs: its key was taken, and asking again would unwrap it a
// second time (the readers of xargs -P 8 cat each read a run of a
// listing, and the walk of one run goes on into the next). A reader
// that stopped before c began (an earlier pass over the same files)
// does not count: this pass needs those keys again.
func (l *listing) passed(o, i int, c *chain) bool {
	for _, s := range l.sc[o] {
		if s.chain != c && s.at.After(c.born) && s.streak > 0 && s.from <= i && i <= s.last {
			return true
		}
	}
	return false
}

// active reports whether s's reader opened a file within chainIdle: a
// stream of an earlier pass over the tree says nothing about this one.
func (s *scanState) active() bool {
	return time.Since(s.at) < chainIdle
}

// startedAt reports whether a reader began l in order o (a stream from
// its first file) or a scan walks it.
func (l *listing) startedAt(o int) bool {
	first := l.nextFile(o, -1)
	for _, s := range l.sc[o] {
		if s.active() && (s.streak > 0 && s.from == first || s.chain != nil) {
			return true
		}
	}
	return false
}

// extend keeps c's window of keys asked for ahead of the reader, walking
// on once readaheadBatch of them were used, and doubles the window each
// time the reader has used half of it. A directory start's window grows
// too (it never walks past its directory): a reader taken for one that
// starts directories may read a whole large directory in order, and a
// window held at treeWindow kept 8 keys in flight (found by the
// benchmark: 10k files at 10 ms took 15.7 s in place of 2.5).
func (ra *readahead) extend(c *chain) []string {
	if c.done {
		return nil
	}
	if c.grown >= c.window/2 {
		c.window, c.grown = min(2*c.window, readaheadMax), 0
	}
	if n := c.window - c.ahead; n >= min(readaheadBatch, c.window) {
		return ra.walk(c, n)
	}
	return nil
}

// walk asks for up to n more files from where c stopped, depth first.
// It visits at most walkEntries entries a call (it holds the readahead
// lock, and directories with no files, or files another reader has
// passed, add nothing): the next open goes on from there.
func (ra *readahead) walk(c *chain, n int) []string {
	var want []string
	o := c.order
	// While a reader starts directories (in either order), a walk waits
	// at the edge of its directory: that reader comes back to its
	// directories, not to what follows them. A walk confined for good
	// (a directory start) ends there.
	paused := !c.confined && (ra.learned(0) || ra.learned(1))
	for visited := 0; len(want) < n && !c.done && visited < walkEntries; visited++ {
		l := c.at
		if c.idx < len(l.ents[o]) {
			e := l.ents[o][c.idx]
			if e.dir && paused {
				break
			}
			c.idx++
			p := join(l.path, e.name)
			if !e.dir {
				if !l.passed(o, c.idx-1, c) && !ra.openedInPass(l, o, c.idx-1) {
					want = append(want, p)
				}
				continue
			}
			if c.confined {
				continue
			}
			sub := ra.listing(p)
			if sub == nil {
				continue
			}
			visited += sub.listed
			ra.enter(sub, o, c, -1)
			c.at, c.idx = sub, 0
			continue
		}
		// The end of l: go on after it in its parent.
		if paused {
			break
		}
		if l.path == "" || c.confined {
			c.done = true
			break
		}
		parent := ra.listing(path.Dir(l.path))
		if parent == nil {
			c.done = true
			break
		}
		j, ok := parent.pos[o][path.Base(l.path)]
		if !ok {
			c.done = true
			break
		}
		ra.enter(parent, o, c, j)
		c.at, c.idx = parent, j+1
	}
	c.ahead += len(want)
	return want
}

// nextFile is the index of the first file after index i in order o, or -1.
func (l *listing) nextFile(o, i int) int {
	for j := i + 1; j < len(l.ents[o]); j++ {
		if !l.ents[o][j].dir {
			return j
		}
	}
	return -1
}

// listing returns the listing of the backing directory at p (relative to
// CIPHERDIR; "" is the root), reading it if it is not kept or is older
// than listingTTL; nil if it cannot be read. Caller holds ra.mu.
func (ra *readahead) listing(p string) *listing {
	if p == "." {
		p = ""
	}
	ra.clock++
	if l := ra.dirs[p]; l != nil && time.Since(l.at) < listingTTL {
		l.used = ra.clock
		return l
	}
	ents, listed, err := ra.r.readBackingDir(p)
	if err != nil {
		return nil
	}
	l := &listing{path: p, at: time.Now(), used: ra.clock, inflight: new(int), listed: listed}
	l.ents[0] = ents
	l.ents[1] = slices.SortedFunc(slices.Values(ents), func(a, b dirent) int {
		if a.name < b.name {
			return -1
		}
		if a.name > b.name {
			return 1
		}
		return 0
	})
	l.sameStart = slices.Equal(firstFiles(l.ents[0], 2), firstFiles(l.ents[1], 2))
	for o := range 2 {
		l.pos[o] = make(map[string]int, len(l.ents[o]))
		for i, e := range l.ents[o] {
			l.pos[o][e.name] = i
		}
	}
	if old := ra.dirs[p]; old != nil {
		// Read again after listingTTL: a scan going on here goes on if
		// the directory still has as many entries.
		l.inflight = old.inflight
		if len(old.ents[0]) == len(l.ents[0]) {
			l.sc = [2][]scanState{slices.Clone(old.sc[0]), slices.Clone(old.sc[1])}
			l.firstAsked = old.firstAsked
			l.opened = old.opened
		}
		ra.names -= len(old.ents[0])
		delete(ra.dirs, p)
	}
	if ra.dirs == nil {
		ra.dirs = map[string]*listing{}
	}
	for len(ra.dirs) >= listingsKept || ra.names+len(ents) > namesKept && len(ra.dirs) > 0 {
		ra.evict()
	}
	ra.dirs[p] = l
	ra.names += len(ents)
	return l
}

// evict drops the least recently used quarter of the listings (at least
// one).
func (ra *readahead) evict() {
	used := make([]uint64, 0, len(ra.dirs))
	for _, l := range ra.dirs {
		used = append(used, l.used)
	}
	slices.Sort(used)
	cut := used[len(used)/4]
	for p, l := range ra.dirs {
		if l.used <= cut {
			ra.names -= len(l.ents[0])
			delete(ra.dirs, p)
		}
	}
}

// readBackingDir lists the regular files and directories of the backing
// directory at p, in the order it lists them, without kmsfs's own names,
// and how many entries it read to find them (symlinks, FIFOs and the
// rest cost a walk as much as files). At most listingMax entries.
func (r *Root) readBackingDir(p string) ([]dirent, int, error) {
	if p == "" {
		p = "."
	}
	fd, err := openBeneath(r.rootFd, p, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, 0, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	des, err := f.ReadDir(listingMax)
	if err != nil && len(des) == 0 {
		return nil, 0, err
	}
	ents := make([]dirent, 0, len(des))
	for _, de := range des {
		if hidden(p == ".", de.Name()) {
			continue
		}
		switch t := de.Type(); {
		case t.IsRegular():
			ents = append(ents, dirent{name: de.Name()})
		case t.IsDir():
			ents = append(ents, dirent{name: de.Name(), dir: true})
		}
	}
	return ents, len(des), nil
}

// childNode returns n's child name if the kernel knows it, or nil.
func (n *node) childNode(name string) *node {
	child := n.GetChild(name)
	if child == nil {
		return nil
	}
	c, _ := child.Operations().(*node)
	return c
}

// childOpen reports whether n's child name is a file open right now (its
// key is held: nothing to prefetch).
func (n *node) childOpen(name string) bool {
	c := n.childNode(name)
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st != nil && (c.st.loaded || c.st.loading != nil)
}
