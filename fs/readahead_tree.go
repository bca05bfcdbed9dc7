package fs

import (
	"time"
)

// Directory starts: a reader that reads a tree a directory at a time but
// jumps between directories (md5sum -c of a list in creation order, each
// file in a random one of many directories; a build reading its sources
// in its own order) never follows a walk of the tree, and every directory
// it enters would cost its first three opens a round trip each before
// that directory's scan starts.
//
// Such a reader shows itself by starting directories: treeStartStreak
// opens in a row in one directory from its first file, in one of the two
// orders, in a directory no scan in the other order is walking (there
// they are that scan's reader's opens, in order by chance). Once it has
// started treeLearnStarts of them in one order (each within chainIdle of
// the last), and at least four times as many as it started only in the
// other order (a reader in one order starts a few directories in the
// other by chance), the mount takes it that the reader reads each
// directory from its start in that order. So it does, too, once the
// reader has opened the first files of treeLearnRow directories new to
// it in a row (such a reader begins many directories before it comes
// back to one: md5sum -c of 30k files in 1,600 directories came back to
// its fourth only after about 110 opens, each without a key ahead); the
// row counts as that many starts. Then:
//   - a directory it opens at its first file starts a confined scan at
//     once: the next treeWindow files of that directory, topped up as
//     they are used, the window doubling as a scan's does each time the
//     reader has used half of it (a whole directory read in order, such
//     as a serial read of 10k files right after md5sum -c, needs
//     readaheadMax keys in flight), and never beyond the directory (the
//     reader comes back to it later, not to what follows it); walks
//     started earlier stay in their directories too;
//   - a walk of the whole tree, depth first in that order, asks for the
//     first file of each directory not started yet, so that entering one
//     costs no round trip either. Its keys asked for and not used stay
//     below treeAheadPerStart times the directories started: its waste
//     is bounded by the reader's own progress.
//
// A reader that stops leaves at most that many first files, and one
// window per directory it started, unused; Ahead wipes them after its
// TTL.
const (
	treeStartStreak = 2 // opens in order from a directory's first file that start it
	treeLearnStarts = 4 // directory starts before the tree walk
	treeLearnRow    = 8 // first files of new directories opened in a row that count as starts
	// treeAheadPerStart: first files asked ahead per directory started.
	// md5sum -c of 30k files in 1,600 directories in creation order
	// opens a new directory at random once it is learned: 8 per start
	// left about 100 more of those opens without a key ahead than 32.
	treeAheadPerStart = 32
	treeWindow        = 8 // keys asked ahead in a started directory
	// treeDepth bounds the tree walk's depth: deeper directories get
	// no first file ahead.
	treeDepth = 128
	// treeAdoptMax bounds the streams adopted when the order is
	// learned (the asks are made under the readahead lock).
	treeAdoptMax = 256
)

// treeHeld bounds the entries of the listings the tree walk is in
// (treeScan.held); a variable for tests.
var treeHeld = namesKept

// treeScan is the directory-start state of one order.
type treeScan struct {
	starts  int       // directories started since the state began
	real    int       // of those, started by a second open in order from the first file
	row     int       // first files of directories new to the reader opened in a row
	rowOnly int       // of those, in directories whose start differs in the other order
	only    int       // of those, directories whose start differs in the other order
	at      time.Time // the last start
	asked   int       // first files the walk asked for
	used    int       // of those, opened as a directory's start
	stack   []treePos // the walk: the listings it is in, outermost first
	begun   bool      // the walk has its root
	done    bool      // the walk reached the end of the tree
	// held: the entries of the listings on the stack, which stay in
	// memory while the walk is in them even once the readahead has let
	// them go (evicted from ra.dirs): at most treeHeld.
	held int
}

type treePos struct {
	l   *listing
	idx int // the next entry of l to visit
}

// learned reports whether the reader has been starting directories in
// order o.
func (ra *readahead) learned(o int) bool {
	t := &ra.tree[o]
	return t.starts >= treeLearnStarts && time.Since(t.at) < chainIdle && 4*ra.tree[1-o].only <= t.starts
}

// started notes that a scan began at the first file of l in order o.
// When that makes the reader's order confirmed, the directories it has
// opened at their first file but not started yet are adopted: their
// confined scans start now rather than at their next open.
func (ra *readahead) started(l *listing, o int) {
	was := ra.confirmed(o)
	ra.credit(l, o)
	ra.tree[o].real++
	if was || !ra.confirmed(o) {
		return
	}
	ra.adopt(l, o)
}

// credit counts a directory the reader begins in order o at l's first
// file: the tree walk's budget grows with them.
func (ra *readahead) credit(l *listing, o int) {
	t := ra.treeOpen(o)
	t.starts++
	if !l.sameStart {
		t.only++
	}
	if l.firstAsked[o] == ra.passNum {
		l.firstAsked[o] = 0
		t.used = min(t.used+1, t.asked) // asked before a reset counts for nothing
	}
}

// treeOpen returns order o's directory-start state for an open now,
// begun afresh if the reader's last one was chainIdle ago.
func (ra *readahead) treeOpen(o int) *treeScan {
	t := &ra.tree[o]
	if time.Since(t.at) >= chainIdle {
		*t = treeScan{}
	}
	t.at = time.Now()
	return t
}

// confirmed reports whether the reader, learned in order o, has also
// come back to treeLearnStarts directories for their second file: only
// then does a directory it opens at its first file get a window of its
// next files at once. A reader learned from a row of first files alone
// may read nothing else (find -name README -exec cat: README sorts
// first), and gets only the tree walk's first files ahead.
func (ra *readahead) confirmed(o int) bool {
	return ra.learned(o) && ra.tree[o].real >= treeLearnStarts
}

// firstOpen notes a cold open of the first file of l in order o by a
// reader new to l. treeLearnRow of them in a row (md5sum -c of a list in
// creation order begins directory after directory before it comes back
// to any) show the reader's order before it has started a directory:
// they count as starts for the tree walk, not for windows (confirmed).
// (A reader of a whole tree, find -exec cat, opens a directory's second
// file next, which ends the row.)
func (ra *readahead) firstOpen(l *listing, o int) {
	t := ra.treeOpen(o)
	t.row++
	if !l.sameStart {
		t.rowOnly++
	}
	if t.row != treeLearnRow || ra.learned(o) {
		return
	}
	t.starts, t.only = max(t.starts, t.row), max(t.only, t.rowOnly)
}

// adopt starts the confined scans of the directories the reader has
// opened at their first file but not started yet, now that its order o
// is learned: rather than at their next open.
func (ra *readahead) adopt(l *listing, o int) {
	adopted := 0
	for _, d := range ra.dirs {
		if adopted == treeAdoptMax {
			break
		}
		if d == l || d.walked(1-o) {
			continue
		}
		first := d.nextFile(o, -1)
		for j := range d.sc[o] {
			s := &d.sc[o][j]
			if adopted == treeAdoptMax || s.chain != nil || s.streak == 0 || s.from != first || !s.active() {
				continue
			}
			c := ra.newChain(&chain{order: o, window: treeWindow, at: d, idx: s.last + 1, confined: true})
			s.chain, s.streak = c, max(s.streak, readaheadAfter)
			adopted++
			ra.adopted = append(ra.adopted, ra.walk(c, treeWindow)...)
		}
	}
}

// walkStarts asks for the first files of directories not started yet,
// while the reader starts directories in order o. Caller holds ra.mu.
func (ra *readahead) walkStarts(o int) []string {
	t := &ra.tree[o]
	if !ra.learned(o) || t.done {
		return nil
	}
	if !t.begun {
		t.begun = true
		root := ra.listing("")
		if root == nil {
			t.done = true
			return nil
		}
		t.stack = []treePos{{l: root}}
		t.held = len(root.ents[0])
	}
	var want []string
	visited := 0 // entries visited for this open
	for t.asked-t.used+len(want) < treeAheadPerStart*t.starts && len(t.stack) > 0 && visited < walkEntries {
		top := &t.stack[len(t.stack)-1]
		if top.idx == 0 {
			if f := ra.firstFile(top.l, o); f != "" {
				want = append(want, f)
			}
		}
		if top.idx >= len(top.l.ents[o]) {
			t.held -= len(top.l.ents[0])
			t.stack = t.stack[:len(t.stack)-1]
			continue
		}
		e := top.l.ents[o][top.idx]
		top.idx++
		visited++
		if !e.dir || len(t.stack) >= treeDepth {
			continue
		}
		// A listing that would take the stack past treeHeld entries
		// is not entered: a chain of directories of up to listingMax
		// entries each, treeDepth deep, would otherwise hold 8M names
		// beyond the readahead's own bound (found by review).
		if sub := ra.listing(join(top.l.path, e.name)); sub != nil {
			visited += sub.listed
			if t.held+len(sub.ents[0]) <= treeHeld {
				t.held += len(sub.ents[0])
				t.stack = append(t.stack, treePos{l: sub})
			}
		}
	}
	if len(t.stack) == 0 {
		t.done = true
	}
	t.asked += len(want)
	return want
}

// firstFile returns the path of l's first file in order o, marked as
// asked for by the tree walk, or "" if l has none or was started.
func (ra *readahead) firstFile(l *listing, o int) string {
	if l.startedAt(o) || l.firstAsked[o] == ra.passNum {
		return ""
	}
	i := l.nextFile(o, -1)
	if i < 0 || ra.openedInPass(l, o, i) {
		return ""
	}
	l.firstAsked[o] = ra.passNum
	return join(l.path, l.ents[o][i].name)
}

// firstFiles returns the names of the first n files of ents.
func firstFiles(ents []dirent, n int) []string {
	var names []string
	for _, e := range ents {
		if len(names) == n {
			break
		}
		if !e.dir {
			names = append(names, e.name)
		}
	}
	return names
}
