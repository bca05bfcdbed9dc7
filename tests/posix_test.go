package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// notApplicable lists posixtest cases that cannot pass on kmsfs, with why.
var notApplicable = map[string]string{
	// The test takes a POSIX write lock and then expects a read lock on a
	// second descriptor of the same process to fail; POSIX record locks
	// belong to the process, so it succeeds on every Linux filesystem
	// (checked on ext4 and tmpfs). go-fuse's own TestAll skips it too.
	"FcntlFlockLocksFile": "expects POSIX locks to conflict within one process, which they never do (fails on ext4 and tmpfs too)",
}

// posixMatrix is the option sets TestPosix repeats the suite for: CIPHERDIR
// on the disk, the smallest block size without a key pool (these two in
// every run), and in the long run also CIPHERDIR on tmpfs and the key
// cache. Each takes about 7 s of CPU under -race.
var posixMatrix = []struct {
	name  string
	long  bool
	tmpfs bool
	init  []string
	mount []string
}{
	{name: "disk"},
	{name: "bs512", init: []string{"--block-size", "512"}, mount: []string{"--key-pool", "0"}},
	{name: "tmpfs", long: true, tmpfs: true},
	{name: "keycache", long: true, tmpfs: true, mount: []string{"--key-cache-ttl", "1m"}},
}

// alone lists posixtest cases that look at the whole test process, so
// they cannot share it with parallel tests: FdLeak counts the process's
// descriptors. TestPosixAlone runs them, in the sequential phase.
var alone = map[string]bool{"FdLeak": true}

// TestPosix runs go-fuse's conformance suite against kmsfs mounts, once
// per option set (posixMatrix), the option sets at once.
func TestPosix(t *testing.T) {
	t.Parallel()
	for _, mx := range posixMatrix {
		t.Run(mx.name, func(t *testing.T) {
			t.Parallel() // a mount each
			if mx.long {
				skipUnlessLong(t)
			}
			base := t.TempDir()
			if mx.tmpfs {
				base = tmpfsDir(t)
			}
			v := newVolumeIn(t, base, nil, mx.init...)
			m := mountVolume(t, v, mx.mount...)
			runPosixChild(t, m.Dir, mx.tmpfs)
		})
	}
}

// posixChildEnv names the mount TestPosixChild runs the suite on; set
// only in the child process runPosixChild starts.
const posixChildEnv = "KMSFS_POSIX_CHILD"

// runPosixChild runs the suite (but alone's cases) on the mount at mnt in
// a child process, a test binary of its own that forks nothing.
//
// The suite opens files with syscall.Open, without O_CLOEXEC. Run in this
// process beside parallel tests, every child another test started
// meanwhile (a kmsfs mount, local-kms) inherited such descriptors and
// held files of the mount open for its whole life: the mount stayed busy
// and its unmount failed.
func runPosixChild(t *testing.T, mnt string, tmpfs bool) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestPosixChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), posixChildEnv+"="+mnt, fmt.Sprintf("KMSFS_POSIX_TMPFS=%t", tmpfs))
	out, err := cmd.CombinedOutput()
	passed := strings.Count(string(out), "--- PASS: TestPosixChild/")
	if err != nil || passed == 0 {
		t.Fatalf("the posix suite on %s failed (%v):\n%s", mnt, err, out)
	}
	t.Logf("%d posix cases passed, %d skipped", passed, strings.Count(string(out), "--- SKIP: TestPosixChild/"))
}

// TestPosixChild is TestPosix's suite, in the child process runPosixChild
// starts. Run by go test itself, it has nothing to do.
func TestPosixChild(t *testing.T) {
	mnt := os.Getenv(posixChildEnv)
	if mnt == "" {
		return
	}
	runPosix(t, mnt, os.Getenv("KMSFS_POSIX_TMPFS") == "true", func(name string) bool { return !alone[name] })
}

// TestPosixAlone runs the cases of alone on the disk mount, with no other
// test of this process running: it is not parallel, so it runs before all
// that are. (What they check is the test process's own state, the same
// whatever the mount's options.)
func TestPosixAlone(t *testing.T) {
	v := newVolume(t, nil)
	m := mountVolume(t, v)
	runPosix(t, m.Dir, false, func(name string) bool { return alone[name] })
}

// runPosix runs the posixtest cases that pick selects.
func runPosix(t *testing.T, mnt string, tmpfs bool, pick func(name string) bool) {
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		if pick(name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if why, ok := notApplicable[name]; ok {
				t.Skip(why)
			}
			if name == "XAttrLarge" && !tmpfs {
				t.Skip("ext4 stores no xattr value larger than a block (8 KiB + 123 here): covered by the tmpfs runs of the long run (KMSFS_LONG=1)")
			}
			dir := filepath.Join(mnt, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			posixtest.All[name](t, dir)
		})
	}
}
