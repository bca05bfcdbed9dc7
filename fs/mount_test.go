package fs

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
	"github.com/kmsfs/kmsfs/volume"
)

// testLocalKey makes a new local key file and loads it.
func testLocalKey(t testing.TB) *keyring.Local {
	t.Helper()
	p := filepath.Join(t.TempDir(), "volume.key")
	if err := keyring.CreateLocalKeyFile(p); err != nil {
		t.Fatal(err)
	}
	kr, err := keyring.LoadLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// testVolume makes a CIPHERDIR with a config for the local keyring.
func testVolume(t testing.TB, blockSize int) (*volume.Volume, *keyring.Local) {
	t.Helper()
	kr := testLocalKey(t)
	vid := blockcipher.NewID()
	cfg := &volume.Config{
		FormatVersion: volume.ConfigVersion3,
		KeyMode:       volume.KeyModePerFile,
		VolumeID:      hex.EncodeToString(vid[:]),
		BlockSize:     blockSize,
		HeaderSize:    512,
		Keyrings:      []volume.KeyringSpec{{Kind: keyring.KindLocal, KeyID: kr.KeyID(), KeyFile: "/nonexistent/in-memory"}},
		Features:      []string{},
	}
	dir := t.TempDir()
	if err := volume.WriteConfig(dir, cfg); err != nil {
		t.Fatal(err)
	}
	v, err := volume.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return v, kr
}

// warnRecorder fails the test on any log record at warning level or above
// unless the test expects them.
type warnRecorder struct {
	mu      sync.Mutex
	records []string
}

func (w *warnRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := string(p)
	if strings.Contains(s, "level=WARN") || strings.Contains(s, "level=ERROR") {
		w.records = append(w.records, s)
	}
	return len(p), nil
}

// mountInProcess mounts a fresh local-key volume in this test process, so
// the race detector sees the filesystem's code. It unmounts in Cleanup and
// fails the test if anything was logged as a warning.
func mountInProcess(t testing.TB, opts Options) (string, *Root) {
	t.Helper()
	return mountInProcessWith(t, opts, MountOptions{})
}

// mountInProcessWith is mountInProcess with the kernel-facing options mo.
func mountInProcessWith(t testing.TB, opts Options, mo MountOptions) (string, *Root) {
	t.Helper()
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("/dev/fuse is not usable: %v", err)
		}
		t.Skipf("/dev/fuse is not usable: %v", err)
	} else {
		f.Close()
	}
	if opts.Volume == nil {
		v, kr := testVolume(t, 4096)
		opts.Volume = v
		if opts.Keyring == nil {
			opts.Keyring = kr
		}
	}
	// A test that expects warnings passes its own Logger.
	rec := &warnRecorder{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(rec, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	root, err := NewRoot(opts)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(mnt, root, mo)
	if err != nil {
		root.Close()
		t.Fatal(err)
	}
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
		root.Close()
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.records) > 0 {
			t.Errorf("kmsfs logged warnings:\n%s", strings.Join(rec.records, ""))
		}
	})
	return mnt, root
}

func TestInProcessMountRoundTrip(t *testing.T) {
	mnt, root := mountInProcess(t, Options{})
	p := filepath.Join(mnt, "f")
	want := bytes.Repeat([]byte("kmsfs "), 3000)
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v", err)
	}
	waitNoLiveKeys(t, root)
}

// waitNoLiveKeys waits (bounded) until no data key is held: the kernel
// sends RELEASE after close(2) has returned.
func waitNoLiveKeys(t testing.TB, root *Root) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for root.Stats().LiveKeys != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d data keys still live 10s after every file was closed", root.Stats().LiveKeys)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countingKeyring counts keyring calls.
type countingKeyring struct {
	keyring.Keyring
	generates, decrypts atomic.Int64
}

func (c *countingKeyring) GenerateDataKey(ctx context.Context, ec keyring.EncryptionContext) (*keyring.DataKey, []keyring.WrappedKey, error) {
	c.generates.Add(1)
	return c.Keyring.GenerateDataKey(ctx, ec)
}

func (c *countingKeyring) Decrypt(ctx context.Context, w []keyring.WrappedKey, ec keyring.EncryptionContext) (*keyring.DataKey, error) {
	c.decrypts.Add(1)
	return c.Keyring.Decrypt(ctx, w, ec)
}

// TestPrefetchKeys: listing a directory unwraps its files' keys in the
// background; opening them then makes no further keyring call, and the
// prefetched keys are handed over, not duplicated.
func TestPrefetchKeys(t *testing.T) {
	v, kr := testVolume(t, 4096)
	ck := &countingKeyring{Keyring: kr}
	mnt, root := mountInProcess(t, Options{Volume: v, Keyring: ck, PrefetchKeys: true})
	const n = 50
	for i := 0; i < n; i++ {
		if err := os.WriteFile(filepath.Join(mnt, fmt.Sprintf("f%02d", i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitNoLiveKeys(t, root)
	before := ck.decrypts.Load()
	if _, err := os.ReadDir(mnt); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for root.Stats().Prefetched < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d keys prefetched", root.Stats().Prefetched, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := ck.decrypts.Load() - before; got != n {
		t.Fatalf("listing made %d Decrypt calls, want %d", got, n)
	}
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%02d", i)))
		if err != nil || len(b) != 1 || b[0] != byte(i) {
			t.Fatalf("f%02d: %v %v", i, b, err)
		}
	}
	if got := ck.decrypts.Load() - before; got != n {
		t.Fatalf("opening the prefetched files made %d more Decrypt calls", got-n)
	}
	if p := root.Stats().Prefetched; p != 0 {
		t.Fatalf("%d prefetched keys left after every file was opened", p)
	}
	waitNoLiveKeys(t, root)
}

// TestKernelChecks: every mount has default_permissions but a root
// mount (user ID and effective user ID 0) without AllowOther that asks
// to go without.
func TestKernelChecks(t *testing.T) {
	for _, c := range []struct {
		mo        MountOptions
		uid, euid int
		want      bool
	}{
		{MountOptions{}, 0, 0, true},
		{MountOptions{}, 1000, 1000, true},
		{MountOptions{AllowOther: true}, 0, 0, true},
		{MountOptions{NoDefaultPermissions: true}, 0, 0, false},
		{MountOptions{NoDefaultPermissions: true}, 1000, 1000, true},
		{MountOptions{NoDefaultPermissions: true}, 1000, 0, true}, // set-user-ID root
		{MountOptions{NoDefaultPermissions: true, AllowOther: true}, 0, 0, true},
	} {
		if got := kernelChecks(c.mo, c.uid, c.euid); got != c.want {
			t.Errorf("kernelChecks(%+v, uid %d, euid %d) = %t, want %t", c.mo, c.uid, c.euid, got, c.want)
		}
	}
}
