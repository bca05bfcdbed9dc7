package keyring

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// slotSize is the size of one key slot in the locked arena.
const slotSize = DataKeySize

// lockedArena hands out DataKeySize slots from anonymous pages that are
// mlocked (never swapped) and excluded from core dumps (MADV_DONTDUMP).
// Pages are kept for the life of the process: the number of live keys is
// bounded by the number of open files, and unmapping a page with live slots
// would be fatal. When mmap or mlock is refused (RLIMIT_MEMLOCK), slots come
// from the Go heap instead and LockedMemory reports false.
type lockedArena struct {
	mu       sync.Mutex
	slots    [][]byte // guarded by mu
	pages    int      // guarded by mu
	unlocked bool     // guarded by mu: mlock was refused once; stop trying
}

var arena lockedArena

func (a *lockedArena) alloc() ([]byte, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.slots) == 0 && !a.unlocked {
		a.grow()
	}
	if n := len(a.slots); n > 0 {
		b := a.slots[n-1]
		a.slots = a.slots[:n-1]
		return b, true
	}
	return make([]byte, DataKeySize), false
}

func (a *lockedArena) grow() {
	size := os.Getpagesize()
	page, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		a.unlocked = true
		return
	}
	if err := unix.Mlock(page); err != nil {
		unix.Munmap(page)
		a.unlocked = true
		return
	}
	_ = unix.Madvise(page, unix.MADV_DONTDUMP) // best effort: core dumps are also disabled by the mount
	a.pages++
	for off := 0; off+slotSize <= len(page); off += slotSize {
		a.slots = append(a.slots, page[off:off+slotSize:off+slotSize])
	}
}

func (a *lockedArena) release(b []byte) {
	a.mu.Lock()
	a.slots = append(a.slots, b)
	a.mu.Unlock()
}

// LockedMemory reports whether key memory is mlocked. It is false when the
// kernel refused mlock (e.g. RLIMIT_MEMLOCK exhausted); kmsfs then keeps
// working with keys in ordinary memory and says so once at startup.
func LockedMemory() bool {
	k := newDataKey()
	defer k.Wipe()
	return k.locked
}
