package fs

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// fileState is the open-file state of one regular-file inode, shared by all
// its handles (and by a truncate through a path while it runs).
type fileState struct {
	// content serialises changes of the stored file: held for writing by
	// write, truncate, fallocate and header creation; for reading by read
	// and lseek. It guards key once load has finished.
	content sync.RWMutex

	// Guarded by node.mu:
	users   int      // handles plus handle-less operations using the state
	handles []*file  // the open handles, which borrowFd lends
	loaded  bool     // key is final (nil: no header yet)
	loading *keyLoad // the unwrap in flight, shared by concurrent openers
	key     *fileKey

	// unsettled is set when a change failed part-way (a full disk, say):
	// a block it rewrote may read only through its journal record, so the
	// next change settles the journal first. Guarded by content.
	unsettled bool
	// restart is set when the file was truncated to 0: its next write
	// starts it over with a new ID and key (ensureHeader). Guarded by
	// content.
	restart bool
}

// cipher returns the file's cipher, nil while it has no header.
func (st *fileState) cipher() *blockcipher.Cipher {
	if st.key == nil {
		return nil
	}
	return st.key.c
}

// fileKey is an open file's data key and the cipher derived from it. It is
// the one holder of both in fs, from unwrap (or generation) to wipe: a
// fileState holds at most one, and wipes it on its last release.
// Every fileKey not yet wiped is counted in live (the Root's).
type fileKey struct {
	dk   *keyring.DataKey
	c    *blockcipher.Cipher
	live *atomic.Int64
	// made: this mount gave the file its header (h) and key: outage.go
	// may keep the key past the last close.
	made bool
	h    *blockcipher.Header
	// own: made here, or this mount has seen the file hold blocks under
	// it: the file's own key, not one a header put into an empty file
	// brought (ensureHeader). Guarded by the content lock.
	own bool
	// badTail, when not 0, is where the final block begins of a file
	// whose key was proven own by a block before it while that final
	// block failed (proveOwn): a tail torn by a crash during an append
	// looks the same as a file cut at a block boundary, so no change
	// may seal a block from there on, which would make the cut read as
	// whole, until a truncate to at most badTail bytes. Guarded by the
	// content lock.
	badTail int64
}

// openFileKey checks h against dk (key commitment, header MAC) and returns
// the key of h's file, counted in live. It owns dk from now on: on
// failure dk is wiped.
func openFileKey(h *blockcipher.Header, dk *keyring.DataKey, live *atomic.Int64) (*fileKey, error) {
	c, err := h.Open(dk.Bytes())
	if err != nil {
		dk.Wipe()
		return nil, err
	}
	live.Add(1)
	return &fileKey{dk: dk, c: c, live: live}, nil
}

// sealFileKey seals h, the header of a new file, with dk and returns the
// slot to write and the file's key, counted in live. It owns dk from now
// on: on failure dk is wiped.
func sealFileKey(h *blockcipher.Header, dk *keyring.DataKey, live *atomic.Int64) ([]byte, *fileKey, error) {
	slot, c, err := h.Seal(dk.Bytes())
	if err != nil {
		dk.Wipe()
		return nil, nil, err
	}
	live.Add(1)
	return slot, &fileKey{dk: dk, c: c, live: live}, nil
}

// testOnlyBeforeWipe, when set by a test, sees a data key's bytes just
// before they are wiped, to check afterwards that they were zeroed.
var testOnlyBeforeWipe func(b []byte)

// wipe zeroes the data key and the keys derived from it that the cipher
// holds (its AES-GCM state, its record MAC key), and drops both. Caller
// holds the file's content lock for writing, or is the key's only user.
// Safe on nil.
func (k *fileKey) wipe() {
	if k == nil || k.dk == nil {
		return
	}
	if testOnlyBeforeWipe != nil {
		testOnlyBeforeWipe(k.dk.Bytes())
	}
	k.dk.Wipe()
	k.c.Wipe()
	k.dk, k.c = nil, nil
	k.live.Add(-1)
}

// keyLoad is one unwrap of a file's data key that concurrent first opens
// wait for instead of calling the keyring again.
type keyLoad struct {
	done chan struct{}
	err  error // set before done is closed
}

// acquire registers a user of n's file state, creating it if needed. With
// wantKey it also makes sure the data key is unwrapped: the first user
// reads the header through fd and calls the keyring; concurrent users wait
// for that one call and share its result or error.
func (n *node) acquire(fd int, wantKey bool) (*fileState, error) {
	return n.acquireAt(fd, wantKey, -1)
}

// acquireNew registers the first user of a file this mount has just
// created: it is empty, so there is no header to read.
func (n *node) acquireNew(fd int) (*fileState, error) {
	n.mu.Lock()
	if n.st == nil {
		st := &fileState{users: 1, loaded: true}
		n.st = st
		n.mu.Unlock()
		return st, nil
	}
	n.mu.Unlock()
	return n.acquire(fd, true) // a state already there: join it
}

// acquireAt is acquire of a descriptor openBacking opened, stored bytes
// long then (-1: unknown, as from any other opener). The first user
// then reads the header and the journal's record heads in one read
// (readHead) and settles the journal only when it holds something.
func (n *node) acquireAt(fd int, wantKey bool, stored int64) (*fileState, error) {
	n.mu.Lock()
	st := n.st
	if st == nil {
		st = &fileState{}
		n.st = st
	}
	st.users++
	for wantKey && !st.loaded {
		if l := st.loading; l != nil {
			n.mu.Unlock()
			<-l.done
			if l.err != nil {
				n.release(st)
				return nil, l.err
			}
			n.mu.Lock()
			continue
		}
		l := &keyLoad{done: make(chan struct{})}
		st.loading = l
		n.mu.Unlock()
		var k *fileKey
		var err error
		pending := true // unknown: settle reads the journal
		if stored >= 0 {
			k, pending, err = n.r.loadKeyHead(fd, stored, n.objectID(), n.readaheadHint)
		} else {
			k, err = n.r.loadKey(fd, n.objectID(), n.readaheadHint)
		}
		if err == nil && k != nil && pending {
			n.settleOnOpen(st, fd, k.c)
		}
		n.mu.Lock()
		st.loading = nil
		if err == nil {
			st.key, st.loaded = k, true
		}
		l.err = err
		close(l.done)
		if err != nil {
			n.mu.Unlock()
			n.release(st)
			return nil, err
		}
	}
	n.mu.Unlock()
	return st, nil
}

// readaheadHint tells key readahead that n's key is about to be
// unwrapped: a cold open, perhaps one of a scan. The function it returns
// tells it the key is loaded.
func (n *node) readaheadHint() (loaded func()) {
	if n.r.ra == nil {
		return func() {}
	}
	if name, parent := n.Parent(); parent != nil {
		if pn, ok := parent.Operations().(*node); ok {
			return n.r.ra.coldOpen(pn, name)
		}
	}
	return func() {}
}

// settleOnOpen finishes a rewrite a crash interrupted before the file's
// first reader or writer sees it. A failure (a full disk, say) does not
// fail the open: reads consult the journal, and the next change settles
// first.
func (n *node) settleOnOpen(st *fileState, fd int, c *blockcipher.Cipher) {
	restore := noatime(fd)
	defer restore()
	st.content.Lock()
	defer st.content.Unlock()
	if err := n.r.settle(fd, c, n.relPath); err != nil {
		n.r.log.Warn("could not finish an interrupted write: reads use its journal record, the next change retries", "path", n.relPath(), "err", err)
		st.unsettled = true
	}
}

// listHandle makes f, a new open handle of n, one borrowFd may lend.
func (n *node) listHandle(f *file) {
	n.mu.Lock()
	f.st.handles = append(f.st.handles, f)
	n.mu.Unlock()
}

// unlistHandle takes f off the list; close then waits for any borrower.
func (n *node) unlistHandle(f *file) {
	n.mu.Lock()
	f.st.handles = slices.DeleteFunc(f.st.handles, func(h *file) bool { return h == f })
	n.mu.Unlock()
}

// borrowFd lends the descriptor of one of n's open handles, for a change
// of mode, owner or times that the kernel sent without a handle (fchmod,
// fchown and futimens of an open file arrive so): it is n's own object,
// checked when it was opened, so no O_PATH open, identity check and close
// are needed. done returns it; until then the handle's close waits. ok is
// false when n has no open handle.
func (n *node) borrowFd() (fd int, done func(), ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st == nil || len(n.st.handles) == 0 {
		return -1, nil, false
	}
	f := n.st.handles[0]
	f.fdMu.RLock()
	return f.fd, f.fdMu.RUnlock, true
}

// objectID names n's stored file among all this mount has seen (its
// inode number and generation: the node's stable attributes), for a key
// kept through an outage, which only that file may take back as its own.
func (n *node) objectID() [2]uint64 {
	sa := n.StableAttr()
	return [2]uint64{sa.Ino, sa.Gen}
}

// release drops one user; the last one wipes the data key.
func (n *node) release(st *fileState) {
	n.mu.Lock()
	st.users--
	last := st.users == 0
	if last && n.st == st {
		n.st = nil
		n.dropUnnamedLocked()
	}
	n.mu.Unlock()
	if last {
		st.content.Lock()
		if k := st.key; k != nil && k.made {
			n.r.outage.keep(k, k.h, n.objectID())
		}
		st.key.wipe()
		st.key = nil
		st.content.Unlock()
	}
}
