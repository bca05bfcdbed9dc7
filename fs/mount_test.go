package fs

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/blockcipher"
	"github.com/kmsfs/kmsfs/keyring"
)

// testVolume makes a CIPHERDIR with a config for the local keyring.
func testVolume(t testing.TB, blockSize int) (string, *Config, *keyring.Local) {
	t.Helper()
	key := make([]byte, keyring.LocalKeyFileSize)
	rand.Read(key)
	kr, err := keyring.NewLocalFromBytes(key)
	if err != nil {
		t.Fatal(err)
	}
	vid := blockcipher.NewID()
	cfg := &Config{
		FormatVersion: ConfigVersion,
		VolumeID:      hex.EncodeToString(vid[:]),
		BlockSize:     blockSize,
		HeaderSize:    512,
		Keyrings:      []KeyringSpec{{Kind: keyring.KindLocal, KeyID: kr.KeyID(), KeyFile: "/nonexistent/in-memory"}},
		Features:      []string{},
	}
	dir := t.TempDir()
	if err := WriteConfig(dir, cfg); err != nil {
		t.Fatal(err)
	}
	return dir, cfg, kr
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
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("/dev/fuse is not usable: %v", err)
		}
		t.Skipf("/dev/fuse is not usable: %v", err)
	} else {
		f.Close()
	}
	if opts.Config == nil {
		dir, cfg, kr := testVolume(t, 4096)
		opts.CipherDir, opts.Config = dir, cfg
		if opts.Keyring == nil {
			opts.Keyring = kr
		}
	}
	rec := &warnRecorder{}
	opts.Logger = slog.New(slog.NewTextHandler(rec, &slog.HandlerOptions{Level: slog.LevelWarn}))
	root, err := NewRoot(opts)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(mnt, root, MountOptions{})
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
