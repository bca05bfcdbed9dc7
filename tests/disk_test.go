package tests

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// smallTmpfs mounts a tmpfs of size bytes (needs root) and unmounts it in
// Cleanup.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mount a %s tmpfs (the disk-full tests need root): %v", size, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// TestDiskFull: on a full backing filesystem, writes fail with ENOSPC (not
// EIO), files written before keep their content, a file whose extension
// was refused keeps its old content and size, the mount keeps serving, and
// after freeing space writes work again.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	base := smallTmpfs(t, "8m")
	v := newVolumeIn(t, base, nil)
	m := mountVolume(t, v, "--key-pool", "0")
	m.AllowWarnings = true // ENOSPC is logged as a warning, as it should be

	keep := bytes.Repeat([]byte("keep me "), 100000) // 800 KB
	writeFile(t, m.path("keep"), keep)
	partial := bytes.Repeat([]byte("p"), 5000) // ends inside a block
	writeFile(t, m.path("partial"), partial)
	aligned := bytes.Repeat([]byte("a"), 8192) // ends with a full block: appends reserve nothing
	writeFile(t, m.path("aligned"), aligned)

	// Fill the disk.
	fill, err := os.Create(m.path("fill"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xab}, 64<<10)
	var werr error
	for i := 0; i < 1000 && werr == nil; i++ {
		_, werr = fill.Write(chunk)
	}
	fill.Close()
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the disk ended with %v, want ENOSPC", werr)
	}

	// Extending a file on a full disk: ENOSPC, and the file is unchanged.
	// The kernel may have written a first piece before the refusal (a
	// short write): the old bytes must be intact and the rest the new ones.
	refusedAppend := func(name string, old []byte) []byte {
		t.Helper()
		f, err := os.OpenFile(m.path(name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Write(bytes.Repeat([]byte("x"), 256<<10))
		f.Close()
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("%s: append on a full disk: %v, want ENOSPC", name, err)
		}
		got := readFile(t, m.path(name))
		if !bytes.HasPrefix(got, old) || strings.Trim(string(got[len(old):]), "x") != "" || len(got) >= len(old)+256<<10 {
			t.Fatalf("%s: after a refused append it has %d bytes, not its %d old ones followed by some of the new", name, len(got), len(old))
		}
		return got
	}
	partial = refusedAppend("partial", partial)
	refusedAppend("aligned", aligned)
	if got := readFile(t, m.path("keep")); !bytes.Equal(got, keep) {
		t.Fatal("keep changed while the disk was full")
	}
	// A new file is empty until written (it needs no space); writing it
	// fails with ENOSPC and leaves it empty.
	nf, err := os.Create(m.path("new"))
	if err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("create on a full disk: %v, want ENOSPC or success", err)
	}
	if nf != nil {
		if _, err := nf.Write(bytes.Repeat([]byte("n"), 64<<10)); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("writing a new file on a full disk: %v, want ENOSPC", err)
		}
		nf.Close()
	}
	ents, _ := os.ReadDir(v.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".kmsfs-tmp-") {
			t.Fatalf("a temporary file was left in CIPHERDIR: %s", e.Name())
		}
	}
	// The mount still serves.
	if _, err := os.Stat(m.path("keep")); err != nil {
		t.Fatal(err)
	}
	// Free space: writes work again.
	if err := os.Remove(m.path("fill")); err != nil {
		t.Fatal(err)
	}
	more := bytes.Repeat([]byte("y"), 300<<10)
	f, err := os.OpenFile(m.path("partial"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(more); err != nil {
		t.Fatalf("append after freeing space: %v", err)
	}
	f.Close()
	if got := readFile(t, m.path("partial")); !bytes.Equal(got, append(bytes.Clone(partial), more...)) {
		t.Fatal("partial: wrong content after freeing space")
	}
	if !strings.Contains(m.log.String(), "no space left on device") {
		t.Error("ENOSPC was not logged")
	}
}

// smallExt4 makes an ext4 filesystem of size bytes in a file and
// loop-mounts it (needs root and a loop device); Cleanup unmounts it.
func smallExt4(t *testing.T, size int64) string {
	t.Helper()
	requireTools(t, "mkfs.ext4", "mount", "umount")
	img := filepath.Join(t.TempDir(), "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("loop-mount an ext4 image (KMSFS_REQUIRE_FUSE=1: CI must run this test): %v\n%s", err, out)
		}
		t.Skipf("cannot loop-mount an ext4 image (needs root and a loop device): %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestDiskFullExt4: on ext4 an append reserves no space first (it relies
// on ext4 taking the space at write time, blockfile.File.extend). Many
// files are appended to in pieces of assorted sizes until the disk is full
// and 40 writes have been refused, then once more each. Every file then
// holds exactly the bytes whose writes succeeded, before and after a
// remount.
func TestDiskFullExt4(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	base := smallExt4(t, 32<<20)
	v := newVolumeIn(t, base, nil)
	m := mountVolume(t, v, "--key-pool", "0")
	m.AllowWarnings = true // ENOSPC is logged as a warning

	rng := rand.New(rand.NewPCG(1, 1))
	pieces := []int{10240, 4096, 5000, 100, 8192}
	acked := map[string][]byte{}
	refused := 0
	for i := 0; refused < 40; i++ {
		if i == 100000 {
			t.Fatal("the disk never filled")
		}
		name := fmt.Sprintf("f%05d", i)
		f, err := os.OpenFile(m.path(name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if errors.Is(err, syscall.ENOSPC) {
			refused++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var data []byte
		for c := 1 + rng.IntN(12); c > 0; c-- {
			piece := bytes.Repeat([]byte{byte(rng.IntN(256))}, pieces[rng.IntN(len(pieces))])
			n, err := f.Write(piece)
			data = append(data, piece[:n]...)
			if err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("%s: %v, want ENOSPC", name, err)
				}
				refused++
				break
			}
		}
		f.Close()
		acked[name] = data
	}
	// On the full disk, a short append to every file, long enough to
	// cross into a page the stored file does not have yet, which only the
	// zero fill before the final block's rewrite asks for.
	full := 0
	for name, data := range acked {
		f, err := os.OpenFile(m.path(name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(filepath.Join(v.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		piece := bytes.Repeat([]byte{0x5a}, int(4096-st.Size()%4096)+1+rng.IntN(400))
		n, err := f.Write(piece)
		f.Close()
		acked[name] = append(data, piece[:n]...)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("%s: %v, want ENOSPC", name, err)
			}
			full++
		}
	}
	if full < len(acked)/2 {
		t.Fatalf("only %d of %d appends on the full disk were refused", full, len(acked))
	}
	check := func(m *mount, when string) {
		t.Helper()
		for name, want := range acked {
			if got := readFile(t, m.path(name)); !bytes.Equal(got, want) {
				t.Fatalf("%s %s: %d bytes that differ from the %d written", name, when, len(got), len(want))
			}
		}
	}
	check(m, "on the full disk")
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	check(mountVolume(t, v), "after a remount")
	t.Logf("%d files, %d writes refused while filling and %d of the appends after, every file as written", len(acked), refused, full)
}

// TestReadOnlyBacking: CIPHERDIR on a read-only mount: reads work, every
// change fails with EROFS.
func TestReadOnlyBacking(t *testing.T) {
	t.Parallel()
	requireFUSE(t)
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	writeFile(t, m.path("a"), []byte("readable"))
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.unmount(); err != nil {
		t.Fatal(err)
	}
	// A read-only bind mount of the volume.
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(v.Dir, ro, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(ro, syscall.MNT_DETACH) })
	if err := syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	rov := &volume{Dir: ro, Env: v.Env}
	m2 := mountVolume(t, rov)
	if got := readFile(t, m2.path("a")); string(got) != "readable" {
		t.Fatalf("read %q", got)
	}
	for name, op := range map[string]func() error{
		"create":   func() error { _, err := os.Create(m2.path("b")); return err },
		"write":    func() error { return os.WriteFile(m2.path("a"), []byte("x"), 0o644) },
		"truncate": func() error { return os.Truncate(m2.path("a"), 1) },
		"mkdir":    func() error { return os.Mkdir(m2.path("e"), 0o755) },
		"unlink":   func() error { return os.Remove(m2.path("a")) },
		"rename":   func() error { return os.Rename(m2.path("a"), m2.path("c")) },
		"chmod":    func() error { return os.Chmod(m2.path("a"), 0o600) },
	} {
		if err := op(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a read-only CIPHERDIR: %v, want EROFS", name, err)
		}
	}
	if got := readFile(t, m2.path("a")); string(got) != "readable" {
		t.Fatalf("read after refused changes: %q", got)
	}
}
