// Package tests mounts kmsfs for real: it builds cmd/kmsfs once, runs it as
// a child process (an in-process mount can deadlock when the test itself
// touches the mount), waits for its ready line, and unmounts in Cleanup.
//
// Without /dev/fuse these tests skip, unless KMSFS_REQUIRE_FUSE=1 (set by
// .ci/run), which turns the skip into a failure.
package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var kmsfsBin string // built once by TestMain

func TestMain(m *testing.M) {
	// A binary built with -race sleeps a second before it exits (the race
	// runtime's atexit_sleep_ms, 1000 by default, gives other goroutines
	// time to race with the exit). Every kmsfs init, inspect and unmount
	// these tests run, and every mount's exit, would wait it out: about
	// a second per child, minutes of the package's wall time. A race
	// report before the exit still fails the child (exit 66).
	if raceEnabled && !strings.Contains(os.Getenv("GORACE"), "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	}
	if os.Getenv(posixChildEnv) != "" {
		os.Exit(m.Run()) // TestPosix's child: it runs the suite on a mount it is given
	}
	dir, err := os.MkdirTemp("", "kmsfs-tests-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kmsfsBin = filepath.Join(dir, "kmsfs")
	args := []string{"build", "-o", kmsfsBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/kmsfs")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build kmsfs:", err)
		os.Exit(1)
	}
	// Every child gets config and state directories of the run's own
	// (a test may still name others): trusted copies, default key files
	// and daemon logs do not pile up in the user's home.
	for _, v := range []string{"XDG_CONFIG_HOME", "XDG_STATE_HOME"} {
		os.Setenv(v, filepath.Join(dir, strings.ToLower(v)))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var plainBin struct {
	once sync.Once
	path string
	err  error
}

// plainBinary returns a kmsfs binary built without the race detector,
// whose memory use is the one users see: kmsfsBin, or under -race a
// second build (the race runtime's shadow memory alone is about 100 MB).
func plainBinary(t testing.TB) string {
	t.Helper()
	if !raceEnabled {
		return kmsfsBin
	}
	plainBin.once.Do(func() {
		plainBin.path = kmsfsBin + "-norace"
		out, err := exec.Command("go", "build", "-o", plainBin.path, "../cmd/kmsfs").CombinedOutput()
		if err != nil {
			plainBin.err = fmt.Errorf("build kmsfs without -race: %v\n%s", err, out)
		}
	})
	if plainBin.err != nil {
		t.Fatal(plainBin.err)
	}
	return plainBin.path
}

// requireFUSE skips without /dev/fuse, or fails when CI demands FUSE.
func requireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return
	}
	if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
		t.Fatalf("/dev/fuse is not usable (%v) and KMSFS_REQUIRE_FUSE=1: the FUSE tests must run here", err)
	}
	t.Skipf("/dev/fuse is not usable (%v); set KMSFS_REQUIRE_FUSE=1 to make this a failure", err)
}

// skipOrFail skips a test whose precondition this machine lacks, or
// fails it under KMSFS_REQUIRE_FUSE=1: CI's machine has it and must not
// skip.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
		t.Fatalf(format+" (KMSFS_REQUIRE_FUSE=1: CI must run this test)", args...)
	}
	t.Skipf(format, args...)
}

// skipUnlessRoot skips a test that needs root for why, or fails it under
// KMSFS_REQUIRE_FUSE=1: CI runs as root and must not skip it.
func skipUnlessRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("KMSFS_REQUIRE_FUSE") == "1" {
		t.Fatalf("%s, and KMSFS_REQUIRE_FUSE=1: run CI as root", why)
	}
	t.Skip(why)
}

// longRun reports whether this is the long run (KMSFS_LONG=1; .ci/run makes
// it after the default run): the tests that take minutes run, and the
// scaled ones at full size. Any other value than 1, 0 or none fails the
// test rather than skip: a typo must not quietly make CI's long run short.
func longRun(t testing.TB) bool {
	t.Helper()
	switch v := os.Getenv("KMSFS_LONG"); v {
	case "", "0":
		return false
	case "1":
		return true
	default:
		t.Fatalf("KMSFS_LONG=%q: want 1 for the long run, or unset", v)
		return false
	}
}

// skipUnlessLong skips a test that only the long run makes, saying how to
// run it.
func skipUnlessLong(t testing.TB) {
	t.Helper()
	if !longRun(t) {
		t.Skip("a long test: set KMSFS_LONG=1 to run it (.ci/run does)")
	}
}

// run runs the kmsfs binary and returns stdout, stderr and the exit code.
func run(t testing.TB, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(kmsfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run kmsfs %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// volume is a CIPHERDIR made by `kmsfs init`, with the environment its
// commands need (a private XDG_CONFIG_HOME for the local key file, KMS
// settings when used).
type volume struct {
	Dir string
	Env []string
}

// newVolume runs kmsfs init with extra flags in a fresh directory.
func newVolume(t testing.TB, env []string, flags ...string) *volume {
	t.Helper()
	return newVolumeIn(t, t.TempDir(), env, flags...)
}

// tmpfsDir returns a fresh directory on tmpfs (/dev/shm), removed in
// Cleanup.
func tmpfsDir(t testing.TB) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err != nil || st.Type != 0x01021994 {
		t.Fatalf("/dev/shm is not a tmpfs here (%v)", err)
	}
	d, err := os.MkdirTemp("/dev/shm", "kmsfs-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// newVolumeIn runs kmsfs init in a fresh directory under base.
func newVolumeIn(t testing.TB, base string, env []string, flags ...string) *volume {
	t.Helper()
	v := &volume{Dir: filepath.Join(base, "cipher"), Env: append([]string{"XDG_CONFIG_HOME=" + filepath.Join(base, "config")}, env...)}
	out, errOut, code := run(t, v.Env, append(append([]string{"init"}, flags...), v.Dir)...)
	if code != 0 {
		t.Fatalf("kmsfs init: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	return v
}

// mount is a running `kmsfs mount` child.
type mount struct {
	t    testing.TB
	vol  *volume
	Dir  string // the mountpoint
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error // the child's exit, after done

	// AllowWarnings lets a test that provokes failures pass with the
	// warnings they log; otherwise any WARN/ERROR line fails the test
	// (gocryptfs does the same with its test mounts).
	AllowWarnings bool
	baseFDs       int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const readyTimeout = 60 * time.Second

// mountVolume starts `kmsfs mount` in the foreground as a child and returns
// once it printed its ready line. Cleanup unmounts, waits for the child
// and checks its log and descriptors.
func mountVolume(t testing.TB, v *volume, flags ...string) *mount {
	t.Helper()
	return mountVolumeWith(t, kmsfsBin, v, flags...)
}

// mountVolumeWith is mountVolume with the kmsfs binary bin.
func mountVolumeWith(t testing.TB, bin string, v *volume, flags ...string) *mount {
	t.Helper()
	requireFUSE(t)
	m := &mount{t: t, vol: v, Dir: filepath.Join(t.TempDir(), "mnt"), log: &syncBuffer{}, done: make(chan struct{})}
	if err := os.Mkdir(m.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"mount", "--log-level", "debug"}, flags...), v.Dir, m.Dir)
	m.cmd = exec.Command(bin, args...)
	m.cmd.Env = append(os.Environ(), v.Env...)
	m.cmd.Stderr = m.log
	stdout, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "kmsfs: mounted ") && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	go func() {
		m.err = m.cmd.Wait()
		close(m.done)
	}()
	select {
	case ok := <-ready:
		if !ok {
			<-m.done
			t.Fatalf("kmsfs mount exited without mounting (%v):\n%s", m.err, m.log.String())
		}
	case <-time.After(readyTimeout):
		m.cmd.Process.Kill()
		t.Fatalf("kmsfs mount not ready after %v:\n%s", readyTimeout, m.log.String())
	}
	// Every line logged before the ready line on stdout (the INFO
	// "mounted" line is the last of them) is in m.log before a test looks.
	if !slices.Contains(flags, "--log-file") && !slices.Contains(flags, "--log-level") {
		m.waitLog("msg=mounted")
	}
	m.baseFDs = m.openFDs()
	t.Cleanup(m.cleanup)
	return m
}

func (m *mount) path(p ...string) string { return filepath.Join(append([]string{m.Dir}, p...)...) }

// openFDs counts the child's descriptors of files in CIPHERDIR (go-fuse's
// own descriptors, e.g. its splice pipes, come and go, and directories
// are kept open on purpose).
func (m *mount) openFDs() int {
	dir := fmt.Sprintf("/proc/%d/fd", m.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		t, _ := os.Readlink(p)
		if t != m.vol.Dir && !strings.HasPrefix(t, m.vol.Dir+"/") {
			continue
		}
		// kmsfs keeps a descriptor of each directory it has used
		// until the kernel forgets it; those are not leaks.
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			continue
		}
		n++
	}
	return n
}

// fdTargets lists what the child's descriptors point at.
func (m *mount) fdTargets() string {
	dir := fmt.Sprintf("/proc/%d/fd", m.cmd.Process.Pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		t, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+"->"+t)
	}
	return strings.Join(out, " ")
}

// checkFDs fails if the child holds more descriptors than when it became
// ready: every stored file it opened must be closed again. The kernel
// sends RELEASE after close(2) returns, so it waits (bounded) for the count
// to settle.
func (m *mount) checkFDs() {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := m.openFDs()
		if n <= m.baseFDs || n < 0 {
			return
		}
		if time.Now().After(deadline) {
			m.t.Errorf("descriptor leak: kmsfs holds %d descriptors, %d when it became ready: %s", n, m.baseFDs, m.fdTargets())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unmount stops the mount and waits for the child to exit.
func (m *mount) unmount() error {
	select {
	case <-m.done:
		return m.err
	default:
	}
	_, errOut, code := run(m.t, nil, "unmount", m.Dir)
	if code != 0 {
		// Busy or already gone: ask the process itself.
		m.t.Logf("kmsfs unmount: exit %d: %s", code, errOut)
		m.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-m.done:
		return m.err
	case <-time.After(30 * time.Second):
		m.cmd.Process.Kill()
		syscall.Unmount(m.Dir, syscall.MNT_DETACH)
		<-m.done
		return fmt.Errorf("kmsfs did not exit within 30s of unmount")
	}
}

// logEventually reports whether the mount's log satisfies ok within 10 s:
// the child's stderr is copied into m.log by a goroutine of its own, so a
// line the child wrote before an operation returned may land a moment
// after it.
func logEventually(m *mount, ok func(log string) bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !ok(m.log.String()) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

var warnLine = regexp.MustCompile(`(?m)^.*level=(WARN|ERROR).*$`)

func (m *mount) cleanup() {
	select {
	case <-m.done:
	default:
		m.checkFDs()
	}
	err := m.unmount()
	if err != nil && !m.killed() {
		m.t.Errorf("kmsfs mount exited with %v\n%s", err, m.log.String())
	}
	if !m.AllowWarnings {
		if w := warnLine.FindAllString(m.log.String(), 5); len(w) > 0 {
			m.t.Errorf("kmsfs logged warnings:\n%s", strings.Join(w, "\n"))
		}
	}
	if m.t.Failed() {
		m.t.Logf("kmsfs log:\n%s", tail(m.log.String(), 8000))
	}
}

// waitLog waits (at most 30 s) until the mount's log contains s, and
// reports whether it does. The log is the child's stderr, copied by its
// own goroutine, so a line logged before the ready line on stdout may
// still be on its way when mountVolume returns.
func (m *mount) waitLog(s string) bool {
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(m.log.String(), s) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func (m *mount) killed() bool {
	if m.cmd.ProcessState == nil {
		return false
	}
	ws, ok := m.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// writeFile and readFile are short helpers that fail the test.
func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var _ = io.EOF

// recheckOnFreshMount runs the checks cases left for after their mount, on
// a new mount of the same volume: what reaches the disk, not the caches.
func recheckOnFreshMount(t testing.TB, v *volume, after []func(*mount)) {
	t.Helper()
	if len(after) == 0 {
		return
	}
	fresh := mountVolume(t, v)
	for _, f := range after {
		f(fresh)
	}
}
