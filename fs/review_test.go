package fs

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// TestTornAppendStaysWritable: a crash during an append leaves its new
// blocks torn at the end of the file. After it, the file must take
// writes again under its own key: truncated back to its old length and
// appended to, as a database or log recovering does (found by review:
// the check that a key found in a header is the file's own refused
// every change, as it would behind a planted header).
func TestTornAppendStaysWritable(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	l := root.layout
	bs := int(l.BlockSize)
	old := bytes.Repeat([]byte("0123456789abcdef"), (5*bs+100)/16+1)[:5*bs+100]
	p := filepath.Join(mnt, "log")
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	waitNoLiveKeys(t, root)
	// The torn append: block 6 half written, block 7 not at all, and
	// the old final block 5 not yet rewritten (FORMAT.md, "Append").
	sf, err := os.OpenFile(filepath.Join(root.vol.Dir, "log"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	half := make([]byte, l.StoredBlockSize()/2)
	rand.Read(half)
	if _, err := sf.WriteAt(half, l.BlockToCipherOff(6)); err != nil {
		t.Fatal(err)
	}
	if err := sf.Truncate(l.BlockToCipherOff(8)); err != nil {
		t.Fatal(err)
	}
	sf.Close()
	truncateBackAndAppend(t, p, old, "appended again")
}

// truncateBackAndAppend recovers p as a database or log does after a
// crash: truncated back to old's length and appended to; it must then
// read as old and the append.
func truncateBackAndAppend(t *testing.T, p string, old []byte, appended string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(old))); err != nil {
		t.Fatalf("truncate back to %d bytes: %v", len(old), err)
	}
	if _, err := f.WriteAt([]byte(appended), int64(len(old))); err != nil {
		t.Fatalf("append after the truncate: %v", err)
	}
	got, err := os.ReadFile(p)
	if want := append(bytes.Clone(old), appended...); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after recovery: %d bytes, %v; want the old %d bytes and the append", len(got), err, len(old))
	}
}

// TestReadaheadHitKeepsOutageKeys: a key the readahead hands out made no
// key service call, so it must not end an outage: a file written during
// the outage still reads after a prefetched file was opened (found by
// review: the hit counted as the service answering, which wiped the
// kept keys, and the file read EIO until the service came back).
func TestReadaheadHitKeepsOutageKeys(t *testing.T) {
	vol, key := testVolume(t, 4096)
	kr := &outageKeyring{Keyring: key}
	mnt, root := mountInProcess(t, Options{Volume: vol, Keyring: kr, PrefetchKeys: true, KeyPool: 4})
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "d", "p"), []byte("prefetched"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitNoLiveKeys(t, root)
	if _, err := os.ReadDir(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a key prefetched by the listing", func() bool { return root.Stats().Prefetched >= 1 })
	kr.down.Store(true)
	w := filepath.Join(mnt, "written")
	if err := os.WriteFile(w, []byte("written in the outage"), 0o644); err != nil {
		t.Fatalf("write in the outage, with a key from the pool: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "d", "p")); err != nil || string(got) != "prefetched" {
		t.Fatalf("the prefetched file in the outage: %q, %v", got, err)
	}
	if got, err := os.ReadFile(w); err != nil || string(got) != "written in the outage" {
		t.Fatalf("the file written in the outage, after a readahead hit: %q, %v", got, err)
	}
}

// TestOutageKeyKeptAgain: a file written in an outage, closed, opened
// again with its kept key, emptied and written, goes on under that key
// and is kept again at its close (found by review: the kept key came
// back as one found in a header, so the write failed with EIO).
func TestOutageKeyKeptAgain(t *testing.T) {
	vol, key := testVolume(t, 4096)
	kr := &outageKeyring{Keyring: key}
	mnt, root := mountInProcess(t, Options{Volume: vol, Keyring: kr, KeyPool: 1})
	p := filepath.Join(mnt, "f")
	// The pool's one key, generated while the service is up.
	waitFor(t, "a key in the pool", func() bool { return root.Stats().Pooled >= 1 })
	kr.down.Store(true)
	if err := os.WriteFile(p, []byte("one"), 0o644); err != nil {
		t.Fatalf("first write in the outage: %v", err)
	}
	for i, line := range []string{"two", "three"} {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_TRUNC, 0)
		if err != nil {
			t.Fatalf("reopen %d in the outage: %v", i, err)
		}
		_, err = f.Write([]byte(line))
		f.Close()
		if err != nil {
			t.Fatalf("write %d after O_TRUNC in the outage: %v", i, err)
		}
		if got, err := os.ReadFile(p); err != nil || string(got) != line {
			t.Fatalf("read %d in the outage: %q, %v", i, got, err)
		}
	}
}

// TestThrottledKeyDoesNotFallBack: while the key service only throttles
// (anyone with access to the account can cause that), an emptied file
// whose key came from a header does not go on under it: the write fails
// rather than seal new content under a key someone else may have chosen.
func TestThrottledKeyDoesNotFallBack(t *testing.T) {
	vol, key := testVolume(t, 4096)
	kr := &outageKeyring{Keyring: key}
	warns := &warnRecorder{}
	log := slog.New(slog.NewTextHandler(warns, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mnt, root := mountInProcess(t, Options{Volume: vol, Keyring: kr, Logger: log})
	p := filepath.Join(mnt, "log")
	if err := os.WriteFile(p, []byte("before the mount knew it\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitNoLiveKeys(t, root)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("appended\n")); err != nil {
		t.Fatal(err)
	}
	kr.throttle.Store(true)
	kr.down.Store(true)
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("after truncate\n")); !errors.Is(err, syscall.EIO) {
		t.Errorf("write after truncate while throttled, key from a header: %v, want EIO", err)
	}
	kr.throttle.Store(false)
	if _, err := f.Write([]byte("after truncate\n")); err != nil {
		t.Errorf("write after truncate while unreachable, key seen holding blocks: %v", err)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != "after truncate\n" {
		t.Errorf("after the outage's write: %q, %v", got, err)
	}
	warns.mu.Lock()
	defer warns.mu.Unlock()
	if got := strings.Join(warns.records, ""); !strings.Contains(got, "throttled") {
		t.Errorf("the refused write's warning: %q, want the throttling named", got)
	}
}

// waitFor polls cond, which background work makes true, for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKeptKeyOnlyForItsFile: the key this mount kept through an outage
// for a file it wrote comes back as its own only to that file. A copy of
// the file's header put into an empty file takes it as a key found in a
// header, so a write there starts the file over (or, with no key to be
// had, fails) rather than seal the user's data under the first file's ID
// and key (found by review).
func TestKeptKeyOnlyForItsFile(t *testing.T) {
	vol, key := testVolume(t, 4096)
	kr := &outageKeyring{Keyring: key}
	warns := &warnRecorder{}
	log := slog.New(slog.NewTextHandler(warns, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mnt, root := mountInProcess(t, Options{Volume: vol, Keyring: kr, KeyPool: 1, Logger: log})
	waitFor(t, "a key in the pool", func() bool { return root.Stats().Pooled >= 1 })
	kr.throttle.Store(true)
	kr.down.Store(true)
	if err := os.WriteFile(filepath.Join(mnt, "x"), []byte("x's data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "y"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	stored, err := os.ReadFile(filepath.Join(vol.Dir, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol.Dir, "y"), stored[:root.layout.HeaderSize], 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "y"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, werr := f.Write([]byte("the user's data"))
	f.Close()
	if werr == nil {
		b, err := os.ReadFile(filepath.Join(vol.Dir, "y"))
		if err != nil {
			t.Fatal(err)
		}
		h, err := root.vol.ReadHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil || h == nil {
			t.Fatalf("y's header: %v", err)
		}
		if xh, _ := root.vol.ReadHeader(bytes.NewReader(stored), int64(len(stored))); h.FileID == xh.FileID {
			t.Fatal("a write to a copy of x's header was sealed under x's ID and key")
		}
	} else if !errors.Is(werr, syscall.EIO) {
		t.Fatalf("write to a copy of x's header: %v, want success under a new ID or EIO", werr)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "x")); err != nil || string(got) != "x's data" {
		t.Fatalf("x in the outage: %q, %v", got, err)
	}
}

// TestStrayTailTakesWrites: a crash during an append, its write torn at a
// page boundary, can leave a few bytes of a block too short to hold any
// plaintext past the last whole block. Reads serve the whole blocks; a
// truncate to that size and an append must work too, the stray bytes cut
// off (found by review: every change but a truncate to 0 failed with EIO).
func TestStrayTailTakesWrites(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	old := bytes.Repeat([]byte("0123456789abcdef"), 8192/16) // two whole blocks
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	waitNoLiveKeys(t, root)
	sp := filepath.Join(root.vol.Dir, "f")
	sf, err := os.OpenFile(sp, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	sf.Write(bytes.Repeat([]byte{0xa5}, 10))
	sf.Close()
	truncateBackAndAppend(t, p, old, "appended")
	fi, err := os.Stat(sp)
	if err != nil {
		t.Fatal(err)
	}
	if want := root.layout.CipherSize(int64(len(old) + len("appended"))); fi.Size() != want {
		t.Errorf("stored size %d, want %d: the stray bytes cut off", fi.Size(), want)
	}
}

// TestCutAtBlockBoundaryStaysDetected: a file cut at a block boundary has
// a final block sealed as a middle block, which fails; so does the tail a
// crash during an append tears, and the key is proven the file's own by
// a block before it (TestTornAppendStaysWritable). A write sealing that
// final block anew must fail, or the cut would read as whole from then on
// (found by review); a write before it, and a truncate back below it,
// which the user asks for knowing the tail is lost, work.
func TestCutAtBlockBoundaryStaysDetected(t *testing.T) {
	warns := &warnRecorder{}
	log := slog.New(slog.NewTextHandler(warns, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mnt, root := mountInProcess(t, Options{Logger: log})
	l := root.layout
	bs := int(l.BlockSize)
	old := bytes.Repeat([]byte("0123456789abcdef"), 5*bs/16)
	p := filepath.Join(mnt, "db")
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	waitNoLiveKeys(t, root)
	if err := os.Truncate(filepath.Join(root.vol.Dir, "db"), l.BlockToCipherOff(3)); err != nil {
		t.Fatal(err)
	}

	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := bytes.Repeat([]byte("new page"), bs/8)
	if _, err := f.WriteAt(page, int64(2*bs)); !errors.Is(err, syscall.EIO) {
		t.Errorf("a whole-block write over the final block of a file cut at a block boundary: %v, want EIO", err)
	}
	if _, err := f.WriteAt(page, 3*int64(bs)); !errors.Is(err, syscall.EIO) {
		t.Errorf("an append to a file cut at a block boundary: %v, want EIO", err)
	}
	if _, err := f.ReadAt(make([]byte, bs), int64(2*bs)); !errors.Is(err, syscall.EIO) {
		t.Errorf("a read of the cut file's final block after the refused writes: %v, want EIO", err)
	}
	if _, err := f.WriteAt(page, 0); err != nil {
		t.Errorf("a write before the failing final block: %v", err)
	}
	if err := f.Truncate(int64(2 * bs)); err != nil {
		t.Fatalf("truncate back below the failing final block: %v", err)
	}
	if _, err := f.WriteAt(page, int64(2*bs)); err != nil {
		t.Fatalf("append after the truncate: %v", err)
	}
	got, err := os.ReadFile(p)
	want := append(append(bytes.Clone(page), old[bs:2*bs]...), page...)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("after recovery: %d bytes, %v; want %d", len(got), err, len(want))
	}
	warns.mu.Lock()
	defer warns.mu.Unlock()
	if got := strings.Join(warns.records, ""); !strings.Contains(got, "path=db") || !strings.Contains(got, "truncated to at most") {
		t.Errorf("the refused write's warning: %q, want one naming db and what to do", got)
	}
}

// TestOutageKeysWipedAfterKeepWhileDown: a kept key lives at most
// outageKeep even while the key service stays down (found by review:
// only a close or the service's return wiped it).
func TestOutageKeysWipedAfterKeepWhileDown(t *testing.T) {
	o, k := testOutageKeys(t)
	h := &blockcipher.Header{FileID: blockcipher.NewID()}
	o.noteCall()
	o.noteResult(keyring.ErrUnreachable)
	if !o.keep(k, h, [2]uint64{1, 1}) {
		t.Fatal("keep refused a key while the service is down")
	}
	o.expire()
	if o.len() != 1 {
		t.Fatalf("a key kept a moment ago, service down: %d kept, want 1", o.len())
	}
	o.mu.Lock()
	o.keys[h.FileID].kept = time.Now().Add(-outageKeep - time.Minute)
	timer := o.timer != nil
	o.mu.Unlock()
	if !timer {
		t.Error("no expiry scheduled while keys are kept and the service is down")
	}
	o.expire()
	if o.len() != 0 {
		t.Errorf("a key kept past outageKeep, service still down: %d kept, want 0", o.len())
	}
}

// TestOutageKeysBounded: past outageMax the oldest kept key goes first,
// and a file kept again and again leaves no pile of replaced keys behind
// (keep finds the oldest without a scan of every kept key: the scan cost
// about 100 µs per closed file in branch-key mounts, where nothing wiped
// the kept keys while files were written).
func TestOutageKeysBounded(t *testing.T) {
	o, k := testOutageKeys(t)
	first := &blockcipher.Header{FileID: blockcipher.NewID()}
	o.keep(k, first, [2]uint64{})
	for range outageMax {
		o.keep(k, &blockcipher.Header{FileID: blockcipher.NewID()}, [2]uint64{})
	}
	if n := o.len(); n != outageMax {
		t.Errorf("%d keys kept after %d, want outageMax (%d)", n, outageMax+1, outageMax)
	}
	if got, _ := o.take(first); got != nil {
		got.Wipe()
		t.Error("the first key kept survived past outageMax; want the oldest gone first")
	}
	again := &blockcipher.Header{FileID: blockcipher.NewID()}
	for range 10 * outageMax {
		o.keep(k, again, [2]uint64{})
	}
	o.mu.Lock()
	kept, queued := len(o.keys), len(o.order)
	o.mu.Unlock()
	if kept != outageMax || queued > 2*kept+65 {
		t.Errorf("after one file kept %d times: %d keys, %d queued; want %d and at most %d", 10*outageMax, kept, queued, outageMax, 2*kept+65)
	}
	if got, _ := o.take(again); got == nil {
		t.Error("the key kept last is gone")
	} else {
		got.Wipe()
	}
}

// testOutageKeys returns an empty outageKeys and a file key to keep in
// it, both wiped when the test ends.
func testOutageKeys(t *testing.T) (*outageKeys, *fileKey) {
	o := &outageKeys{}
	t.Cleanup(o.wipe)
	dk, err := keyring.NewDataKey(bytes.Repeat([]byte{7}, keyring.DataKeySize))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dk.Wipe)
	return o, &fileKey{dk: dk}
}

// TestCutWhileOpenStaysDetected: a file this mount wrote and holds open,
// cut at a block boundary behind its back, must not take a write that
// replaces its new final block whole: that would seal the cut over
// (found by review: only a key proven by a block before a failing final
// block was checked).
func TestCutWhileOpenStaysDetected(t *testing.T) {
	// Refused writes are logged as warnings: expected here.
	mnt, root := mountInProcess(t, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	bs := int(root.layout.BlockSize)
	l := root.layout
	f, err := os.OpenFile(filepath.Join(mnt, "db"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte("0123456789abcdef"), 5*bs/16)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(root.vol.Dir, "db"), l.BlockToCipherOff(3)); err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte("new page"), bs/8)
	if _, err := f.WriteAt(page, int64(2*bs)); !errors.Is(err, syscall.EIO) {
		t.Errorf("a whole-block write over the final block of an open file cut at a block boundary: %v, want EIO", err)
	}
	if _, err := f.WriteAt(page, 0); err != nil {
		t.Errorf("a write before the final block: %v", err)
	}
}
