package tests

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// TestKeyStateRotatedKey: files written under a KMS key before its
// rotation still open after it (KMS keeps the old backing key), and new
// files use the new backing key. The volume moves from a local-kms whose
// key B has one backing key to one where it has two, as a real key does
// when KMS rotates it.
func TestKeyStateRotatedKey(t *testing.T) {
	t.Parallel()
	before := kmstest.StartBeforeRotation(t)
	base := t.TempDir()
	v := newVolumeIn(t, base, append(before.Env(), "XDG_CONFIG_HOME="+filepath.Join(base, "config")), "--kms-key", kmstest.KeyBARN, "--kms-endpoint", before.Endpoint())
	m := mountVolume(t, v)
	old := map[string][]byte{}
	for i := 0; i < 4; i++ {
		b := bytes.Repeat([]byte{byte('a' + i)}, 5000*(i+1))
		old[fmt.Sprintf("old%d", i)] = b
		writeFile(t, m.path(fmt.Sprintf("old%d", i)), b)
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}

	after := kmstest.Start(t)
	v.Env = append(v.Env, after.Env()...)
	m2 := mountVolume(t, v, "--kms-endpoint", after.Endpoint())
	for name, want := range old {
		if got := readFile(t, m2.path(name)); !bytes.Equal(got, want) {
			t.Fatalf("%s, written before the rotation, reads differently after it", name)
		}
	}
	writeFile(t, m2.path("new"), []byte("after the rotation"))
	if got := readFile(t, m2.path("new")); string(got) != "after the rotation" {
		t.Fatalf("new file reads %q", got)
	}
}

// TestKeyStateRefusals: a disabled key, a key pending deletion and revoked
// access give EACCES on open, one warning naming the file and the reason,
// and leave every stored byte as it was.
func TestKeyStateRefusals(t *testing.T) {
	t.Parallel()
	srv := kmstest.Start(t)
	proxy := kmstest.NewProxy(t, srv.Endpoint())
	base := t.TempDir()
	v := newVolumeIn(t, base, append(srv.Env(), "XDG_CONFIG_HOME="+filepath.Join(base, "config")), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", proxy.Endpoint())
	m := mountVolume(t, v, "--key-pool", "0", "--metrics-addr", "127.0.0.1:0")
	m.AllowWarnings = true
	writeFile(t, m.path("f"), bytes.Repeat([]byte("kept "), 2000))

	cases := []struct {
		name   string
		break_ func()
		fix    func()
		reason string
	}{
		{"disabled", func() { srv.DisableKey(t, kmstest.KeyAID) }, func() { srv.EnableKey(t, kmstest.KeyAID) }, "disabled"},
		{"access revoked", func() { proxy.SetFault(kmstest.Fault{ErrorCode: "AccessDeniedException"}) }, proxy.Heal, "access denied"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			waitScrapedLiveKeys(t, m, 0) // the next open must unwrap
			before := storedDigest(t, v.Dir)
			tc.break_()
			_, err := os.ReadFile(m.path("f"))
			if !errors.Is(err, syscall.EACCES) {
				t.Errorf("read with the key %s: %v, want EACCES", tc.name, err)
			}
			if err := os.WriteFile(m.path("f"), []byte("x"), 0o644); !errors.Is(err, syscall.EACCES) {
				t.Errorf("write with the key %s: %v, want EACCES", tc.name, err)
			}
			if after := storedDigest(t, v.Dir); after != before {
				t.Errorf("CIPHERDIR changed while the key was %s", tc.name)
			}
			if !logEventually(m, func(log string) bool { return strings.Contains(log, "path=f") && strings.Contains(log, tc.reason) }) {
				t.Errorf("no warning naming f and %q in the log", tc.reason)
			}
			tc.fix()
			if got := readFile(t, m.path("f")); !bytes.Equal(got, bytes.Repeat([]byte("kept "), 2000)) {
				t.Errorf("after the key came back the file reads differently")
			}
		})
	}
}

// storedDigest hashes every stored file's path, size and bytes.
func storedDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestKMSAddedLatency: with 10 ms and 200 ms added to every KMS call, files
// are written and read back correctly, each first write and first open
// costs exactly one KMS call (no retry: the latency stays far below the
// SDK's per-attempt timeout), and metadata makes none. Counted at the
// proxy, not timed: on a loaded machine a time says little.
func TestKMSAddedLatency(t *testing.T) {
	t.Parallel()
	for _, lat := range []time.Duration{10 * time.Millisecond, 200 * time.Millisecond} {
		t.Run(lat.String(), func(t *testing.T) {
			srv := kmstest.Start(t)
			proxy := kmstest.NewProxy(t, srv.Endpoint())
			base := t.TempDir()
			v := newVolumeIn(t, base, append(srv.Env(), "XDG_CONFIG_HOME="+filepath.Join(base, "config")), "--kms-key", kmstest.KeyAARN, "--kms-endpoint", proxy.Endpoint())
			m := mountVolume(t, v, "--key-pool", "0", "--metrics-addr", "127.0.0.1:0")
			proxy.SetFault(kmstest.Fault{Latency: lat})
			proxy.Reset()
			const n = 4
			start := time.Now()
			for i := 0; i < n; i++ {
				writeFile(t, m.path(fmt.Sprintf("f%d", i)), bytes.Repeat([]byte{byte(i)}, 9000))
			}
			// A lower bound cannot fail on a slow machine: it shows the
			// latency was on the writes' path.
			if el := time.Since(start); el < n*lat {
				t.Errorf("%d first writes took %v, less than %d KMS calls of %v: the latency did not apply", n, el, n, lat)
			}
			if g, all := proxy.Count("GenerateDataKey"), proxy.Total(); g != n || all != n {
				t.Errorf("%d first writes: %d GenerateDataKey, %d KMS requests in all; want %d and %d", n, g, all, n, n)
			}
			waitScrapedLiveKeys(t, m, 0)
			proxy.Reset()
			if _, err := os.ReadDir(m.Dir); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if _, err := os.Stat(m.path(fmt.Sprintf("f%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			if all := proxy.Total(); all != 0 {
				t.Errorf("readdir and stat made %d KMS requests, want 0", all)
			}
			for i := 0; i < n; i++ {
				if got := readFile(t, m.path(fmt.Sprintf("f%d", i))); !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, 9000)) {
					t.Fatalf("f%d reads differently", i)
				}
			}
			if d, all := proxy.Count("Decrypt"), proxy.Total(); d != n || all != n {
				t.Errorf("%d first opens: %d Decrypt, %d KMS requests in all; want %d and %d", n, d, all, n, n)
			}
		})
	}
}
