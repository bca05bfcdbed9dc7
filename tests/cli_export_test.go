package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/keyring/kmstest"
)

// kmsfs cat, export, info and version as a user runs them: offline, on
// volumes written through a mount, with only the volume's keys.

// treeVolume writes a tree with every kind of object kmsfs keeps through
// a mount of v, and returns the plaintext of its regular files.
func treeVolume(t *testing.T, v *volume) map[string][]byte {
	t.Helper()
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	files := map[string][]byte{
		"a":           patterned(1, 3*g.BlockSize+17),
		"empty":       nil,
		"d/e/deep":    patterned(2, 100),
		"d/one-block": patterned(3, g.BlockSize),
	}
	if err := os.MkdirAll(m.path("d", "e"), 0o750); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		writeFile(t, m.path(name), b)
	}
	// A sparse file: a hole of 40 blocks, then 3 bytes.
	sparse := make([]byte, 40*g.BlockSize+3)
	copy(sparse[40*g.BlockSize:], "end")
	f, err := os.Create(m.path("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 40*int64(g.BlockSize)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	files["sparse"] = sparse
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Link(m.path("a"), m.path("d", "hardlink-to-a")))
	files["d/hardlink-to-a"] = files["a"]
	must(os.Symlink("../a", m.path("d", "link")))
	must(syscall.Mkfifo(m.path("fifo"), 0o640))
	must(unix.Setxattr(m.path("a"), "user.note", []byte("kept"), 0))
	must(os.Chmod(m.path("d", "e", "deep"), 0o604))
	old := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	must(os.Chtimes(m.path("a"), old.Add(time.Hour), old))
	must(os.Chtimes(m.path("d", "e"), old, old))
	must(unix.Lutimes(m.path("d", "link"), []unix.Timeval{unix.NsecToTimeval(old.UnixNano()), unix.NsecToTimeval(old.UnixNano())}))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	return files
}

// TestCatLocal: cat finds the volume above a path, or takes it from -C;
// it refuses symlinks, kmsfs's own files and missing files; a damaged
// block stops it, naming the file and offset, and --keep-going writes
// zeros for it.
// TestCatPlantedConfig: a volume config planted in a directory of a
// volume, naming the planter's key, with a file under it beside it: kmsfs
// cat of that file refuses, whether the volume's own config is intact,
// spoiled or removed (this machine trusts the volume's directory).
func TestCatPlantedConfig(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	writeFile(t, m.path("x"), []byte("the volume's"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	evil := newVolume(t, nil)
	em := mountVolume(t, evil)
	writeFile(t, em.path("f"), []byte("ATTACKER CHOSEN PLAINTEXT"))
	if err := em.unmount(); err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(v.Dir, "docs", "inner")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kmsfs.json", "f"} {
		writeFile(t, filepath.Join(inner, name), readFile(t, filepath.Join(evil.Dir, name)))
	}
	cfg := filepath.Join(v.Dir, "kmsfs.json")
	good := readFile(t, cfg)
	for _, tc := range []struct {
		name  string
		spoil func()
	}{
		{"config intact", func() {}},
		{"config spoiled", func() { writeFile(t, cfg, []byte("junk")) }},
		{"config removed", func() { os.Remove(cfg) }},
	} {
		tc.spoil()
		out, errOut, code := run(t, v.Env, "cat", filepath.Join(inner, "f"))
		if code != cliExitVolume || strings.Contains(out, "ATTACKER") || !strings.Contains(errOut, "-C CIPHERDIR") {
			t.Errorf("%s: cat of a file under a planted config: exit %d, stdout %q, stderr %q; want %d, nothing", tc.name, code, out, errOut, cliExitVolume)
		}
		writeFile(t, cfg, good)
	}
	// Named with -C, the volume's own keys are used: the planted file
	// does not open under them.
	if out, _, code := run(t, v.Env, "cat", "-C", v.Dir, "docs/inner/f"); code == 0 || strings.Contains(out, "ATTACKER") {
		t.Errorf("cat -C of the planted file: exit %d, stdout %q", code, out)
	}
}

func TestCatLocal(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	files := treeVolume(t, v)
	for name, want := range files {
		out, errOut, code := run(t, v.Env, "cat", filepath.Join(v.Dir, name))
		if code != 0 || out != string(want) || errOut != "" {
			t.Errorf("cat %s: exit %d, %d bytes (want %d), stderr %q", name, code, len(out), len(want), errOut)
		}
	}
	out, _, code := run(t, v.Env, "cat", "-C", v.Dir, "a", "d/e/deep", filepath.Join(v.Dir, "d/one-block"))
	if code != 0 || out != string(files["a"])+string(files["d/e/deep"])+string(files["d/one-block"]) {
		t.Errorf("cat -C of three files: exit %d, %d bytes", code, len(out))
	}
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{filepath.Join(v.Dir, "d", "link")}, cliExitError, []string{"symlink"}},
		{[]string{filepath.Join(v.Dir, "kmsfs.json")}, cliExitError, []string{"kmsfs's own"}},
		{[]string{filepath.Join(v.Dir, "nope")}, cliExitError, []string{"no such file"}},
		{[]string{filepath.Join(v.Dir, "d")}, cliExitError, []string{"not a regular file"}},
		{[]string{"-C", v.Dir, "../outside"}, cliExitUsage, []string{"not inside"}},
		{[]string{filepath.Join(t.TempDir(), "f")}, cliExitVolume, []string{"not inside a kmsfs volume", "-C"}},
		{nil, cliExitUsage, []string{"FILE"}},
	} {
		out, errOut, code := run(t, v.Env, append([]string{"cat"}, tc.args...)...)
		cliWantFail(t, fmt.Sprintf("cat %q", tc.args), out, errOut, code, tc.code, tc.want...)
	}

	// Damage block 1 of a: cat stops before it.
	g := geometryOf(t, v)
	cipherFile{t: t, path: filepath.Join(v.Dir, "a")}.flip(g.blockOff(1) + 50)
	out, errOut, code := run(t, v.Env, "cat", filepath.Join(v.Dir, "a"))
	if code != cliExitDamage || out != string(files["a"][:g.BlockSize]) {
		t.Errorf("cat of a damaged file: exit %d, %d bytes; want 15 and the %d bytes before block 1", code, len(out), g.BlockSize)
	}
	if line := cliOneLine(t, "cat of a damaged file", errOut); !strings.Contains(line, "block 1 (plaintext bytes 4096-8191)") {
		t.Errorf("stderr %q does not name the block and its bytes", line)
	}
	out, errOut, code = run(t, v.Env, "cat", "--keep-going", filepath.Join(v.Dir, "a"), filepath.Join(v.Dir, "d/e/deep"))
	want := bytes.Clone(files["a"])
	clear(want[g.BlockSize : 2*g.BlockSize])
	want = append(want, files["d/e/deep"]...)
	if code != cliExitDamage || out != string(want) || !strings.Contains(errOut, "block 1 (plaintext bytes 4096-8191) fails authentication: written as zeros") {
		t.Errorf("cat --keep-going: exit %d, %d bytes (want %d)\nstderr: %s", code, len(out), len(want), errOut)
	}
}

// TestExportLocal: export rebuilds the plaintext tree with its metadata,
// hard links, symlinks, FIFOs, xattrs and holes; refuses a DEST inside
// CIPHERDIR or one that is not empty; stops at damage, or with
// --keep-going exports zeros for it and lists it.
func TestExportLocal(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	files := treeVolume(t, v)
	g := geometryOf(t, v)
	dest := filepath.Join(t.TempDir(), "dest")
	out, errOut, code := run(t, v.Env, "export", v.Dir, dest)
	if code != 0 || !strings.Contains(out, "kmsfs export:") || errOut != "" {
		t.Fatalf("export: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	// Before anything reads DEST's files and moves their atimes.
	if src, dst := lstat(t, filepath.Join(v.Dir, "a")), lstat(t, filepath.Join(dest, "a")); src.Atim != dst.Atim {
		t.Errorf("a: atime %v, want %v", dst.Atim, src.Atim)
	}
	for name, want := range files {
		if got := readFile(t, filepath.Join(dest, name)); !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, want %d", name, len(got), len(want))
		}
	}
	var names []string
	filepath.Walk(dest, func(p string, _ os.FileInfo, err error) error {
		if err == nil && p != dest {
			rel, _ := filepath.Rel(dest, p)
			names = append(names, rel)
		}
		return nil
	})
	if want := []string{"a", "d", "d/e", "d/e/deep", "d/hardlink-to-a", "d/link", "d/one-block", "empty", "fifo", "sparse"}; strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("DEST holds %q, want %q (nothing of kmsfs's own)", names, want)
	}
	// Metadata: as the stored objects have it.
	for _, name := range []string{"a", "d", "d/e", "d/e/deep", "d/link", "fifo", "sparse", ""} {
		src, dst := lstat(t, filepath.Join(v.Dir, name)), lstat(t, filepath.Join(dest, name))
		if src.Mode != dst.Mode || src.Uid != dst.Uid || src.Gid != dst.Gid || src.Mtim != dst.Mtim {
			t.Errorf("%q: mode %o uid %d gid %d mtime %v; want %o %d %d %v", name, dst.Mode, dst.Uid, dst.Gid, dst.Mtim, src.Mode, src.Uid, src.Gid, src.Mtim)
		}
	}
	if to, err := os.Readlink(filepath.Join(dest, "d", "link")); err != nil || to != "../a" {
		t.Errorf("d/link -> %q, %v", to, err)
	}
	if a, l := lstat(t, filepath.Join(dest, "a")), lstat(t, filepath.Join(dest, "d", "hardlink-to-a")); a.Ino != l.Ino || a.Nlink != 2 {
		t.Errorf("a and d/hardlink-to-a: inodes %d and %d, %d links; want one inode, 2 links", a.Ino, l.Ino, a.Nlink)
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(dest, "a"), "user.note", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("a's xattr user.note: %q, %v", buf[:n], err)
	}
	if st := lstat(t, filepath.Join(dest, "sparse")); st.Blocks*512 > 4*int64(g.BlockSize) {
		t.Errorf("sparse: %d bytes allocated for a 40-block hole and 3 bytes: not sparse", st.Blocks*512)
	}

	// Set-ID bits and trusted.*/security.* xattrs put on a stored file
	// (CIPHERDIR's metadata is not authenticated) grant nothing in DEST.
	if err := unix.Chmod(filepath.Join(v.Dir, "a"), 0o6755); err != nil {
		t.Fatal(err)
	}
	planted := unix.Setxattr(filepath.Join(v.Dir, "a"), "trusted.overlay.redirect", []byte("/etc"), 0)
	destP := filepath.Join(t.TempDir(), "dest")
	out, errOut, code = run(t, v.Env, "export", v.Dir, destP)
	if code != 0 || !strings.Contains(errOut, "left out 1 set-user-ID") {
		t.Errorf("export of a set-ID file: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if st := lstat(t, filepath.Join(destP, "a")); st.Mode&0o7777 != 0o755 {
		t.Errorf("exported a: mode %o, want 755 (no set-ID bits)", st.Mode&0o7777)
	}
	if planted == nil {
		if _, err := unix.Getxattr(filepath.Join(destP, "a"), "trusted.overlay.redirect", buf); err == nil {
			t.Error("exported a has the trusted.* xattr planted in CIPHERDIR")
		}
	}

	for _, tc := range []struct {
		name, dest string
		want       string
	}{
		{"DEST inside CIPHERDIR", filepath.Join(v.Dir, "d", "x"), "inside CIPHERDIR"},
		{"DEST not empty", dest, "not empty"},
	} {
		out, errOut, code := run(t, v.Env, "export", v.Dir, tc.dest)
		cliWantFail(t, tc.name, out, errOut, code, cliExitUsage, tc.want)
	}
	if _, err := os.Stat(filepath.Join(v.Dir, "d", "x")); !os.IsNotExist(err) {
		t.Errorf("a refused export made %s", filepath.Join(v.Dir, "d", "x"))
	}
	t.Run("DEST in CIPHERDIR through a bind mount", func(t *testing.T) {
		skipUnlessRoot(t, "a bind mount")
		bind := t.TempDir()
		if err := unix.Mount(filepath.Join(v.Dir, "d"), bind, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(bind, unix.MNT_DETACH)
		out, errOut, code := run(t, v.Env, "export", v.Dir, filepath.Join(bind, "x"))
		cliWantFail(t, "DEST through a bind mount", out, errOut, code, cliExitUsage, "through a bind mount")
		if _, err := os.Stat(filepath.Join(v.Dir, "d", "x")); !os.IsNotExist(err) {
			t.Errorf("a refused export made %s", filepath.Join(v.Dir, "d", "x"))
		}
	})

	// Damage: block 2 of a, and the header of d/e/deep.
	cipherFile{t: t, path: filepath.Join(v.Dir, "a")}.flip(g.blockOff(2) + 9)
	cipherFile{t: t, path: filepath.Join(v.Dir, "d", "e", "deep")}.flip(60)
	dest2 := filepath.Join(t.TempDir(), "dest")
	out, errOut, code = run(t, v.Env, "export", v.Dir, dest2)
	if code != cliExitDamage || !strings.Contains(errOut, "a: block 2 (plaintext bytes 8192-12287) fails authentication") {
		t.Errorf("export of a damaged volume: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dest2, "a")); !os.IsNotExist(err) {
		t.Errorf("the damaged file was left in DEST: %v", err)
	}
	dest3 := filepath.Join(t.TempDir(), "dest")
	out, errOut, code = run(t, v.Env, "export", "--keep-going", v.Dir, dest3)
	if code != cliExitDamage {
		t.Errorf("export --keep-going: exit %d, want 15\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"a: block 2 (plaintext bytes 8192-12287) fails authentication: exported as zeros", "d/e/deep: not exported"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("export --keep-going: stderr does not say %q:\n%s", want, errOut)
		}
	}
	want := bytes.Clone(files["a"])
	clear(want[2*g.BlockSize : 3*g.BlockSize])
	if got := readFile(t, filepath.Join(dest3, "a")); !bytes.Equal(got, want) {
		t.Errorf("a with a damaged block: %d bytes, not the rest with zeros for it", len(got))
	}
	if _, err := os.Stat(filepath.Join(dest3, "d", "e", "deep")); !os.IsNotExist(err) {
		t.Errorf("a file that cannot be decrypted was exported: %v", err)
	}
	if got := readFile(t, filepath.Join(dest3, "d", "one-block")); !bytes.Equal(got, files["d/one-block"]) {
		t.Error("a sound file beside the damaged ones did not export")
	}
}

// TestExportKMSNewMachine: a backup of a local-kms volume is exported on
// a machine that never saw it (no trusted copy of kmsfs.json): the KMS
// endpoint comes from the host, one Decrypt per file. A kmsfs.json that
// differs from this machine's trusted copy is refused unless
// --trust-config, which leaves the copy alone.
func TestExportKMSNewMachine(t *testing.T) {
	t.Parallel()
	env := newKMSEnv(t)
	k := env.mount(t, "--key-pool", "0")
	const n = 10
	for i := range n {
		writeFile(t, k.path(fmt.Sprintf("f%d", i)), patterned(i, 3000*(i+1)))
	}
	if err := k.unmount(); err != nil {
		t.Fatal(err)
	}
	// No trusted copy, and no KMS endpoint from the environment.
	newHost := append(env.srv.Env(), "XDG_CONFIG_HOME="+t.TempDir(), "AWS_ENDPOINT_URL_KMS=")
	out, errOut, code := run(t, newHost, "export", env.vol.Dir, filepath.Join(t.TempDir(), "d"))
	cliWantFail(t, "export on a new machine without --kms-endpoint", out, errOut, code, cliExitVolume, "does not trust", "--kms-endpoint")

	env.proxy.Reset()
	dest := filepath.Join(t.TempDir(), "d")
	out, errOut, code = run(t, newHost, "export", "--kms-endpoint", env.proxy.Endpoint(), env.vol.Dir, dest)
	if code != 0 || !strings.Contains(errOut, "no trusted copy") || !strings.Contains(errOut, kmstest.KeyAARN) {
		t.Fatalf("export on a new machine: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	for i := range n {
		if got := readFile(t, filepath.Join(dest, fmt.Sprintf("f%d", i))); !bytes.Equal(got, patterned(i, 3000*(i+1))) {
			t.Errorf("f%d differs", i)
		}
	}
	if d, all := env.proxy.Count("Decrypt"), env.proxy.Total(); d != n || all != n {
		t.Errorf("export of %d files: %d Decrypt, %d requests; want %d, %d", n, d, all, n, n)
	}
	out, _, code = run(t, newHost, "cat", "--kms-endpoint", env.proxy.Endpoint(), filepath.Join(env.vol.Dir, "f3"))
	if code != 0 || out != string(patterned(3, 12000)) {
		t.Errorf("cat on a new machine: exit %d, %d bytes", code, len(out))
	}

	// This machine trusts the config; a changed one is refused.
	cfgPath := filepath.Join(env.vol.Dir, "kmsfs.json")
	orig := readFile(t, cfgPath)
	var cfg map[string]any
	if err := json.Unmarshal(orig, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["keyrings"] = append(cfg["keyrings"].([]any), map[string]any{"kind": "aws-kms", "key_id": kmstest.KeyBARN, "key_arn": kmstest.KeyBARN, "region": kmstest.Region})
	changed, _ := json.Marshal(cfg)
	writeFile(t, cfgPath, changed)
	out, errOut, code = run(t, env.vol.Env, "cat", filepath.Join(env.vol.Dir, "f1"))
	cliWantFail(t, "cat with a changed kmsfs.json", out, errOut, code, cliExitVolume, "differs", "--trust-config")
	out, _, code = run(t, env.vol.Env, "cat", "--trust-config", filepath.Join(env.vol.Dir, "f1"))
	if code != 0 || out != string(patterned(1, 6000)) {
		t.Errorf("cat --trust-config: exit %d, %d bytes", code, len(out))
	}
	var info infoJSON
	readInfo(t, env.vol, &info)
	if info.TrustedCopy != "differs" {
		t.Errorf("info after cat --trust-config: trusted_copy %q, want differs (the copy is not changed)", info.TrustedCopy)
	}
	writeFile(t, cfgPath, orig)
}

// runCapped runs kmsfs like cliRunBounded, but keeps only the first MiB
// of stdout and counts the rest: a command that writes without bound
// neither fills memory nor runs past timeout (it is killed, and the test
// fails).
func runCapped(t *testing.T, timeout time.Duration, env []string, args ...string) (string, int64, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, kmsfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out := &cappedWriter{limit: 1 << 20}
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kmsfs %v did not finish within %v (%d bytes on stdout)\nstderr: %s", args, timeout, out.n, errb.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run kmsfs %v: %v", args, err)
	}
	return out.buf.String(), out.n, errb.String(), code
}

type cappedWriter struct {
	buf   bytes.Buffer
	n     int64
	limit int
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if room := w.limit - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// TestOfflineHugeUnauthenticatedSize: a genuine header copied in front of
// truncate -s 8T is a file of 8 TiB of holes whose final block does not
// authenticate. cat fails at once, exit 15, with no byte written (before,
// it wrote terabytes of zeros first); --keep-going skips it and goes on;
// export makes no file for it (not even a sparse one) and fsck reports
// its final block, both within a bound.
func TestOfflineHugeUnauthenticatedSize(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	g := geometryOf(t, v)
	m := mountVolume(t, v)
	a := patterned(7, 2*g.BlockSize+5)
	writeFile(t, m.path("a"), a)
	tail := patterned(9, 3*g.BlockSize+7)
	writeFile(t, m.path("tail"), tail)
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	// A genuine file whose final block is damaged: --keep-going
	// exports it up to the end of the last block that authenticates.
	stored := readFile(t, filepath.Join(v.Dir, "tail"))
	stored[len(stored)-1] ^= 1
	writeFile(t, filepath.Join(v.Dir, "tail"), stored)
	big := filepath.Join(v.Dir, "big")
	writeFile(t, big, readFile(t, filepath.Join(v.Dir, "a"))[:g.HeaderSize])
	if err := os.Truncate(big, 8<<40); err != nil {
		skipOrFail(t, "this filesystem holds no 8 TiB sparse file: %v", err)
	}

	_, n, errOut, code := runCapped(t, time.Minute, v.Env, "cat", big)
	if code != cliExitDamage || n != 0 || !strings.Contains(errOut, "final block") {
		t.Errorf("cat of a header before 8 TiB of holes: exit %d, %d bytes written, stderr %q; want %d, none, naming the final block", code, n, errOut, cliExitDamage)
	}
	cliOneLine(t, "cat of the 8 TiB file", errOut)
	out, n, errOut, code := runCapped(t, time.Minute, v.Env, "cat", "--keep-going", big, filepath.Join(v.Dir, "a"))
	if code != cliExitDamage || n != int64(len(a)) || out != string(a) || !strings.Contains(errOut, "big: its final block") {
		t.Errorf("cat --keep-going of it and a: exit %d, %d bytes (want %d: a's alone), stderr %q", code, n, len(a), errOut)
	}

	dest := filepath.Join(t.TempDir(), "dest")
	_, _, errOut, code = runCapped(t, time.Minute, v.Env, "export", v.Dir, dest)
	if code != cliExitDamage || !strings.Contains(errOut, "final block") {
		t.Errorf("export: exit %d, stderr %q; want %d naming the final block", code, errOut, cliExitDamage)
	}
	dest = filepath.Join(t.TempDir(), "dest")
	_, _, errOut, code = runCapped(t, time.Minute, v.Env, "export", "--keep-going", v.Dir, dest)
	if code != cliExitDamage || !strings.Contains(errOut, "big: its final block") {
		t.Errorf("export --keep-going: exit %d, stderr %q; want %d naming big's final block", code, errOut, cliExitDamage)
	}
	if st, err := os.Lstat(filepath.Join(dest, "big")); err == nil {
		t.Errorf("export --keep-going made DEST/big, %d bytes", st.Size())
	}
	if got := readFile(t, filepath.Join(dest, "a")); !bytes.Equal(got, a) {
		t.Errorf("export --keep-going: a has %d bytes, want %d", len(got), len(a))
	}
	if got := readFile(t, filepath.Join(dest, "tail")); !bytes.Equal(got, tail[:3*g.BlockSize]) || !strings.Contains(errOut, "tail: its final block") || !strings.Contains(errOut, "exported up to byte") {
		t.Errorf("export --keep-going: tail, its final block damaged, has %d bytes (want its first %d), stderr %q", len(got), 3*g.BlockSize, errOut)
	}
	out, _, errOut, code = runCapped(t, time.Minute, v.Env, "fsck", "--json", v.Dir)
	if code != cliExitDamage || !strings.Contains(out, `"path": "big"`) {
		t.Errorf("fsck: exit %d, want %d reporting big\n%s%s", code, cliExitDamage, out, errOut)
	}
}

// TestExportRefusesForeignDest: an existing DEST that another user owns,
// or that group or others may write, is refused before anything is
// written: its owner could swap a subdirectory for a symlink during the
// run and have files land outside DEST. A DEST export makes, or an empty
// one of this user's with mode 0755, is fine.
func TestExportRefusesForeignDest(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	writeFile(t, m.path("f"), []byte("x"))
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o1777); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, v.Env, "export", v.Dir, open)
	cliWantFail(t, "export into a world-writable DEST", out, errOut, code, cliExitUsage, "writable by group or others", "new directory")
	if ents, _ := os.ReadDir(open); len(ents) != 0 {
		t.Errorf("the refused export wrote %d entries", len(ents))
	}
	t.Run("owned by another user", func(t *testing.T) {
		skipUnlessRoot(t, "chown to another user")
		other := filepath.Join(t.TempDir(), "other")
		if err := os.Mkdir(other, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := run(t, v.Env, "export", v.Dir, other)
		cliWantFail(t, "export into another user's DEST", out, errOut, code, cliExitUsage, "owned by uid 65534", "new directory")
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(t.TempDir(), link); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(link, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		out, errOut, code = run(t, v.Env, "export", v.Dir, link)
		cliWantFail(t, "export through another user's symlink", out, errOut, code, cliExitUsage, "symlink owned by uid 65534")
	})
	mine := filepath.Join(t.TempDir(), "mine")
	if err := os.Mkdir(mine, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run(t, v.Env, "export", v.Dir, mine); code != cliExitOK {
		t.Errorf("export into an empty DEST of this user's, mode 0755: exit %d\n%s%s", code, out, errOut)
	}
	made := filepath.Join(t.TempDir(), "new", "dest")
	if out, errOut, code := run(t, v.Env, "export", v.Dir, made); code != cliExitOK || string(readFile(t, filepath.Join(made, "f"))) != "x" {
		t.Errorf("export into a new DEST: exit %d\n%s%s", code, out, errOut)
	}
}
