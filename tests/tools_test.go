package tests

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Real tools through the mount: cp, tar, rsync, git, sqlite3, mv. Each
// result is compared with the source tree or with what the same tool
// leaves on the local disk.

// requireTools fails (CI must have them) or skips when a tool is missing.
func requireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
				t.Fatalf("%s is not installed and KMSFS_REQUIRE_FUSE=1: CI must have it (apt-get install %s)", n, n)
			}
			t.Skipf("%s is not installed", n)
		}
	}
}

// tool runs a command in dir and fails the test when it fails.
func tool(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := toolErr(dir, env, "", name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func toolErr(dir string, env []string, stdin, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// genTree writes a tree with a fixed seed: nested directories, files of
// sizes around block edges and up to 700 KiB, empty files, odd modes
// (set-uid, set-gid, sticky, 0000, read-only directories), hard links,
// symlinks (relative, absolute, dangling, long), a FIFO (named *.pipe),
// foreign owners, user xattrs, nanosecond mtimes, odd names; plus a "doc"
// tree of about docBytes of text (genTextTree).
func genTree(t testing.TB, dir string, seed uint64, nfiles int, docBytes int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0x74726565))
	data := rand.NewChaCha8([32]byte{byte(seed), 't', 'r', 'e', 'e'})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(dir, 0o755))
	dirs := []string{"."}
	for i := 0; i < 25; i++ {
		d := filepath.Join(dirs[rng.IntN(len(dirs))], fmt.Sprintf("d%02d", i))
		if i%7 == 3 {
			d += " with space"
		}
		must(os.Mkdir(filepath.Join(dir, d), 0o755))
		dirs = append(dirs, d)
	}
	names := []string{"plain", "naïve-ünïcode", "-leading-dash", ".hidden", "semi;colon", "new\nline", "x.tar.gz"}
	var files []string
	for i := 0; i < nfiles; i++ {
		name := fmt.Sprintf("f%03d-%s", i, names[i%len(names)])
		p := filepath.Join(dirs[rng.IntN(len(dirs))], name)
		var size int
		switch x := rng.IntN(100); {
		case i == 7: // a big file in every tree (toolsRsync changes one)
			size = 300 << 10
		case x < 10:
			size = 0
		case x < 20:
			size = []int{1, 4095, 4096, 4097, 8192, 12289}[rng.IntN(6)]
		case x < 60:
			size = rng.IntN(2048)
		case x < 95:
			size = rng.IntN(64 << 10)
		default:
			size = rng.IntN(700 << 10)
		}
		b := make([]byte, size)
		if i%2 == 0 {
			data.Read(b)
		} else {
			copy(b, bytes.Repeat([]byte(fmt.Sprintf("line %d of a compressible file\n", i)), size/30+1))
		}
		must(os.WriteFile(filepath.Join(dir, p), b, 0o644))
		files = append(files, p)
	}
	fileModes := []os.FileMode{0o644, 0o600, 0o755, 0o444, 0, 0o640, 0o755 | os.ModeSetuid, 0o755 | os.ModeSetgid, 0o700}
	for i, f := range files {
		must(os.Chmod(filepath.Join(dir, f), fileModes[i%len(fileModes)]))
	}
	for i := 0; i < 8; i++ {
		src := files[rng.IntN(len(files))]
		must(os.Link(filepath.Join(dir, src), filepath.Join(dir, dirs[rng.IntN(len(dirs))], fmt.Sprintf("hardlink%d", i))))
	}
	links := map[string]string{
		"link-rel":      filepath.Join("..", files[1]),
		"link-dir":      "..",
		"link-dangling": "does/not/exist",
		"link-abs":      "/etc/hostname",
		"link-long":     strings.Repeat("long/", 400) + "end",
	}
	var linkPaths []string
	for _, name := range []string{"link-rel", "link-dir", "link-dangling", "link-abs", "link-long"} {
		p := filepath.Join(dir, dirs[1+rng.IntN(len(dirs)-1)], name)
		must(os.Symlink(links[name], p))
		linkPaths = append(linkPaths, p)
	}
	must(unix.Mkfifo(filepath.Join(dir, dirs[2], "fifo.pipe"), 0o640))
	must(os.Lchown(filepath.Join(dir, files[3]), 1234, 5678))
	must(os.Lchown(filepath.Join(dir, files[4]), 0, 5678))
	must(os.Lchown(filepath.Join(dir, dirs[3]), 4321, 8765))
	must(os.Lchown(linkPaths[0], 4321, 8765))
	must(os.Lchown(linkPaths[2], 0, 8765))
	must(unix.Setxattr(filepath.Join(dir, files[5]), "user.kmsfs.test", []byte("file xattr"), 0))
	must(unix.Setxattr(filepath.Join(dir, files[6]), "user.empty", nil, 0))
	must(unix.Setxattr(filepath.Join(dir, dirs[4]), "user.kmsfs.dir", []byte("dir xattr"), 0))

	genTextTree(t, filepath.Join(dir, "doc"), rng, docBytes)

	// Directory modes and all mtimes last, deepest first.
	var all []string
	must(filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		all = append(all, p)
		return err
	}))
	sort.Sort(sort.Reverse(sort.StringSlice(all)))
	dirModes := []uint32{0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750}
	for i, p := range all {
		ts := []unix.Timespec{
			{Sec: 1500000000 + int64(i)*3607, Nsec: int64(rng.IntN(1e9))},
			{Sec: 1400000000 + int64(i)*86413, Nsec: int64(rng.IntN(1e9))},
		}
		fi, err := os.Lstat(p)
		must(err)
		if fi.IsDir() && p != dir && !strings.Contains(p, "/doc") {
			must(unix.Chmod(p, dirModes[i%len(dirModes)]))
		}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// genTextTree writes about limit bytes of text under dst, as a package's
// documentation tree looks: directories nested up to four deep, many small
// files, some empty, a few large ones (up to 256 KiB), lines of words
// that compress as prose does. The same rng state gives the same tree on
// every machine.
func genTextTree(t testing.TB, dst string, rng *rand.Rand, limit int64) {
	t.Helper()
	words := strings.Fields(`the of and a to in is that for it as with was on be by this are or
		file key block header volume mount encrypted data read write open close sync rename
		directory kernel fuse cipher plain page cache size offset error copyright license
		changelog version release fixed bug upstream debian package install configure`)
	text := func(size int) []byte {
		var b bytes.Buffer
		for b.Len() < size {
			n := 4 + rng.IntN(12)
			for i := range n {
				if i > 0 {
					b.WriteByte(' ')
				}
				b.WriteString(words[rng.IntN(len(words))])
			}
			b.WriteString(".\n")
			if rng.IntN(8) == 0 {
				b.WriteByte('\n')
			}
		}
		return b.Bytes()[:size]
	}
	dirs := []string{dst}
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	var total int64
	for i := 0; total < limit; i++ {
		if i%6 == 0 {
			parent := dirs[rng.IntN(len(dirs))]
			if strings.Count(strings.TrimPrefix(parent, dst), "/") < 4 {
				d := filepath.Join(parent, fmt.Sprintf("pkg%02d", i/6))
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
				dirs = append(dirs, d)
			}
		}
		var size int
		switch x := rng.IntN(100); {
		case i%10 == 5 || x < 5:
			size = 0
		case i == 2:
			size = 256 << 10
		case x < 70:
			size = rng.IntN(3000)
		case x < 95:
			size = 3000 + rng.IntN(40<<10)
		default:
			size = 64<<10 + rng.IntN(192<<10)
		}
		size = int(min(int64(size), limit-total))
		name := []string{"README", "copyright", "changelog", "NEWS", "TODO", "notes.txt", "index.html"}[rng.IntN(7)]
		p := filepath.Join(dirs[rng.IntN(len(dirs))], fmt.Sprintf("%s.%d", name, i))
		if err := os.WriteFile(p, text(size), 0o644); err != nil {
			t.Fatal(err)
		}
		total += int64(size)
	}
}

type treeOpts struct {
	mtimeSec bool // compare mtimes to the second only
	xattrs   bool // compare user.* xattrs
	skipRoot bool // do not compare the attributes of the roots themselves
}

// compareTrees checks that b has exactly a's objects: types, modes with
// set-id and sticky bits, owners, link counts, sizes, contents, symlink
// targets, mtimes, hard-link structure and optionally user xattrs.
func compareTrees(t testing.TB, a, b string, o treeOpts) {
	t.Helper()
	inoAB := map[uint64]uint64{}
	inoBA := map[uint64]uint64{}
	seen := map[string]bool{}
	nerr := 0
	errorf := func(format string, args ...any) {
		t.Helper()
		if nerr++; nerr <= 20 {
			t.Errorf(format, args...)
		}
	}
	err := filepath.Walk(a, func(pa string, fa os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, pa)
		seen[rel] = true
		pb := filepath.Join(b, rel)
		fb, err := os.Lstat(pb)
		if err != nil {
			errorf("%s: %v", pb, err)
			return nil
		}
		sa, sb := fa.Sys().(*syscall.Stat_t), fb.Sys().(*syscall.Stat_t)
		if sa.Mode&unix.S_IFMT != sb.Mode&unix.S_IFMT {
			errorf("%s: type %o, want %o", pb, sb.Mode&unix.S_IFMT, sa.Mode&unix.S_IFMT)
			return nil
		}
		if rel == "." && o.skipRoot {
			return nil
		}
		if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid || sa.Nlink != sb.Nlink {
			errorf("%s: mode %o owner %d:%d links %d, want %o %d:%d %d", pb, sb.Mode, sb.Uid, sb.Gid, sb.Nlink, sa.Mode, sa.Uid, sa.Gid, sa.Nlink)
		}
		ma, mb := fa.ModTime(), fb.ModTime()
		if o.mtimeSec {
			ma, mb = ma.Truncate(time.Second), mb.Truncate(time.Second)
		}
		if !ma.Equal(mb) {
			errorf("%s: mtime %v, want %v", pb, fb.ModTime(), fa.ModTime())
		}
		switch {
		case fa.Mode().IsRegular():
			if sa.Nlink > 1 {
				if x, ok := inoAB[sa.Ino]; ok && x != sb.Ino || !ok && inoBA[sb.Ino] != 0 {
					errorf("%s: hard links differ from the source's", pb)
				}
				inoAB[sa.Ino], inoBA[sb.Ino] = sb.Ino, sa.Ino
			}
			ca, err := os.ReadFile(pa)
			if err != nil {
				return err
			}
			cb, err := os.ReadFile(pb)
			if err != nil {
				errorf("%s: %v", pb, err)
			} else if !bytes.Equal(ca, cb) {
				errorf("%s: content differs (%d bytes, want %d)", pb, len(cb), len(ca))
			}
		case fa.Mode()&os.ModeSymlink != 0:
			ta, _ := os.Readlink(pa)
			tb, err := os.Readlink(pb)
			if err != nil || ta != tb {
				errorf("%s: link to %.60q (%v), want %.60q", pb, tb, err, ta)
			}
		}
		if !fa.IsDir() && sa.Size != sb.Size {
			errorf("%s: size %d, want %d", pb, sb.Size, sa.Size)
		}
		if o.xattrs && fa.Mode()&os.ModeSymlink == 0 {
			if xa, xb := userXattrs(pa), userXattrs(pb); xa != xb {
				errorf("%s: xattrs %q, want %q", pb, xb, xa)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	filepath.Walk(b, func(pb string, fb os.FileInfo, err error) error {
		rel, _ := filepath.Rel(b, pb)
		if err == nil && !seen[rel] {
			errorf("%s: not in %s", pb, a)
		}
		return nil
	})
	if nerr > 20 {
		t.Errorf("... %d differences in all", nerr)
	}
}

func userXattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Listxattr(p, buf)
	if err != nil {
		return "error: " + err.Error()
	}
	var out []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Getxattr(p, name, v)
		if err != nil {
			out = append(out, name+"=error: "+err.Error())
			continue
		}
		out = append(out, name+"="+string(v[:m]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// diffR runs diff -r (FIFOs excluded: diff cannot compare them).
func diffR(t testing.TB, a, b string) {
	t.Helper()
	tool(t, "", nil, "diff", "-r", "--no-dereference", "-x", "*.pipe", a, b)
}

// toolsEnv is what the cases of TestTools share: the mount, a source tree
// on the local disk, a local scratch directory, and checks to run through
// a fresh mount at the end.
type toolsEnv struct {
	v     *volume
	m     *mount
	src   string                       // the shared source tree: read it, do not change it
	gen   func(t *testing.T, d string) // writes the same tree into d
	local string
	after []func(fresh *mount)
}

// TestTools runs real tools through one mount, all at once (each in its
// own directory), then repeats each case's checks through a fresh mount
// of the same CIPHERDIR.
func TestTools(t *testing.T) {
	t.Parallel()
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	requireRoot(t) // the tree has files of other owners
	local := t.TempDir()
	// The default run's tree is a quarter of the long run's: the same
	// kinds of objects, a third of the CPU time under -race.
	nfiles, textBytes := 160, int64(3<<20)
	if raceEnabled {
		nfiles, textBytes = 80, 1<<20
	}
	if !longRun(t) {
		nfiles, textBytes = nfiles/4, textBytes/4
		t.Logf("a tree of %d files and %d bytes of text; the long run (KMSFS_LONG=1) makes %d and %d", nfiles, textBytes, nfiles*4, textBytes*4)
	}
	gen := func(t *testing.T, d string) { genTree(t, d, 1, nfiles, textBytes) }
	src := filepath.Join(local, "src")
	gen(t, src)
	cases := []struct {
		name string
		f    func(*testing.T, *toolsEnv)
	}{
		{"cp", toolsCp},
		{"tar", toolsTar},
		{"rsync", toolsRsync},
		{"git", toolsGit},
		{"sqlite", toolsSqlite},
		{"RenameHeavy", toolsRenameHeavy},
	}
	var mu sync.Mutex
	var after []func(*mount)
	for _, c := range cases {
		e := &toolsEnv{v: v, m: m, src: src, gen: gen, local: filepath.Join(local, c.name)}
		must(t, os.Mkdir(e.local, 0o755))
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.f(t, e)
			if !t.Failed() {
				mu.Lock()
				after = append(after, e.after...)
				mu.Unlock()
			}
		})
	}
	// Cleanup runs once every case above has finished, before m's own
	// Cleanup unmounts it.
	t.Cleanup(func() { recheckOnFreshMount(t, v, after) })
}

// toolsCp: cp -a into the mount and back out, diff -r, and every
// attribute compared.
func toolsCp(t *testing.T, e *toolsEnv) {
	requireTools(t, "cp", "diff")
	src, m := e.src, e.m
	tool(t, "", nil, "cp", "-a", src, m.path("cp"))
	diffR(t, src, m.path("cp"))
	compareTrees(t, src, m.path("cp"), treeOpts{xattrs: true})
	out := filepath.Join(e.local, "cp-out")
	tool(t, "", nil, "cp", "-a", m.path("cp"), out)
	diffR(t, src, out)
	compareTrees(t, src, out, treeOpts{xattrs: true})
	// A copy inside the mount (cp tries copy_file_range and FICLONE,
	// which kmsfs must refuse or do right).
	tool(t, "", nil, "cp", "-a", "--reflink=auto", m.path("cp"), m.path("cp2"))
	diffR(t, src, m.path("cp2"))
	compareTrees(t, src, m.path("cp2"), treeOpts{xattrs: true})
	e.after = append(e.after, func(fresh *mount) { diffR(t, src, fresh.path("cp")) })
}

// toolsTar: an archive written into the mount, extracted out of it;
// extracted into the mount, archived from it: byte-identical archives
// (--sort=name) and identical trees.
func toolsTar(t *testing.T, e *toolsEnv) {
	requireTools(t, "tar", "cmp", "diff")
	src, m, local := e.src, e.m, e.local
	// The archive written through the mount is the one written to
	// disk, byte for byte.
	ref := filepath.Join(local, "src.tar")
	tool(t, "", nil, "tar", "--sort=name", "-C", src, "-cf", ref, ".")
	tool(t, "", nil, "tar", "--sort=name", "-C", src, "-cf", m.path("src.tar"), ".")
	tool(t, "", nil, "cmp", ref, m.path("src.tar"))
	// Extract it out of the mount.
	out1 := filepath.Join(local, "tar-out1")
	must(t, os.Mkdir(out1, 0o755))
	tool(t, "", nil, "tar", "-C", out1, "-xpf", m.path("src.tar"))
	diffR(t, src, out1)
	// Extract into the mount: the same as extracting onto the disk.
	must(t, os.Mkdir(m.path("tarx"), 0o755))
	tool(t, "", nil, "tar", "-C", m.path("tarx"), "-xpf", ref)
	diffR(t, src, m.path("tarx"))
	compareTrees(t, out1, m.path("tarx"), treeOpts{})
	compareTrees(t, src, m.path("tarx"), treeOpts{mtimeSec: true})
	// Archive the mount's tree: the same archive as the source's.
	back := filepath.Join(local, "back.tar")
	tool(t, "", nil, "tar", "--sort=name", "-C", m.path("tarx"), "-cf", back, ".")
	tool(t, "", nil, "cmp", ref, back)
	out2 := filepath.Join(local, "tar-out2")
	must(t, os.Mkdir(out2, 0o755))
	tool(t, "", nil, "tar", "-C", out2, "-xpf", back)
	diffR(t, src, out2)
	e.after = append(e.after, func(fresh *mount) { tool(t, "", nil, "cmp", ref, fresh.path("src.tar")) })
}

// toolsRsync: rsync -aHX into the mount and out of it; a --checksum
// re-run copies nothing; a changed byte in a big file is found.
func toolsRsync(t *testing.T, e *toolsEnv) {
	requireTools(t, "rsync", "diff")
	m, local := e.m, e.local
	// Its own source tree: it changes a file in it below, while other
	// cases read the shared one.
	src := filepath.Join(local, "src")
	e.gen(t, src)
	dst := m.path("rsync") + "/"
	tool(t, "", nil, "rsync", "-aHX", src+"/", dst)
	diffR(t, src, dst)
	compareTrees(t, src, dst, treeOpts{xattrs: true})
	if out := tool(t, "", nil, "rsync", "-aHX", "--checksum", "-i", src+"/", dst); out != "" {
		t.Errorf("rsync --checksum into the mount again copied:\n%s", out)
	}
	back := filepath.Join(local, "rsync-out") + "/"
	tool(t, "", nil, "rsync", "-aHX", dst, back)
	diffR(t, src, back)
	compareTrees(t, src, back, treeOpts{xattrs: true})
	if out := tool(t, "", nil, "rsync", "-aHX", "--checksum", "-i", dst, back); out != "" {
		t.Errorf("rsync --checksum out of the mount again copied:\n%s", out)
	}
	// A change in the middle of a big file (same size and mtime) is found
	// by --checksum and copied.
	var big string
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(src, p)
		if err == nil && fi.Mode().IsRegular() && fi.Size() > 100<<10 && fi.Mode().Perm()&0o200 != 0 && big == "" && !strings.HasPrefix(rel, "doc/") {
			big = p
		}
		return nil
	})
	if big == "" {
		t.Fatal("no big file in the tree")
	}
	orig, err := os.ReadFile(big)
	must(t, err)
	fi, err := os.Stat(big)
	must(t, err)
	changed := append([]byte(nil), orig...)
	copy(changed[len(changed)/2:], "CHANGED")
	must(t, os.WriteFile(big, changed, 0))
	must(t, os.Chtimes(big, fi.ModTime(), fi.ModTime()))
	out := tool(t, "", nil, "rsync", "-aHX", "--checksum", "-i", src+"/", dst)
	// Generated names start "fNNN-"; rsync escapes the rest.
	if prefix := filepath.Base(big)[:5]; !strings.Contains(out, ">f") || !strings.Contains(out, prefix) {
		t.Errorf("rsync --checksum did not copy the changed %s:\n%s", big, out)
	}
	diffR(t, src, dst)
	// Put the source back as it was, and the copy with it.
	must(t, os.WriteFile(big, orig, 0))
	must(t, os.Chtimes(big, fi.ModTime(), fi.ModTime()))
	tool(t, "", nil, "rsync", "-aHX", "--checksum", src+"/", dst)
	compareTrees(t, src, dst, treeOpts{xattrs: true})
	e.after = append(e.after, func(fresh *mount) { diffR(t, src, fresh.path("rsync")) })
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// toolsGit makes a repository in the mount with several commits, then
// git gc, git fsck --full --strict, and a clone out of the mount.
func toolsGit(t *testing.T, e *toolsEnv) {
	requireTools(t, "git", "diff")
	m := e.m
	home := e.local
	env := []string{
		"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=kmsfs", "GIT_AUTHOR_EMAIL=kmsfs@example.com",
		"GIT_COMMITTER_NAME=kmsfs", "GIT_COMMITTER_EMAIL=kmsfs@example.com",
	}
	repo := m.path("repo")
	git := func(args ...string) string {
		t.Helper()
		return tool(t, repo, env, "git", args...)
	}
	must(t, os.Mkdir(repo, 0o755))
	git("init", "-q", "-b", "main")
	git("config", "gc.auto", "0")
	git("config", "maintenance.auto", "false")
	rng := rand.New(rand.NewPCG(9, 9))
	data := rand.NewChaCha8([32]byte{'g', 'i', 't'})
	for i := 0; i < 60; i++ {
		d := filepath.Join(repo, fmt.Sprintf("pkg%d", i%6))
		must(t, os.MkdirAll(d, 0o755))
		writeFile(t, filepath.Join(d, fmt.Sprintf("file%02d.txt", i)), bytes.Repeat([]byte(fmt.Sprintf("content of file %d\n", i)), 1+rng.IntN(500)))
	}
	git("add", "-A")
	git("commit", "-q", "-m", "one")
	for i := 0; i < 60; i += 6 {
		p := filepath.Join(repo, fmt.Sprintf("pkg%d", i%6), fmt.Sprintf("file%02d.txt", i))
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		fmt.Fprintf(f, "appended line %d\n", i)
		f.Close()
	}
	must(t, os.Remove(filepath.Join(repo, "pkg1", "file01.txt")))
	git("add", "-A")
	git("commit", "-q", "-m", "two")
	git("mv", "pkg2", "moved")
	git("commit", "-q", "-m", "three")
	big := make([]byte, 3<<20)
	data.Read(big)
	writeFile(t, filepath.Join(repo, "blob.bin"), big)
	must(t, os.Symlink("moved/file02.txt", filepath.Join(repo, "link")))
	must(t, os.Chmod(filepath.Join(repo, "pkg0", "file00.txt"), 0o755))
	git("add", "-A")
	git("commit", "-q", "-m", "four")
	git("checkout", "-q", "-b", "side", "HEAD~2")
	writeFile(t, filepath.Join(repo, "side.txt"), []byte("side branch\n"))
	git("add", "side.txt")
	git("commit", "-q", "-m", "side")
	git("checkout", "-q", "main")
	git("merge", "-q", "--no-edit", "side")

	git("gc", "--quiet", "--prune=now")
	git("fsck", "--full", "--strict", "--no-progress")
	if n := strings.Count(git("log", "--oneline"), "\n"); n != 6 {
		t.Errorf("git log has %d commits, want 6", n)
	}
	if st := git("status", "--porcelain"); st != "" {
		t.Errorf("git status after gc:\n%s", st)
	}
	if loose := git("count-objects", "-v"); !strings.Contains(loose, "count: 0\n") {
		t.Errorf("loose objects left after gc:\n%s", loose)
	}
	tree := git("rev-parse", "HEAD^{tree}")
	clone := filepath.Join(e.local, "clone")
	tool(t, "", env, "git", "clone", "-q", repo, clone)
	tool(t, clone, env, "git", "fsck", "--full", "--strict", "--no-progress")
	if got := tool(t, clone, env, "git", "rev-parse", "HEAD^{tree}"); got != tree {
		t.Errorf("clone's tree %s, repository's %s", got, tree)
	}
	if got, err := os.ReadFile(filepath.Join(clone, "blob.bin")); err != nil || !bytes.Equal(got, big) {
		t.Errorf("blob.bin in the clone differs (%v)", err)
	}
	// The working tree checked out again from the packed repository.
	must(t, os.RemoveAll(filepath.Join(repo, "moved")))
	git("checkout", "-q", "--", ".")
	if st := git("status", "--porcelain"); st != "" {
		t.Errorf("git status after checkout:\n%s", st)
	}
	diffR(t, filepath.Join(clone, "moved"), filepath.Join(repo, "moved"))
	e.after = append(e.after, func(fresh *mount) {
		tool(t, fresh.path("repo"), env, "git", "fsck", "--full", "--strict", "--no-progress")
	})
}

// toolsSqlite writes 10k rows in one transaction through the mount,
// with the rollback journal and with WAL (a shared mmap of the -shm
// file), then checks integrity and counts from a new process, also after
// VACUUM and through a fresh mount.
func toolsSqlite(t *testing.T, e *toolsEnv) {
	requireTools(t, "sqlite3")
	must(t, os.Mkdir(e.m.path("sqlite"), 0o755))
	dbPath := func(m *mount, mode string) string { return m.path("sqlite", mode+".db") }
	sql := func(db, script string) string {
		t.Helper()
		out, err := toolErr("", nil, script, "sqlite3", "-batch", "-bail", db)
		if err != nil {
			t.Fatalf("sqlite3 %s: %v\n%s", db, err, out)
		}
		return out
	}
	const check = `PRAGMA integrity_check;
SELECT count(*) FROM t;
SELECT count(*) FROM t WHERE v LIKE '% updated';
SELECT sum(length(b)) FROM t;
`
	// 10000 rows and a VACUUM in the long run; the default run makes
	// 2000 rows (the same statements), and VACUUM, which rewrites the
	// database, only without -race.
	rows, vacuum := 2000, !raceEnabled
	if longRun(t) {
		rows, vacuum = 10000, true
	}
	blobBytes := 0
	for x := 1; x <= rows; x++ {
		blobBytes += 100 + x%300
	}
	want := fmt.Sprintf("ok\n%d\n%d\n%d\n", rows, rows/3, blobBytes)
	for _, mode := range []string{"delete", "wal"} {
		db := dbPath(e.m, mode)
		out := sql(db, fmt.Sprintf(`PRAGMA journal_mode=%s;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, b BLOB);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < %d)
INSERT INTO t SELECT x, 'row ' || x, zeroblob(100 + x %% 300) FROM c;
COMMIT;
CREATE INDEX t_v ON t(v);
UPDATE t SET v = v || ' updated' WHERE id %% 3 = 0;
`, mode, rows))
		if strings.TrimSpace(out) != mode {
			t.Errorf("journal_mode=%s: %q", mode, out)
		}
		if got := sql(db, check); got != want {
			t.Errorf("%s: check gives %q, want %q", mode, got, want)
		}
		if mode == "wal" {
			sql(db, "PRAGMA wal_checkpoint(TRUNCATE);")
		}
		if !vacuum {
			continue
		}
		sql(db, "VACUUM;")
		if got := sql(db, check); got != want {
			t.Errorf("%s after VACUUM: check gives %q, want %q", mode, got, want)
		}
	}
	e.after = append(e.after, func(fresh *mount) {
		for _, mode := range []string{"delete", "wal"} {
			if got := sql(dbPath(fresh, mode), check); got != want {
				t.Errorf("%s through a fresh mount: check gives %q, want %q", mode, got, want)
			}
		}
	})
}

// toolsRenameHeavy moves directories (with mv and rename(2)) and files
// around a tree hundreds of times, renames over existing files and empty
// directories, and keeps one file open throughout; the tree must match a
// model at the end, through this mount and a fresh one.
func toolsRenameHeavy(t *testing.T, e *toolsEnv) {
	requireTools(t, "mv")
	v, m := e.v, e.m
	root := m.path("r")
	files := map[string]string{} // relative path -> content
	dirs := map[string]bool{}
	must(t, os.Mkdir(root, 0o755))
	n := 0
	for i := 0; i < 8; i++ {
		for j := 0; j < 3; j++ {
			d := fmt.Sprintf("top%d/sub%d", i, j)
			must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
			dirs[fmt.Sprintf("top%d", i)], dirs[d] = true, true
			for k := 0; k < 3; k++ {
				p := fmt.Sprintf("%s/file%d", d, n)
				c := strings.Repeat(fmt.Sprintf("file %d ", n), 1+n*37%2000)
				writeFile(t, filepath.Join(root, p), []byte(c))
				files[p] = c
				n++
			}
		}
	}
	pinned := "top0/sub0/file0"
	pf, err := os.OpenFile(filepath.Join(root, pinned), os.O_RDWR, 0)
	must(t, err)
	defer pf.Close()

	sorted := func(m map[string]bool) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	fileList := func() []string {
		var out []string
		for k := range files {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	under := func(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	move := func(from, to string) {
		for k, c := range files {
			if under(k, from) {
				delete(files, k)
				files[to+strings.TrimPrefix(k, from)] = c
			}
		}
		for k := range dirs {
			if under(k, from) {
				delete(dirs, k)
				dirs[to+strings.TrimPrefix(k, from)] = true
			}
		}
		if under(pinned, from) {
			pinned = to + strings.TrimPrefix(pinned, from)
		}
	}
	rng := rand.New(rand.NewPCG(12, 34))
	mvTool := 0
	for i := 0; i < 400; i++ {
		ds := sorted(dirs)
		switch op := rng.IntN(10); {
		case op < 4: // a directory somewhere else, under a new name
			from := ds[rng.IntN(len(ds))]
			var parents []string
			for _, d := range append(ds, "") {
				if !under(d, from) {
					parents = append(parents, d)
				}
			}
			parent := parents[rng.IntN(len(parents))]
			to := strings.TrimPrefix(parent+"/"+fmt.Sprintf("dir%d", i), "/")
			if i%4 == 0 {
				tool(t, root, nil, "mv", from, to)
				mvTool++
			} else if err := os.Rename(filepath.Join(root, from), filepath.Join(root, to)); err != nil {
				t.Fatalf("op %d: rename dir %s to %s: %v", i, from, to, err)
			}
			move(from, to)
		case op < 7: // a file into another directory
			fl := fileList()
			from := fl[rng.IntN(len(fl))]
			to := ds[rng.IntN(len(ds))] + fmt.Sprintf("/moved%d", i)
			must(t, os.Rename(filepath.Join(root, from), filepath.Join(root, to)))
			move(from, to)
		case op < 8: // a file over another one
			fl := fileList()
			from, to := fl[rng.IntN(len(fl))], fl[rng.IntN(len(fl))]
			if from == to || to == pinned || len(files) < 20 {
				continue
			}
			must(t, os.Rename(filepath.Join(root, from), filepath.Join(root, to)))
			delete(files, to)
			move(from, to)
		default: // a directory over an empty one
			from := ds[rng.IntN(len(ds))]
			parent := filepath.Dir(from)
			if parent == "." {
				parent = ""
			}
			to := strings.TrimPrefix(parent+"/"+fmt.Sprintf("empty%d", i), "/")
			must(t, os.Mkdir(filepath.Join(root, to), 0o755))
			// rename(2) itself: os.Rename refuses an existing directory.
			if err := unix.Rename(filepath.Join(root, from), filepath.Join(root, to)); err != nil {
				t.Fatalf("op %d: rename %s over the empty directory %s: %v", i, from, to, err)
			}
			move(from, to)
		}
	}
	t.Logf("%d files, %d directories, %d moves with mv", len(files), len(dirs), mvTool)

	// The open file still works, under its new path.
	if _, err := pf.WriteAt([]byte("PINNED"), 0); err != nil {
		t.Fatal(err)
	}
	files[pinned] = "PINNED" + files[pinned][6:]
	if got := readFile(t, filepath.Join(root, pinned)); string(got) != files[pinned] {
		t.Errorf("pinned file at %s: %.30q", pinned, got)
	}
	must(t, pf.Close())
	// Operations by path at the new location reach the same file.
	pp := filepath.Join(root, pinned)
	must(t, os.Chmod(pp, 0o600))
	must(t, unix.Setxattr(pp, "user.where", []byte("moved"), 0))
	must(t, os.Truncate(pp, 6))
	files[pinned] = "PINNED"
	if st := lstat(t, filepath.Join(v.Dir, "r", pinned)); st.Mode&0o777 != 0o600 || st.Size == 0 {
		t.Errorf("stored %s: mode %o size %d after chmod and truncate by its new path", pinned, st.Mode&0o777, st.Size)
	}

	check := func(root string) {
		t.Helper()
		gotFiles, gotDirs := map[string]bool{}, map[string]bool{}
		must(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || p == root {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if fi.IsDir() {
				gotDirs[rel] = true
				if !dirs[rel] {
					t.Errorf("unexpected directory %s", rel)
				}
				return nil
			}
			gotFiles[rel] = true
			want, ok := files[rel]
			if !ok {
				t.Errorf("unexpected file %s", rel)
				return nil
			}
			if got, err := os.ReadFile(p); err != nil || string(got) != want {
				t.Errorf("%s: %d bytes (%v), want %d", rel, len(got), err, len(want))
			}
			return nil
		}))
		for f := range files {
			if !gotFiles[f] {
				t.Errorf("missing file %s", f)
			}
		}
		for d := range dirs {
			if !gotDirs[d] {
				t.Errorf("missing directory %s", d)
			}
		}
	}
	check(root)
	e.after = append(e.after, func(fresh *mount) { check(fresh.path("r")) })
	// The stored tree has the same shape: names are not encrypted.
	if _, err := os.Stat(filepath.Join(v.Dir, "r", pinned)); err != nil {
		t.Errorf("stored tree: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "nonexistent")); !errors.Is(err, os.ErrNotExist) {
		t.Error(err)
	}
}
