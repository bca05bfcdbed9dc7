package fs

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// The key lifecycle of an inode, without a mount: node.acquire and
// node.release only need the node's Root, so a node built on a Root of a
// temporary CIPHERDIR behaves as a mounted one. These tests do not run in
// parallel: they set testOnlyBeforeWipe, and a wiped key's memory goes back
// to keyring's locked arena, where a parallel test could be handed it before
// the check that it was zeroed.

// gatedKeyring counts the calls reaching a Local keyring. While a gate is
// set, Decrypt reports on entered and waits for the gate to close; with err
// set it then fails with err.
type gatedKeyring struct {
	inner     *keyring.Local
	generates atomic.Int64
	decrypts  atomic.Int64
	entered   chan struct{}

	mu   sync.Mutex
	gate chan struct{} // guarded by mu
	err  error         // guarded by mu
}

func newGatedKeyring(t *testing.T) *gatedKeyring {
	t.Helper()
	l := testLocalKey(t)
	return &gatedKeyring{inner: l, entered: make(chan struct{}, 64)}
}

// hold makes Decrypt calls wait until the returned function is called.
func (g *gatedKeyring) hold() (open func()) {
	gate := make(chan struct{})
	g.mu.Lock()
	g.gate = gate
	g.mu.Unlock()
	return sync.OnceFunc(func() {
		g.mu.Lock()
		g.gate = nil
		g.mu.Unlock()
		close(gate)
	})
}

func (g *gatedKeyring) failWith(err error) {
	g.mu.Lock()
	g.err = err
	g.mu.Unlock()
}

func (g *gatedKeyring) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	g.generates.Add(1)
	return g.inner.GenerateDataKey(ctx, ec)
}

func (g *gatedKeyring) Decrypt(ctx context.Context, wrapped []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	g.decrypts.Add(1)
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.entered <- struct{}{}
		<-gate
	}
	g.mu.Lock()
	err := g.err
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return g.inner.Decrypt(ctx, wrapped, ec)
}

// keysTestVolume is the volume ID of the Roots below unless a test says
// otherwise.
var keysTestVolume = [blockcipher.IDSize]byte{0x6b, 0x6d, 0x73, 0x66, 0x73, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}

// keysTestRoot returns a Root of dir (a new temporary CIPHERDIR if "")
// with the given volume ID and geometry.
func keysTestRoot(t *testing.T, dir string, kr keyring.Keyring, vol [blockcipher.IDSize]byte, blockSize, headerSize int, log *slog.Logger) *Root {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := &volume.Config{
		FormatVersion: volume.ConfigVersion3,
		KeyMode:       volume.KeyModePerFile,
		VolumeID:      hex.EncodeToString(vol[:]),
		BlockSize:     blockSize,
		HeaderSize:    headerSize,
		Keyrings:      []volume.KeyringSpec{{Kind: keyring.KindLocal, KeyID: strings.Repeat("ab", 16), KeyFile: "unused"}},
	}
	v, err := volume.New(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRoot(Options{Volume: v, Keyring: kr, Logger: log})
	if err != nil {
		t.Fatalf("NewRoot: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// storedFile is a file created the way Create does it.
type storedFile struct {
	name   string
	path   string // in CIPHERDIR
	key    []byte // copy of its data key
	fileID [blockcipher.IDSize]byte
}

const keysTestPlain = "hello, kmsfs"

// createStored creates name with a header and one block holding
// keysTestPlain, as Create and a first write would.
func createStored(t *testing.T, r *Root, name string) storedFile {
	t.Helper()
	k, err := r.newFileKey()
	if err != nil {
		t.Fatalf("newFileKey: %v", err)
	}
	key := bytes.Clone(k.dk.Bytes())
	slot, fk, err := r.sealNewHeader(k)
	if err != nil {
		t.Fatalf("sealNewHeader: %v", err)
	}
	defer fk.wipe() // which wipes fk.c: use it before
	c := fk.c
	f := storedFile{name: name, path: filepath.Join(r.vol.Dir, name), key: key, fileID: k.fileID}
	fd, err := r.createEmpty(context.Background(), r.rootFd, name, 0o600, new(unix.Statx_t))
	if err != nil {
		t.Fatalf("createEmpty: %v", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, slot, 0); err != nil {
		t.Fatal(err)
	}
	block := c.SealBlock(nil, []byte(keysTestPlain), 0, true)
	if _, err := unix.Pwrite(fd, block, r.layout.BlockToCipherOff(0)); err != nil {
		t.Fatal(err)
	}
	return f
}

// openStored opens a stored file as Open does, closed at the test's end.
func openStored(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// readBlock0 opens the file's first block with c.
func readBlock0(t *testing.T, r *Root, fd int, c *blockcipher.Cipher) string {
	t.Helper()
	stored := make([]byte, int64(len(keysTestPlain))+r.layout.Overhead())
	if _, err := unix.Pread(fd, stored, r.layout.BlockToCipherOff(0)); err != nil {
		t.Fatal(err)
	}
	plain, err := c.OpenBlock(nil, stored, 0, true)
	if err != nil {
		t.Fatalf("open block 0: %v", err)
	}
	return string(plain)
}

// wipeRecorder captures, through testOnlyBeforeWipe, every key that is
// wiped: a copy of its bytes and the memory itself.
type wipeRecorder struct {
	mu     sync.Mutex
	copies [][]byte
	mems   [][]byte
}

func recordWipes(t *testing.T) *wipeRecorder {
	t.Helper()
	w := &wipeRecorder{}
	testOnlyBeforeWipe = func(b []byte) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.copies = append(w.copies, bytes.Clone(b))
		w.mems = append(w.mems, b)
	}
	t.Cleanup(func() { testOnlyBeforeWipe = nil })
	return w
}

func (w *wipeRecorder) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.copies)
}

// checkWiped asserts that exactly the keys want were wiped, and that their
// memory now holds only zeros.
func (w *wipeRecorder) checkWiped(t *testing.T, want ...[]byte) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.copies) != len(want) {
		t.Fatalf("%d keys wiped, want %d", len(w.copies), len(want))
	}
	for i := range want {
		if !bytes.Equal(w.copies[i], want[i]) {
			t.Errorf("wiped key %d is not the file's data key", i)
		}
		if len(w.mems[i]) != keyring.DataKeySize {
			t.Errorf("wiped key %d has %d bytes", i, len(w.mems[i]))
		}
		for _, b := range w.mems[i] {
			if b != 0 {
				t.Fatalf("key %d still in memory after the last release", i)
			}
		}
	}
}

func users(n *node) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st == nil {
		return 0
	}
	return n.st.users
}

// waitUsers polls until n has want users; they then wait for the load in
// flight (or are done).
func waitUsers(t *testing.T, n *node, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for users(n) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d users after 10s, want %d", users(n), want)
		}
		time.Sleep(time.Millisecond) // polling interval, not a wait for an event
	}
}

func waitEntered(t *testing.T, g *gatedKeyring) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no Decrypt call within 10s")
	}
}

type acquired struct {
	st  *fileState
	err error
}

// acquireAll runs acquire(wantKey=true) from len(fds) goroutines at once,
// holding the keyring until all of them are waiting for the one load.
func acquireAll(t *testing.T, n *node, g *gatedKeyring, fds []int, path string) []acquired {
	t.Helper()
	open := g.hold()
	defer open()
	res := make([]acquired, len(fds))
	var wg sync.WaitGroup
	for i, fd := range fds {
		wg.Go(func() {
			st, err := n.acquire(fd, true)
			res[i] = acquired{st, err}
		})
	}
	waitEntered(t, g)
	waitUsers(t, n, len(fds))
	open()
	wg.Wait()
	return res
}

func TestAcquireConcurrentOneDecrypt(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	wipes := recordWipes(t)
	n := &node{r: r}

	fds := make([]int, 16)
	for i := range fds {
		fds[i] = openStored(t, f.path)
	}
	res := acquireAll(t, n, g, fds, "f")

	if d := g.decrypts.Load(); d != 1 {
		t.Fatalf("%d Decrypt calls for 16 concurrent opens, want 1", d)
	}
	st := res[0].st
	for i, a := range res {
		if a.err != nil {
			t.Fatalf("acquire %d: %v", i, a.err)
		}
		if a.st != st {
			t.Fatalf("acquire %d got another file state", i)
		}
	}
	if !st.loaded || st.cipher() == nil || st.key == nil {
		t.Fatalf("state after load: loaded %v, cipher %v, key %v", st.loaded, st.cipher() != nil, st.key)
	}
	if !bytes.Equal(st.key.dk.Bytes(), f.key) || st.cipher().FileID() != f.fileID {
		t.Fatal("the shared key is not the file's data key")
	}
	if got := readBlock0(t, r, fds[7], st.cipher()); got != keysTestPlain {
		t.Fatalf("block 0 reads %q", got)
	}
	if s := r.Stats(); s.Decrypts != 1 || s.LiveKeys != 1 || users(n) != 16 {
		t.Fatalf("stats %+v with %d users, want 1 decrypt, 1 live key, 16 users", s, users(n))
	}

	// A later open shares the loaded key without a keyring call.
	st2, err := n.acquire(openStored(t, f.path), true)
	if err != nil || st2 != st || g.decrypts.Load() != 1 {
		t.Fatalf("17th acquire: same state %v, err %v, %d decrypts", st2 == st, err, g.decrypts.Load())
	}
	n.release(st2)

	for i := range 15 {
		n.release(res[i].st)
	}
	if wipes.count() != 0 || st.key.dk.Wiped() || r.Stats().LiveKeys != 1 {
		t.Fatalf("the key was dropped while a user remained (%d wipes, %d live keys)", wipes.count(), r.Stats().LiveKeys)
	}
	n.release(res[15].st)
	wipes.checkWiped(t, f.key)
	if s := r.Stats(); s.LiveKeys != 0 {
		t.Errorf("LiveKeys = %d after the last release, want 0", s.LiveKeys)
	}
	if st.key != nil || users(n) != 0 || n.st != nil {
		t.Errorf("after the last release: key %v, %d users, state kept %v", st.key, users(n), n.st != nil)
	}
}

func TestAcquireFailureSharedAndRetried(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	wipes := recordWipes(t)
	n := &node{r: r}
	fds := make([]int, 16)
	for i := range fds {
		fds[i] = openStored(t, f.path)
	}

	g.failWith(fmt.Errorf("kms Decrypt with key k: %w", keyring.ErrKeyDisabled))
	res := acquireAll(t, n, g, fds, "f")
	if d := g.decrypts.Load(); d != 1 {
		t.Fatalf("%d Decrypt calls, want 1 shared by all waiters", d)
	}
	for i, a := range res {
		if !errors.Is(a.err, keyring.ErrKeyDisabled) || a.st != nil {
			t.Fatalf("acquire %d: state %v, err %v; want the keyring's ErrKeyDisabled", i, a.st != nil, a.err)
		}
		if e := errnoOf(a.err); e != syscall.EACCES {
			t.Errorf("acquire %d: errno %v, want EACCES", i, e)
		}
	}
	if u := users(n); u != 0 || n.st != nil {
		t.Fatalf("%d users left after every acquire failed", u)
	}
	if s := r.Stats(); s.LiveKeys != 0 {
		t.Fatalf("LiveKeys = %d after a failed load", s.LiveKeys)
	}
	if wipes.count() != 0 {
		t.Fatalf("%d keys wiped, but none was loaded", wipes.count())
	}

	// The failure is not remembered: the next open calls the keyring again.
	g.failWith(nil)
	st, err := n.acquire(fds[0], true)
	if err != nil {
		t.Fatalf("acquire after the keyring recovered: %v", err)
	}
	if d := g.decrypts.Load(); d != 2 {
		t.Fatalf("%d Decrypt calls, want 2: the retry must call the keyring", d)
	}
	if got := readBlock0(t, r, fds[1], st.cipher()); got != keysTestPlain {
		t.Fatalf("block 0 reads %q", got)
	}
	n.release(st)
	wipes.checkWiped(t, f.key)
	if s := r.Stats(); s.LiveKeys != 0 {
		t.Errorf("LiveKeys = %d, want 0", s.LiveKeys)
	}
}

// A user that does not need the key (truncate through a path, say) keeps
// the state alive across a failed load; the next load retries.
func TestAcquireFailureWithKeylessUser(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	wipes := recordWipes(t)
	n := &node{r: r}
	fd := openStored(t, f.path)

	keyless, err := n.acquire(fd, false)
	if err != nil {
		t.Fatal(err)
	}
	g.failWith(fmt.Errorf("kms: %w", keyring.ErrUnreachable))
	if _, err := n.acquire(fd, true); !errors.Is(err, keyring.ErrUnreachable) {
		t.Fatalf("acquire with a failing keyring: %v", err)
	}
	if u := users(n); u != 1 || n.st != keyless || keyless.loaded {
		t.Fatalf("after a failed load: %d users, same state %v, loaded %v; want the keyless user alone", u, n.st == keyless, keyless.loaded)
	}
	g.failWith(nil)
	st, err := n.acquire(fd, true)
	if err != nil || st != keyless || !st.loaded || g.decrypts.Load() != 2 {
		t.Fatalf("retry: err %v, same state %v, loaded %v, %d decrypts", err, st == keyless, st.loaded, g.decrypts.Load())
	}
	n.release(st)
	if wipes.count() != 0 {
		t.Fatal("the key was wiped while the keyless user remained")
	}
	n.release(keyless)
	wipes.checkWiped(t, f.key)
	if s := r.Stats(); s.LiveKeys != 0 {
		t.Errorf("LiveKeys = %d, want 0", s.LiveKeys)
	}
}

func TestAcquireWithoutKeyNoKeyringCall(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	wipes := recordWipes(t)
	n := &node{r: r}
	fd := openStored(t, f.path)
	generates := g.generates.Load()

	var sts []*fileState
	for range 3 {
		st, err := n.acquire(fd, false)
		if err != nil {
			t.Fatal(err)
		}
		sts = append(sts, st)
	}
	if d, gen := g.decrypts.Load(), g.generates.Load(); d != 0 || gen != generates {
		t.Fatalf("acquire(wantKey=false) made %d Decrypt and %d GenerateDataKey calls", d, gen-generates)
	}
	if st := sts[0]; st != sts[1] || st != sts[2] || st.loaded || st.key != nil || users(n) != 3 {
		t.Fatalf("keyless state: loaded %v, cipher %v, key %v, %d users", st.loaded, st.key != nil, st.key, users(n))
	}
	if s := r.Stats(); s.Decrypts != 0 || s.LiveKeys != 0 {
		t.Fatalf("stats %+v, want no decrypt and no live key", s)
	}

	// A keyed user joins the same state and loads the key once.
	st, err := n.acquire(fd, true)
	if err != nil || st != sts[0] || g.decrypts.Load() != 1 {
		t.Fatalf("keyed acquire: err %v, same state %v, %d decrypts", err, st == sts[0], g.decrypts.Load())
	}
	n.release(st)
	for _, st := range sts {
		if wipes.count() != 0 {
			t.Fatal("the key was wiped while users remained")
		}
		n.release(st)
	}
	wipes.checkWiped(t, f.key)
	if n.st != nil || r.Stats().LiveKeys != 0 {
		t.Errorf("after the last release: state kept %v, %d live keys", n.st != nil, r.Stats().LiveKeys)
	}
}

// An empty stored file (copied in, never written) has no header and no key.
func TestAcquireFileWithoutHeader(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	wipes := recordWipes(t)
	path := filepath.Join(r.vol.Dir, "empty")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	n := &node{r: r}
	st, err := n.acquire(openStored(t, path), true)
	if err != nil {
		t.Fatal(err)
	}
	if !st.loaded || st.key != nil {
		t.Fatalf("state of a headerless file: loaded %v, cipher %v, key %v", st.loaded, st.cipher() != nil, st.key)
	}
	if d := g.decrypts.Load(); d != 0 {
		t.Fatalf("%d Decrypt calls for a file without a header", d)
	}
	n.release(st)
	if wipes.count() != 0 || r.Stats().LiveKeys != 0 {
		t.Errorf("%d wipes, %d live keys for a file without a key", wipes.count(), r.Stats().LiveKeys)
	}
}

func TestLoadKey(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	f := createStored(t, r, "f")
	if gen := g.generates.Load(); gen != 1 || r.Stats().Generates != 1 {
		t.Fatalf("creating a file made %d GenerateDataKey calls, want 1", gen)
	}
	fd := openStored(t, f.path)
	k, err := r.loadKey(fd, [2]uint64{}, nil)
	if err != nil {
		t.Fatalf("loadKey: %v", err)
	}
	c, dk := k.c, k.dk
	if !bytes.Equal(dk.Bytes(), f.key) || c.FileID() != f.fileID || c.Layout() != r.layout {
		t.Fatal("loadKey returned another key, file ID or layout")
	}
	if got := readBlock0(t, r, fd, c); got != keysTestPlain {
		t.Fatalf("block 0 reads %q", got)
	}
	if s := r.Stats(); s.Decrypts != 1 || s.LiveKeys != 1 {
		t.Fatalf("stats %+v, want 1 decrypt and 1 live key", s)
	}
	k.wipe()
	if !dk.Wiped() || r.Stats().LiveKeys != 0 {
		t.Fatalf("wipe: key wiped %v, %d live keys", dk.Wiped(), r.Stats().LiveKeys)
	}
}

// readHeader refuses headers that do not belong to the volume, before any
// keyring call; damaged headers fail with the right error.
func TestReadHeaderRejects(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	dir := r.vol.Dir
	otherVolume := keysTestVolume
	otherVolume[0] ^= 1

	createStored(t, keysTestRoot(t, dir, g, otherVolume, 4096, 512, nil), "other-volume")
	createStored(t, keysTestRoot(t, dir, g, keysTestVolume, 8192, 512, nil), "block-8192")
	createStored(t, keysTestRoot(t, dir, g, keysTestVolume, 4096, 1024, nil), "header-1024")
	small := createStored(t, keysTestRoot(t, dir, g, keysTestVolume, 4096, 256, nil), "header-256")
	if err := os.Truncate(small.path, 1000); err != nil { // longer than this volume's header
		t.Fatal(err)
	}
	truncated := createStored(t, r, "truncated")
	if err := os.Truncate(truncated.path, 100); err != nil {
		t.Fatal(err)
	}
	cut := createStored(t, r, "cut-by-one")
	if err := os.Truncate(cut.path, 511); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "junk"), bytes.Repeat([]byte{'A'}, 600), 0o600); err != nil {
		t.Fatal(err)
	}
	decrypts := g.decrypts.Load()

	for _, c := range []struct {
		name   string
		is     error  // errors.Is
		format bool   // a *blockcipher.FormatError
		msg    string // in the message
	}{
		{"other-volume", blockcipher.ErrHeaderAuth, false, "belongs to volume " + hex.EncodeToString(otherVolume[:])},
		{"block-8192", blockcipher.ErrHeaderAuth, false, "block size 8192"},
		{"header-1024", blockcipher.ErrTruncated, true, "512 of 1024 bytes"},
		{"header-256", blockcipher.ErrMalformed, true, "trailing data"},
		{"truncated", blockcipher.ErrTruncated, false, "file has 100 bytes"},
		{"cut-by-one", blockcipher.ErrTruncated, false, "file has 511 bytes"},
		{"junk", blockcipher.ErrBadMagic, true, "magic"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fd := openStored(t, filepath.Join(dir, c.name))
			h, err := r.readHeader(fd)
			if err == nil || h != nil {
				t.Fatalf("readHeader: header %v, err %v; want an error", h != nil, err)
			}
			if !errors.Is(err, c.is) {
				t.Errorf("error %q is not %q", err, c.is)
			}
			var fe *blockcipher.FormatError
			if errors.As(err, &fe) != c.format {
				t.Errorf("error %q: FormatError %v, want %v", err, !c.format, c.format)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not say %q", err, c.msg)
			}
			if e := errnoOf(err); e != syscall.EIO {
				t.Errorf("errno %v, want EIO", e)
			}
			// loadKey fails the same way, without asking the keyring.
			k, err := r.loadKey(fd, [2]uint64{}, nil)
			if !errors.Is(err, c.is) || k != nil {
				t.Errorf("loadKey: %v", err)
			}
		})
	}
	if d := g.decrypts.Load(); d != decrypts {
		t.Errorf("%d Decrypt calls for headers not of this volume, want 0", d-decrypts)
	}
	if s := r.Stats(); s.LiveKeys != 0 {
		t.Errorf("LiveKeys = %d", s.LiveKeys)
	}

	// An empty file has no header.
	if err := os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if h, err := r.readHeader(openStored(t, filepath.Join(dir, "empty"))); h != nil || err != nil {
		t.Errorf("readHeader of an empty file: %v, %v; want nil, nil", h, err)
	}
}

// A tampered header of this volume reaches the keyring (it cannot be told
// apart before) and then fails; no key stays live.
func TestLoadKeyTamperedHeader(t *testing.T) {
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, nil)
	for _, c := range []struct {
		name string
		off  int64 // byte flipped in the header
		is   error
	}{
		{"file-id", 40, keyring.ErrInvalidCiphertext}, // the context changes: the keyring refuses
		{"commitment", 60, blockcipher.ErrHeaderAuth}, // the key opens, the commitment fails
		{"mac", 512 - 1, blockcipher.ErrHeaderAuth},   // the key opens, the MAC fails
		{"wrapped-key-blob", 83 + 3 + 32 + 2 + 20, keyring.ErrInvalidCiphertext},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := createStored(t, r, c.name)
			fd, err := unix.Open(f.path, unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			b := make([]byte, 1)
			if _, err := unix.Pread(fd, b, c.off); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0x01
			if _, err := unix.Pwrite(fd, b, c.off); err != nil {
				t.Fatal(err)
			}
			before := g.decrypts.Load()
			k, err := r.loadKey(fd, [2]uint64{}, nil)
			if !errors.Is(err, c.is) || k != nil {
				t.Fatalf("loadKey of a header with a flipped %s byte: %v, want %v", c.name, err, c.is)
			}
			if e := errnoOf(err); e != syscall.EIO {
				t.Errorf("errno %v, want EIO", e)
			}
			if d := g.decrypts.Load() - before; d != 1 {
				t.Errorf("%d Decrypt calls, want 1", d)
			}
			if s := r.Stats(); s.LiveKeys != 0 {
				t.Errorf("LiveKeys = %d after a failed load", s.LiveKeys)
			}
		})
	}
}

func TestErrnoOf(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("open a/b: unwrap data key: %w", err) }
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{syscall.ENOENT, syscall.ENOENT},
		{wrap(syscall.ENOSPC), syscall.ENOSPC},
		{&os.PathError{Op: "open", Path: "x", Err: syscall.EEXIST}, syscall.EEXIST},
		{unix.EROFS, syscall.EROFS},
		{keyring.ErrAccessDenied, syscall.EACCES},
		{wrap(keyring.ErrAccessDenied), syscall.EACCES},
		{wrap(keyring.ErrKeyDisabled), syscall.EACCES},
		{wrap(keyring.ErrKeyNotFound), syscall.EACCES},
		{wrap(keyring.ErrInvalidCiphertext), syscall.EIO},
		{wrap(keyring.ErrNoUsableKey), syscall.EIO},
		{wrap(keyring.ErrUnreachable), syscall.EIO},
		{wrap(keyring.ErrThrottled), syscall.EIO},
		{wrap(blockcipher.ErrAuth), syscall.EIO},
		{wrap(&blockcipher.BlockError{Block: 3, Err: blockcipher.ErrAuth}), syscall.EIO},
		{wrap(blockcipher.ErrHeaderAuth), syscall.EIO},
		{wrap(&blockcipher.FormatError{Field: "magic", Err: blockcipher.ErrBadMagic}), syscall.EIO},
		{errors.New("anything else"), syscall.EIO},
		{context.DeadlineExceeded, syscall.EIO},
		{errors.Join(errors.New("a"), wrap(keyring.ErrKeyDisabled)), syscall.EACCES},
	} {
		if got := errnoOf(c.err); got != c.want {
			t.Errorf("errnoOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Root.errno logs every failure once with the operation, the path and the
// reason, and never a key.
func TestErrnoLogs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g := newGatedKeyring(t)
	r := keysTestRoot(t, "", g, keysTestVolume, 4096, 512, log)
	f := createStored(t, r, "f")

	if e := r.errno(fmt.Errorf("unwrap data key: %w", keyring.ErrKeyDisabled), "open", "dir/f"); e != syscall.EACCES {
		t.Fatalf("errno = %v, want EACCES", e)
	}
	if e := r.errno(syscall.ENOENT, "lookup", "dir/g"); e != syscall.ENOENT {
		t.Fatalf("errno = %v, want ENOENT", e)
	}
	if e := r.errno(nil, "open", "dir/h"); e != 0 {
		t.Fatalf("errno(nil) = %v", e)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2:\n%s", len(lines), buf.String())
	}
	for _, want := range []string{`"level":"WARN"`, `"op":"open"`, `"path":"dir/f"`, `"errno":"permission denied"`, "key disabled"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("log line %s lacks %s", lines[0], want)
		}
	}
	if !strings.Contains(lines[1], `"level":"DEBUG"`) || !strings.Contains(lines[1], `"path":"dir/g"`) {
		t.Errorf("a plain ENOENT should log at debug level: %s", lines[1])
	}
	if out := buf.String(); strings.Contains(out, hex.EncodeToString(f.key)) || strings.Contains(out, string(f.key)) {
		t.Error("a log line holds the key")
	}
}

// TestInPlaceBacking: a CIPHERDIR on ext4 or tmpfs (where the tests run)
// lets appends skip their space reservation; on /proc, which kmsfs does
// not know, they reserve.
func TestInPlaceBacking(t *testing.T) {
	var sfs unix.Statfs_t
	dir := t.TempDir()
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	g := newGatedKeyring(t)
	r := keysTestRoot(t, dir, g, keysTestVolume, 4096, 512, nil)
	if want := inPlaceFS[int64(sfs.Type)]; r.inPlace != want {
		t.Errorf("inPlace = %v on a filesystem of type %#x, want %v", r.inPlace, sfs.Type, want)
	}
	if sfs.Type == unix.EXT4_SUPER_MAGIC || sfs.Type == unix.TMPFS_MAGIC {
		if !r.inPlace {
			t.Errorf("inPlace is false on ext4/tmpfs")
		}
	}
	if p := keysTestRoot(t, "/proc", g, keysTestVolume, 4096, 512, nil); p.inPlace {
		t.Error("inPlace is true on /proc")
	}
}
